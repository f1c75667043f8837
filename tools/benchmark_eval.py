#!/usr/bin/env python3
"""Float32 evaluation speed of a model in contiguous and channels_last memory, side by side in one run: seconds per
image of a gradient evaluation (PGD, APGD, FAB) and of a forward (Square's queries), and the channels_last speed-up,
as ``tools/verify.py --channels-last`` would get it. The formats alternate round by round; random weights and
images (the speed does not depend on them). Also the largest logit difference between the two formats.

    python tools/benchmark_eval.py                                  # fsr_resnet18, batch 100 (AutoAttack's on the CPU)
    python tools/benchmark_eval.py --model cifar_resnet18 --rounds 5 --json eval_formats.json
"""
import argparse
import json
import sys

import torch

from fsr_hub.benchmark import compare_eval_formats
from fsr_hub.hardware import hardware_name, resolve_device
from fsr_hub.models import ALL_MODELS, create


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='fsr_resnet18', choices=sorted(ALL_MODELS))
    p.add_argument('--device', default=None, help='cpu | cuda | cuda:N (default: cuda if available)')
    p.add_argument('--batch-size', type=int, default=100, help='images per call (default: 100)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds per format, alternating (default: 3)')
    p.add_argument('--repeats', type=int, default=3, help='calls per round (default: 3)')
    p.add_argument('--json', metavar='FILE', default=None, help='write the figures as JSON')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dev = resolve_device(args.device)
        torch.manual_seed(0)
        r = compare_eval_formats(create(args.model, num_classes=10), args.batch_size, args.rounds, args.repeats,
                                 str(dev))
    except (ValueError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'device: {hardware_name(dev)} | torch {torch.__version__} | {args.model} | float32 | batch '
          f'{args.batch_size} | median of {args.rounds} alternating rounds x {args.repeats} calls')
    for kind in ('gradient', 'forward'):
        print(f'{kind:<8}: contiguous {1e3 * r["contiguous"][kind]:.3f} ms/img | channels_last '
              f'{1e3 * r["channels_last"][kind]:.3f} ms/img | channels_last speed-up x{r["speedup"][kind]:.3f}')
    print(f'largest logit difference between the formats: {r["max_logit_difference"]:.2e}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'device': hardware_name(dev), 'torch': torch.__version__, 'model': args.model,
                       'batch_size': args.batch_size, 'rounds': args.rounds, 'repeats': args.repeats, **r}, f,
                      indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
