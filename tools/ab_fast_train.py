#!/usr/bin/env python3
"""Short A/B training runs on one CIFAR-10 subset and seed, one change each against a baseline, and their table:
held-out clean / PGD accuracy after every epoch and seconds. Made to find why a CPU run learns slowly.

    python tools/ab_fast_train.py --data DIR --out runs/ab --max-train-images 2048 --epochs 2
    python tools/ab_fast_train.py --data DIR --out runs/ab --only base,fp32 --timeout 300
    python tools/ab_fast_train.py --out runs/ab --table-only            # the table of runs already there

The baseline is the first CPU run's recipe (fsr_resnet18, FGSM-RS, lr 0.1 with no decay inside the short run,
bf16 autocast where the CPU has it); each variant changes one thing. Every run evaluates in bf16 autocast (the
fp32 variant too), so the evaluation is the same across variants and ~2.6x cheaper than in float32 on a 2-core
CPU. Each run is a subprocess of tools/train.py under ``timeout``.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from fsr_hub.cli import comma_list

#: one change each against ``base``
VARIANTS: Dict[str, List[str]] = {
    'base': [],
    'fp32': ['--no-amp', '--no-channels-last'],
    'no-fsr-loss': ['--no-fsr-loss'],
    'vanilla': ['--model', 'cifar_resnet18'],
    'cyclic': ['--schedule', 'cyclic'],
    'n-fgsm': ['--attack', 'n-fgsm'],
    'seed1': ['--seed', '1'],  # the baseline with another seed: how far two identical recipes differ
}
BASE = ['--model', 'fsr_resnet18', '--attack', 'fgsm-rs', '--milestones', '7,9', '--eval-amp', '--no-guard',
        '--eval-every', '1', '--device', 'cpu', '--no-progress']


def command(name: str, args: argparse.Namespace) -> List[str]:
    """The tools/train.py command of variant ``name`` (milestones dropped for the cyclic schedule)."""
    base = list(BASE)
    if name == 'cyclic':
        i = base.index('--milestones')
        del base[i:i + 2]
    return [sys.executable, str(Path(__file__).with_name('train.py')), *base,
            '--data', args.data, '--out', str(Path(args.out) / name), '--epochs', str(args.epochs),
            '--max-train-images', str(args.max_train_images), '--holdout', str(args.holdout),
            '--eval-steps', str(args.eval_steps), '--batch-size', str(args.batch_size), '--seed', str(args.seed),
            *VARIANTS[name]]  # the variant's flags last: they win


def table(out: Path, names: List[str]) -> str:
    """Markdown: one row per variant and epoch, from each run's train_summary.json."""
    rows = ['| variant | epoch | lr | train adv acc | held-out clean | held-out PGD | epoch s | eval s |',
            '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for name in names:
        path = out / name / 'train_summary.json'
        if not path.is_file():
            rows.append(f'| {name} | - | - | - | - | - | - | not run / no epoch finished |')
            continue
        for h in json.loads(path.read_text())['history']:
            rows.append(f'| {name} | {h["epoch"]} | {h["lr"]:.3g} | {h["train_adv_acc"]} | '
                        f'{h.get("holdout_clean_acc")} | {h.get("holdout_pgd_acc")} | {h["epoch_seconds"]:.0f} | '
                        f'{h.get("holdout_seconds", 0):.0f} |')
    return '\n'.join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='data', help='CIFAR-10 root (default: data)')
    p.add_argument('--out', required=True, help='one folder per variant under it')
    p.add_argument('--only', type=comma_list(str), default=None,
                   help=f'variants from {", ".join(VARIANTS)} (default: all)')
    p.add_argument('--epochs', type=int, default=2, help='epochs per run (default: 2)')
    p.add_argument('--max-train-images', type=int, default=2048, help='training subset (default: 2048)')
    p.add_argument('--holdout', type=int, default=200, help='held-out images evaluated (default: 200)')
    p.add_argument('--eval-steps', type=int, default=10, help='PGD steps of the held-out evaluation (default: 10)')
    p.add_argument('--batch-size', type=int, default=128, help='training batch (default: 128)')
    p.add_argument('--seed', type=int, default=0, help='seed of every run (default: 0)')
    p.add_argument('--timeout', type=float, default=600, help='seconds per run before it is killed (default: 600)')
    p.add_argument('--table-only', action='store_true', help='print the table of the runs already in --out')
    args = p.parse_args(argv)
    names = args.only or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f'error: unknown variants {unknown}; expected some of {", ".join(VARIANTS)}', file=sys.stderr)
        return 2
    if not args.table_only:
        for name in names:
            cmd = command(name, args)
            print('$ ' + ' '.join(cmd[1:]), file=sys.stderr, flush=True)
            try:
                subprocess.run(cmd, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(f'{name}: killed after {args.timeout:g} s', file=sys.stderr)
    print(table(Path(args.out), names))
    return 0


if __name__ == '__main__':
    sys.exit(main())
