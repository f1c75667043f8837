#!/usr/bin/env python3
"""Adversarial training of an fsr_hub model (the paper's recipe by default; every field can be overridden).

    python tools/train.py --model fsr_resnet18 --data /tmp/data --out runs/at_fsr_r18
    python tools/train.py --model cifar_resnet18 --objective trades --data /tmp/data --out runs/trades_r18
    python tools/train.py --dataset svhn --data /data/svhn --out runs/svhn      # lr 0.01, step eps/8, no augment
    torchrun --nproc_per_node 4 tools/train.py ...                               # DDP, global batch 128
    python tools/train.py ... --resume                                           # continue from OUT/last.pt

One JSON line of metrics per epoch goes to stdout; OUT/ gets last.pt, best.pt, final.safetensors,
best.safetensors and train_summary.json.
"""
import argparse
import dataclasses
import shlex
import sys
import typing
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fsr_hub.data import DatasetError  # noqa: E402
from fsr_hub.engine import CheckpointError, TrainConfig, train  # noqa: E402
from fsr_hub.weights import WeightsError  # noqa: E402

HELP = {
    'model': 'timm model name (fsr_* or the vanilla cifar_* twins)',
    'data': 'dataset root (CIFAR-10: DIR/cifar-10-batches-py; SVHN: DIR/train_32x32.mat)',
    'objective': 'at | trades | mart',
    'fsr_loss': 'add the FSR separation/recalibration losses (ignored by vanilla models)',
    'eps': 'L-inf radius, e.g. 8/255', 'alpha': 'attack step (default eps/4, SVHN eps/8)',
    'lr': 'initial learning rate (default 0.1, SVHN 0.01)', 'milestones': 'epochs where lr *= lr-gamma, e.g. 75,90',
    'batch_size': 'global batch size (split over DDP ranks)',
    'holdout': 'last N training images held out (never trained on) to select best.pt; 0 disables',
    'eval_every': 'evaluate the held-out slice every K epochs', 'amp': 'bf16 autocast (default: on for CUDA)',
    'channels_last': 'channels_last memory format (default: on for CUDA)', 'compile': 'torch.compile the model',
    'fp16': 'write final/best safetensors in float16', 'resume': 'continue from OUT/last.pt if it exists',
    'max_train_images': 'train on the first N images only (smoke runs)',
}


def _number(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None


def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(',') if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = '--' + f.name.replace('_', '-')
        hint = hints[f.name]
        base = [a for a in typing.get_args(hint) if a is not type(None)][0] if typing.get_args(hint) else hint
        kw = dict(default=None, help=HELP.get(f.name, '') + f' (default: {f.default})')
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == 'milestones':
            p.add_argument(flag, type=_int_tuple, **kw)
        elif base is float:
            p.add_argument(flag, type=_number, **kw)
        else:
            p.add_argument(flag, type=base, **kw)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    command = 'python tools/train.py ' + ' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        cfg = TrainConfig.for_dataset(overrides.pop('dataset', 'cifar10'), **overrides)
        train(cfg, command=command)
    except (DatasetError, CheckpointError, WeightsError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: the last complete epoch is in OUT/last.pt (use --resume)', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
