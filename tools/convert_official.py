#!/usr/bin/env python3
"""Convert a checkpoint in the original FSR code's layout to an fsr_hub safetensors file and check it loads strictly.

    python tools/convert_official.py ckpt.pth --arch fsr_resnet18 --out model.safetensors [--fp16]
    # a vanilla twin from the same backbone layout, e.g. pyautoattack's naturally trained example ResNet-18:
    python tools/convert_official.py .../pyautoattack/examples/model_test.pt --arch cifar_resnet18 --out nat.safetensors
"""
import argparse
import sys
from pathlib import Path

import torch

from fsr_hub.convert import OFFICIAL_ARCHS, ConversionError, convert_official_state_dict, load_official_checkpoint
from fsr_hub.models import create
from fsr_hub.weights import WeightsError, load_weights, save_weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('checkpoint', help='checkpoint in the original layout (torch.save of a state dict)')
    p.add_argument('--arch', required=True, choices=sorted(OFFICIAL_ARCHS))
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--out', required=True, help='output .safetensors path')
    p.add_argument('--fp16', action='store_true', help='store floating tensors as float16')
    args = p.parse_args(argv)
    try:
        state = convert_official_state_dict(load_official_checkpoint(args.checkpoint), args.arch)
        model = create(args.arch, num_classes=args.num_classes)
        sha = save_weights(state, args.out, dtype=torch.float16 if args.fp16 else None,
                           metadata={'architecture': args.arch, 'converted_from': Path(args.checkpoint).name})
        load_weights(model, args.out, sha)  # strict: every key and shape must fit
    except (ConversionError, WeightsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {args.out} ({len(state)} tensors, sha256 {sha}); loads strictly into {args.arch}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
