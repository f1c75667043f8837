#!/usr/bin/env python3
"""Build the CIFAR-10 test sample shipped as ``fsr_hub/assets/cifar10_test_sample.png`` from a
``cifar-10-batches-py`` folder.

    python tools/make_sample.py /tmp/data/cifar-10-batches-py [--per-class 20] [--out FILE.png]
"""
import argparse
import sys

from fsr_hub.sample import SAMPLE_PATH, SampleError, build_sample_from_cifar, read_sample, write_sample


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('cifar_dir', help='folder holding the CIFAR-10 python test_batch')
    p.add_argument('--per-class', type=int, default=20, help='images per class (default 20 -> 200 images)')
    p.add_argument('--out', default=str(SAMPLE_PATH), help='output PNG (default: the packaged sample)')
    args = p.parse_args(argv)
    try:
        images, labels, indices = build_sample_from_cifar(args.cifar_dir, args.per_class)
        write_sample(args.out, images, labels, indices,
                     source=f'CIFAR-10 test_batch, first {args.per_class} test images of each class, round-robin order')
        read_sample(args.out)  # round-trip check
    except SampleError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {args.out}: {len(images)} images, test indices {sorted(indices.tolist())[0]}..{max(indices)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
