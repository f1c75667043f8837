#!/usr/bin/env python3
"""Robustness verification of an fsr_hub model: the paper's white-box suite, AutoAttack (standard and rand),
a transfer attack and gradient-masking checks, written as an ``fsr-hub/verify/v1`` JSON report.

    python tools/verify.py --model fsr_resnet18 --weights runs/at/final.safetensors --data /tmp/data \\
        --n 1000 --batch-size 500 --out results.json --device cuda
    python tools/verify.py --model fsr_resnet18 --pretrained --tag at_cifar10 --data /tmp/data --attacks clean,pgd20
    python tools/verify.py ... --attacks all --transfer-from cifar_resnet18:runs/vanilla/final.safetensors
"""
import argparse
import json
import shlex
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
import torch  # noqa: E402

import fsr_hub  # noqa: E402,F401  (registers the models)
from fsr_hub.data import DATASETS, DatasetError, images_to_float, load_dataset  # noqa: E402
from fsr_hub.models import ALL_MODELS  # noqa: E402
from fsr_hub.evaluate import (  # noqa: E402
    ATTACKS, DEFAULT_ATTACKS, build_report, evaluate, model_info, parse_attacks, training_section,
)
from fsr_hub.weights import WeightsError, load_weights, resolve_pretrained_file, sha256_file  # noqa: E402


def _number(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f'not a number: {text!r}') from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='timm model name, e.g. fsr_resnet18')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--weights', help='safetensors weight file to evaluate')
    src.add_argument('--pretrained', action='store_true', help='the released weights (model.tag through the hub)')
    p.add_argument('--tag', default=None, help='pretrained tag, e.g. at_cifar10 (recorded in the report)')
    p.add_argument('--dataset', default='cifar10', choices=sorted(DATASETS))
    p.add_argument('--data', required=True, help='dataset root (CIFAR-10: DIR/cifar-10-batches-py)')
    p.add_argument('--n', type=int, default=None, help='evaluate the first N test images (default: all)')
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--attacks', default=','.join(DEFAULT_ATTACKS),
                   help=f'comma list from {",".join(ATTACKS)} or "all" (default: every attack but transfer)')
    p.add_argument('--eps', type=_number, default=8 / 255, help='L-inf radius (default 8/255)')
    p.add_argument('--transfer-from', default=None, metavar='MODEL:WEIGHTS',
                   help='source model of the transfer attack (adds "transfer" to the attacks)')
    p.add_argument('--no-masking-checks', action='store_true', help='skip the gradient-masking checks')
    p.add_argument('--masking-n', type=int, default=1000, help='images used by the eps / unbounded sweeps')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', default=None, help='write the JSON report here (default: stdout)')
    p.add_argument('--train-summary', default=None,
                   help="the trainer's train_summary.json of these weights: recipe, command and timing go into the report")
    p.add_argument('--no-progress', action='store_true')
    return p


def _create(name: str, num_classes: int, **kwargs) -> torch.nn.Module:
    if not timm.models.is_model(name):
        raise ValueError(f'Unknown model {name!r}; fsr_hub models: {", ".join(ALL_MODELS)}.')
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def run(args: argparse.Namespace, command: str) -> dict:
    attacks = list(parse_attacks(args.attacks))
    if args.batch_size <= 0 or (args.n is not None and args.n <= 0):
        raise ValueError('--batch-size and --n must be positive.')
    num_classes = DATASETS[args.dataset][0]
    if args.pretrained:
        name = f'{args.model}.{args.tag}' if args.tag else args.model
        model = _create(name, num_classes, pretrained=True)
        weights = str(resolve_pretrained_file(model.pretrained_cfg))
    else:
        model = _create(args.model, num_classes)
        load_weights(model, args.weights)
        weights = args.weights
    training = None
    if args.train_summary:  # checked before the (long) evaluation
        training = training_section(json.loads(Path(args.train_summary).read_text()), sha256_file(weights))
    transfer_model, transfer_source = None, None
    if args.transfer_from:
        src_name, sep, src_weights = args.transfer_from.partition(':')
        if not sep or not src_weights:
            raise ValueError(f'--transfer-from must be MODEL:WEIGHTS, got {args.transfer_from!r}.')
        transfer_model = _create(src_name, num_classes)
        load_weights(transfer_model, src_weights)
        transfer_source = f'{src_name} ({src_weights}), PGD-20 step eps/10'
        if 'transfer' not in attacks:
            attacks.append('transfer')
    images, labels = load_dataset(args.dataset, args.data, train=False)
    total = len(labels)
    if args.n is not None:
        images, labels = images[:args.n], labels[:args.n]
    x = images_to_float(images)
    evaluation = evaluate(
        model.eval(), x, labels, attacks=attacks, eps=args.eps, batch_size=args.batch_size, device=args.device,
        seed=args.seed, num_classes=num_classes, transfer_model=transfer_model, transfer_source=transfer_source,
        masking_checks=not args.no_masking_checks, masking_n=args.masking_n, progress=not args.no_progress)
    data = {'dataset': args.dataset, 'split': 'test', 'n': len(labels),
            'subset': 'all' if len(labels) == total else 'first n', 'seed': args.seed}
    info = model_info(model, args.model, args.tag, weights)
    report = build_report(info, data, evaluation, args.eps, args.batch_size, args.device, command)
    if training is not None:
        report['training'] = training
    return report


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = 'python tools/verify.py ' + ' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        report = run(args, command)
    except (DatasetError, WeightsError, ValueError, RuntimeError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + '\n')
        r = report['results']
        print(' '.join(f'{k}={v["accuracy"]:.2f}' for k, v in r.items()), f'-> {args.out}')
    else:
        print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
