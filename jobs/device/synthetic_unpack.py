#!/usr/bin/env python3
"""Stand-in for CIFAR-10's unpack.py in a SYNTHETIC rehearsal source (jobs.device.rehearsal.make_synthetic_source):
same command line, tile i of a mosaic at row i // cols, column i % cols, standard protocol-2 pickles. No
canonical md5 here: the device job checks the md5 list that prepare carried. Exits 1 while a mosaic is missing.

:func:`write_batch` is also how the tests write their CIFAR-10 folders."""
import argparse
import gzip
import json
import os
import pickle
import sys
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def rows(path: str, n: int) -> np.ndarray:
    """The first ``n`` tiles of a mosaic as CIFAR-10 rows (n, 3072), channel-major."""
    m = np.asarray(Image.open(path).convert("RGB"))
    cols = m.shape[1] // 32
    tiles = [m[(i // cols) * 32:(i // cols + 1) * 32, (i % cols) * 32:(i % cols + 1) * 32] for i in range(n)]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2).reshape(n, 3072))


def write_batch(path: str, batch_label: str, labels: Sequence[int], data: np.ndarray,
                filenames: Sequence[str]) -> None:
    """One batch file in CIFAR-10's python format: a protocol-2 pickle of a dict with bytes keys, ``data`` the
    uint8 rows (n, 3072)."""
    entry = {b"batch_label": batch_label.encode(), b"labels": list(labels), b"data": data,
             b"filenames": [f.encode() for f in filenames]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out_root")
    p.add_argument("--src", default=HERE)
    p.add_argument("--only", choices=["test", "train"])
    a = p.parse_args(argv)
    meta_path = os.path.join(a.src, "meta.json.gz")
    if not os.path.exists(meta_path):
        meta_path = os.path.join(HERE, "meta.json.gz")
    with gzip.open(meta_path, "rt") as f:
        meta = json.load(f)
    out = os.path.join(a.out_root, "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    names = {"test": NAMES[5:], "train": NAMES[:5]}.get(a.only, NAMES)
    ok = True
    for name in names:
        mosaic = os.path.join(a.src, name.replace("data_batch_", "train_").replace("test_batch", "test") + ".webp")
        if not os.path.exists(mosaic):
            print(f"{name}: missing {mosaic}", file=sys.stderr)
            ok = False
            continue
        m = meta[name]
        write_batch(os.path.join(out, name), m["batch_label"], m["labels"], rows(mosaic, len(m["labels"])),
                    m["filenames"])
        print(name, "written")
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in meta["label_names"]],
                     b"num_vis": 3072}, f, protocol=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
