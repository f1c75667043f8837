#!/usr/bin/env python3
"""Print the cost of FSR (params, FLOPs in both conventions, latency) as markdown and JSON: the paper's Table 7
for fsr_hub's architectures, or before / after FSR for any timm CNN.

    python tools/cost_report.py                        # Table 7: all three architectures, CPU latency
    python tools/cost_report.py --models fsr_resnet18 --device cuda --batch-size 256 --json cost.json
    python tools/cost_report.py --model resnet50 --fsr-positions layer3,layer4 --input-size 3,224,224
"""
import argparse
import json
import sys
from pathlib import Path

from fsr_hub.cli import add_fsr_arguments, fsr_model_args, int_tuple
from fsr_hub.cost import cost_table, format_markdown, fsr_cost
from fsr_hub.hardware import resolve_device
from fsr_hub.models import FSR_MODELS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument('--models', nargs='+', default=None, choices=FSR_MODELS,
                       help='Table 7 rows: vanilla twin vs FSR model (default: all three)')
    which.add_argument('--model', default=None,
                       help='any timm CNN (or fsr_hub architecture) with the --fsr-* flags: the model without FSR '
                            'vs with it, e.g. --model resnet50 --fsr-positions layer3,layer4')
    p.add_argument('--input-size', type=int_tuple, default=(3, 32, 32), metavar='C,H,W',
                   help='input of the --model count and latency (default 3,32,32)')
    p.add_argument('--num-classes', type=int, default=10, help='classes of --model (default 10)')
    add_fsr_arguments(p)
    p.add_argument('--no-latency', action='store_true', help='skip the latency measurement')
    p.add_argument('--device', default='cpu', help="device for latency, e.g. 'cpu' or 'cuda'")
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args = p.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as e:
        p.error(f'--device: {e}')
    if args.batch_size < 1 or args.iters < 1:
        p.error(f'--batch-size and --iters must be positive, got {args.batch_size} and {args.iters}')
    if args.json and not Path(args.json).parent.is_dir():
        p.error(f'--json {args.json}: the folder {Path(args.json).parent} does not exist')
    model_args = fsr_model_args(args)
    if args.model is None and (model_args or args.input_size != (3, 32, 32)):
        p.error('--fsr-* and --input-size go with --model (Table 7 rows are the paper\'s 32x32 models)')
    if len(args.input_size) != 3 or min(args.input_size) < 1:
        p.error(f'--input-size must be C,H,W (three positive integers), got {args.input_size}')
    try:
        if args.model is not None:
            rows = [fsr_cost(args.model, {'num_classes': args.num_classes, **model_args}, args.input_size,
                             latency=not args.no_latency, device=args.device, batch_size=args.batch_size,
                             iters=args.iters)]
        else:
            rows = cost_table(args.models or list(FSR_MODELS), latency=not args.no_latency, device=args.device,
                              batch_size=args.batch_size, iters=args.iters)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(format_markdown(rows))
    print()
    print(json.dumps(rows, indent=1))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        except OSError as e:
            print(f'error: --json {args.json}: {e.strerror or e}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
