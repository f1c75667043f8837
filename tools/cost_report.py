"""Print the Table 7 cost comparison (params, FLOPs in both conventions, latency) as markdown and JSON.

    python tools/cost_report.py                        # all three architectures, CPU latency
    python tools/cost_report.py --models fsr_resnet18 --device cuda --batch-size 256 --json cost.json
"""
import argparse
import json
import sys

import torch

from fsr_hub.cost import cost_table, format_markdown
from fsr_hub.models import FSR_MODELS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(FSR_MODELS), choices=FSR_MODELS)
    p.add_argument('--no-latency', action='store_true', help='skip the latency measurement')
    p.add_argument('--device', default='cpu', help="device for latency, e.g. 'cpu' or 'cuda'")
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--json', default=None, help='also write the rows to this JSON file')
    args = p.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device} requested but CUDA is not available')
    rows = cost_table(args.models, latency=not args.no_latency, device=args.device,
                      batch_size=args.batch_size, iters=args.iters)
    print(format_markdown(rows))
    print()
    print(json.dumps(rows, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
