#!/usr/bin/env python3
"""Independent re-measure of a release: clean and PGD-20 accuracy of its weights on the first CIFAR-10 test images,
with code outside fsr_hub's evaluation (timm's own loader of the release folder, the test batch read from its
pickle, torchattack's PGD), compared image by image with the per-example results its results.json records.

    python tools/remeasure.py model_cards/fsr_resnet18.fgsmrs_cifar10 --data /tmp/data [--n-clean 1000 --n-pgd 500]

Prints a JSON report; exits 1 when a re-measured accuracy differs from the card's on the same images by more than
--tolerance points (default 1), 2 on bad input. PGD-20 is the paper's: eps 8/255, step eps/10, 20 steps, no random
start, cross-entropy; model in eval mode, float32, inputs raw [0, 1] pixels.
"""
import argparse
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import timm
import torch

import fsr_hub  # noqa: F401  (registers the architectures with timm)
from fsr_hub.attack_registry import CLEAN, PGD20
from fsr_hub.card import ci95
from fsr_hub.hardware import hardware_name, strict_float32

EPS = 8 / 255


def read_test_batch(data: str) -> tuple:
    """CIFAR-10's ``test_batch`` as float [0, 1] NCHW images and int64 labels, in the standard order."""
    path = Path(data) / 'cifar-10-batches-py' / 'test_batch'
    try:
        with open(path, 'rb') as f:
            batch = pickle.load(f, encoding='bytes')
        x = np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[b'labels'], dtype=np.int64)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f'{path}: not a readable CIFAR-10 test batch ({e}).') from e
    return torch.from_numpy(x).float() / 255, torch.from_numpy(y)


def card_flags(results: Mapping[str, Any], metric: str) -> np.ndarray:
    """The per-example correctness results.json records for ``metric`` (bit i of the hex string: image i)."""
    entry, packed = results['results'].get(metric), (results.get('per_example') or {}).get(metric)
    if entry is None or packed is None:
        raise ValueError(f'results.json has no per-example {metric} results to compare with.')
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8), bitorder='little')
    return bits[:int(entry['n'])].astype(bool)


def remeasure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int],
              results: Mapping[str, Any], metrics: Sequence[str] = (CLEAN, PGD20),
              batch_size: int = 100) -> Dict[str, Any]:
    """Accuracy of ``model`` on the test images ``x`` (test-set ``indices``) for each metric, beside the card's
    per-example results on the same images."""
    from torchattack import PGD

    model.eval()
    out: Dict[str, Any] = {}
    for metric in metrics:
        flags = card_flags(results, metric)
        if max(indices) >= len(flags):
            raise ValueError(f'results.json has {metric} on the first {len(flags)} images only.')
        attack = PGD(model, eps=EPS, steps=20, alpha=EPS / 10, random_start=False, device=x.device) \
            if metric == PGD20 else None
        t0, correct = time.perf_counter(), []
        with strict_float32():
            for i in range(0, len(y), batch_size):
                xb, yb = x[i:i + batch_size], y[i:i + batch_size]
                xa = attack(xb, yb) if attack is not None else xb
                if attack is not None and (xa - xb).abs().max().item() > EPS + 1e-6:
                    raise RuntimeError(f'torchattack PGD left the eps-ball ({(xa - xb).abs().max().item()}).')
                with torch.no_grad():
                    correct.append((model(xa).argmax(1) == yb).cpu().numpy())
        ours = np.concatenate(correct)
        card = flags[np.asarray(indices)]
        acc, card_acc = 100.0 * ours.mean(), 100.0 * card.mean()
        out[metric] = {
            'n': len(ours), 'accuracy': round(acc, 2), 'ci95': ci95(acc, len(ours)),
            'card_accuracy_same_images': round(card_acc, 2), 'difference': round(acc - card_acc, 2),
            'images_agreeing': round(100.0 * (ours == card).mean(), 2),
            'card_reported': {k: results['results'][metric].get(k) for k in ('accuracy', 'n')},
            'seconds': round(time.perf_counter() - t0, 1),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('release', help='release folder (model_cards/<arch>.<tag>)')
    p.add_argument('--data', required=True, help='folder holding cifar-10-batches-py/')
    p.add_argument('--n-clean', type=int, default=1000, help='clean accuracy on the first N test images')
    p.add_argument('--n-pgd', type=int, default=500, help='PGD-20 accuracy on the first N test images')
    p.add_argument('--tolerance', type=float, default=1.0, help='points of difference allowed (default 1)')
    args = p.parse_args(argv)
    folder = Path(args.release)
    try:
        if min(args.n_clean, args.n_pgd) <= 0:
            raise ValueError('--n-clean and --n-pgd must be positive.')
        if not (folder / 'results.json').is_file():
            raise ValueError(f'{folder} is not a release folder: results.json is missing.')
        results = json.loads((folder / 'results.json').read_text())
        # timm's own loader of a hub-format folder (config.json + model.safetensors)
        model = timm.create_model(f'local-dir:{folder.resolve()}', pretrained=True).eval()
        x, y = read_test_batch(args.data)
        report = {'release': str(folder), 'hardware': hardware_name(torch.device('cpu')), 'torch': torch.__version__}
        for metric, n in ((CLEAN, args.n_clean), (PGD20, args.n_pgd)):
            report.update(remeasure(model, x[:n], y[:n], range(n), results, metrics=(metric,)))
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    report['agrees'] = all(abs(report[m]['difference']) <= args.tolerance for m in (CLEAN, PGD20))
    print(json.dumps(report, indent=2))
    return 0 if report['agrees'] else 1


if __name__ == '__main__':
    sys.exit(main())
