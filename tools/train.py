#!/usr/bin/env python3
"""Adversarial (or natural) training of an fsr_hub model: the paper's recipe by default, every field overridable.

    python tools/train.py --model fsr_resnet18 --data /tmp/data --out runs/at_fsr_r18
    python tools/train.py --model fsr_resnet18 --data /tmp/data --out runs/x --time-budget 9 --step cuda-graph
    python tools/train.py --model cifar_resnet18 --objective trades --data /tmp/data --out runs/trades_r18
    python tools/train.py --model cifar_resnet18 --objective natural --data /tmp/data --out runs/nat_r18
    python tools/train.py --model resnet50 --fsr-positions layer3,layer4 --data /tmp/data --out runs/r50  # timm CNN+FSR
    python tools/train.py --dataset svhn --data /data/svhn --out runs/svhn      # lr 0.01, step eps/8, no augment
    torchrun --nproc_per_node 4 tools/train.py ...                               # DDP, global batch 128
    python tools/train.py ... --resume                                           # continue from OUT/last.pt
    python tools/train.py --device cpu --attack fgsm-rs --schedule cyclic --epochs 15 --data /tmp/data --out runs/fast
    python tools/train.py --device cpu --attack n-fgsm --schedule cyclic --epochs 30 --data /tmp/data --out runs/nfgsm
    python tools/train.py --objective adml --init-from fsr_resnet18.fgsmrs_cifar10 --data /tmp/data --out runs/adml
    python tools/train.py --objective adml --init-from model_cards/fsr_resnet18.fgsmrs_cifar10 --device cpu \\
        --attack fgsm-rs --epochs 2 --max-train-images 2048 --data /tmp/data --out runs/adml_cpu  # reduced CPU mode

--time-budget M: the whole run (set-up, training, held-out evaluations, outputs) ends within M minutes. The
speed is measured on the first steps after the set-up (compilation / graph capture), the epoch count is fixed
(at most --epochs) and the lr schedule follows it; train_summary.json records the plan, and the same command
with --epochs N instead of --time-budget reproduces the run (exactly, except for a cyclic / adml schedule planned
below --epochs: its steps timed before the plan took the lr of the longer cycle). If the machine slows down, the
remaining epochs are re-planned at an epoch boundary and the schedule compressed, so the run still reaches its
last lr decay (recorded in the summary's budget.replans). A cyclic / adml run records its schedule's epoch counts
by step in budget.lr_plan; --epochs N --lr-plan PLAN replays it exactly (a vanilla twin of a budgeted run).

Fast adversarial training (--attack fgsm-rs | n-fgsm, one attack step per batch) with --schedule cyclic: the lr
rises per iteration from 0 to --lr (default 0.2) at mid-run and falls back to 0. The catastrophic-overfitting
guard (PGD-5 on a fixed held-out batch after every epoch) stops a run whose robustness collapses.

ADML fine-tuning (--objective adml, Lee et al., ICCV 2023) starts from --init-from (a release folder, a released
arch.tag or a safetensors file; loaded strictly, its sha256 held to the release pin and recorded) and defaults to
the official recipe: PGD-10 (step 0.00722), 10 epochs, lr 1e-3 on a per-iteration triangle (0 -> lr over the
first 20 % of the iterations, -> 0 over the rest: --schedule adml), batch 128 in halves; --adml-base picks the
first half's loss (at, trades, mart; beta 2). Any departure, e.g. the reduced CPU mode above (FGSM-RS, 2 epochs,
a subset), is labelled "reduced" in train_summary.json's recipe, with the departures listed.

Precision: bf16 autocast and channels_last are on by default on CUDA and on CPUs with amx_bf16 or avx512_bf16 in
/proc/cpuinfo (float32 elsewhere; --no-amp / --no-channels-last turn them off); on the CPU the held-out
selection evaluation then runs in bf16 as well (--no-eval-amp: float32). train_summary.json records the choice.

One JSON line of metrics per epoch goes to stdout. OUT/ gets last.pt and train_summary.json after every epoch,
best.safetensors at each new best (held-out slice), final.safetensors at the end; each written atomically.
"""
import time

CLOCK_START = time.monotonic()  # the time budget counts from here, before the heavy imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402

from fsr_hub.checkpoint import CheckpointError  # noqa: E402
from fsr_hub.cli import add_fsr_arguments, fsr_model_args, interruptible, int_tuple, number  # noqa: E402
from fsr_hub.data import DATASETS, DatasetError  # noqa: E402
from fsr_hub.engine import NATURAL_RECIPE, STEP_MODES, TrainConfig, train  # noqa: E402
from fsr_hub.objectives import ADML_BASES, OBJECTIVES  # noqa: E402
from fsr_hub.paper import ADML_RECIPE  # noqa: E402
from fsr_hub.schedule import SCHEDULES  # noqa: E402
from fsr_hub.train_attacks import TRAIN_ATTACKS  # noqa: E402
from fsr_hub.weights import WeightsError  # noqa: E402

#: help of every TrainConfig field, each naming its default once
HELP = {
    'model': 'timm model name: fsr_resnet18, fsr_vgg16, fsr_wrn34_10, the vanilla cifar_* twins, or any timm CNN (with '
             '--fsr-positions to add FSR) (default: fsr_resnet18)',
    'dataset': 'training set (default: cifar10)',
    'data': 'dataset root: CIFAR-10 in DIR/cifar-10-batches-py, SVHN in DIR/train_32x32.mat (default: data)',
    'out': 'output folder (default: runs/train)',
    'init_from': 'start from these weights (fine-tuning): a release folder, a released arch.tag or a safetensors '
                 'file; loaded strictly, sha256 checked against the release pin (default: a fresh initialisation)',
    'objective': f'training objective (default: at); natural: clean cross-entropy, no attack, recipe: '
                 f'{NATURAL_RECIPE}; adml: ADML fine-tuning ({ADML_RECIPE})',
    'fsr_loss': 'add the FSR separation/recalibration losses (ignored by vanilla models) (default: on)',
    'lambda_sep': 'weight of L_sep (default: 1)', 'lambda_rec': 'weight of L_rec (default: 1)',
    'beta': 'TRADES / MART robustness weight (default: 6; adml: 2)',
    'adml_base': 'adml: the loss of the first half of each batch, at | trades | mart (default: at)',
    'eps': 'L-inf radius of the training attack, e.g. 8/255 (default: 8/255)',
    'attack': 'training attack: pgd (the paper), fgsm-rs (start U(-eps,eps), one step, projected), n-fgsm (noise '
              'U(-2eps,2eps), one step, not projected to the eps-ball); TRADES takes pgd only (default: pgd)',
    'alpha': 'attack step (default: pgd eps/4, SVHN eps/8, adml 0.00722 at eps 8/255; fgsm-rs 1.25 eps; n-fgsm eps)',
    'steps': 'PGD steps of the training attack; fgsm-rs / n-fgsm take 1 (default: 10 for pgd)',
    'random_start': 'uniform random start of the training attack (default: on)',
    'schedule': 'lr schedule: piecewise (lr x lr-gamma after the milestones, the paper), cyclic (per-iteration '
                'triangle 0 -> lr -> 0 peaking mid-run, for fast AT) or adml (per-iteration triangle peaking after '
                '20%% of the iterations) (default: piecewise; adml: adml)',
    'epochs': 'epochs; with --time-budget the most epochs (default: 100; adml: 10)',
    'time_budget': 'minutes for the whole run: fixes the epoch count after measuring the first steps (default: none)',
    'lr_plan': 'cyclic / adml: replay a time-budget run\'s schedule, EPOCHS@STEP,... (its summary\'s budget.lr_plan, '
               'e.g. 30@0,10@11,8@382): from each global step on, the lr follows the schedule of EPOCHS epochs',
    'batch_size': 'global batch size, split over DDP ranks (default: 128)',
    'lr': 'initial learning rate; with --schedule cyclic / adml the peak (default: 0.1, SVHN 0.01; cyclic 0.2, the '
          'fast AT recipes; adml 1e-3)', 'momentum': 'SGD momentum (default: 0.9)',
    'weight_decay': 'SGD weight decay (default: 5e-4)',
    'milestones': 'epochs after which lr *= lr-gamma, e.g. 75,90 (default: 75%% and 90%% of the epochs; '
                  'natural: 50%% and 75%%)',
    'lr_gamma': 'lr decay factor at each milestone (default: 0.1)',
    'augment': 'pad-4 random crop + horizontal flip (default: on for CIFAR-10, off for SVHN)',
    'holdout': 'last N training images held out (never trained on) to select best.safetensors; 0 disables '
               '(default: 1000)',
    'eval_every': 'evaluate the held-out slice every K epochs, and every epoch of the last quarter '
                  '(default: epochs // 10)',
    'eval_steps': 'PGD steps of the held-out evaluation (default: 20)',
    'eval_batch_size': 'batch size of the held-out evaluation (default: 500)',
    'eval_amp': 'held-out evaluation in bf16 autocast, recorded in the summary (default: on for the CPU when --amp '
                'is; float32 on CUDA)',
    'guard': 'catastrophic-overfitting guard: PGD-5 on a fixed held-out batch after every epoch; a fall of '
             '--guard-drop points below its best stops the run and keeps the best checkpoint (default: on for '
             'adversarial objectives with a held-out slice)',
    'guard_drop': 'points of guard accuracy below its best that stop the run (default: 20)',
    'max_train_images': 'train on the first N images only, for smoke runs (default: all)',
    'seed': 'random seed (default: 0)', 'device': 'cpu | cuda | cuda:N (default: cuda if available)',
    'amp': 'bf16 autocast (default: on for CUDA and CPUs with amx_bf16 / avx512_bf16)',
    'channels_last': 'channels_last memory format (default: as --amp)',
    'step': 'how the training step runs; compile measured slower than eager for fsr_resnet18 on a 2-core CPU '
            '(README) (default: cuda-graph on one CUDA device, else eager)',
    'deterministic': 'CUDA: deterministic cuDNN algorithms, no autotuning, for bit-exact resume (default: off)',
    'fp16': 'write final/best safetensors in float16 (default: off)',
    'resume': 'continue from OUT/last.pt if it exists (default: off)',
    'progress': 'progress bar on stderr (default: on)',
}
CHOICES = {'dataset': sorted(DATASETS), 'objective': OBJECTIVES, 'step': STEP_MODES, 'attack': TRAIN_ATTACKS,
           'schedule': SCHEDULES, 'adml_base': ADML_BASES}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == 'model_args' or f.metadata.get('internal'):  # model_args: set by the --fsr-* flags below
            continue
        flag = '--' + f.name.replace('_', '-')
        hint = hints[f.name]
        base = [a for a in typing.get_args(hint) if a is not type(None)][0] if typing.get_args(hint) else hint
        kw = dict(default=None, help=HELP[f.name])  # None: the TrainConfig default applies
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == 'milestones':
            p.add_argument(flag, type=int_tuple, metavar='E1,E2', **kw)
        elif base is float:
            p.add_argument(flag, type=number, metavar='MINUTES' if f.name == 'time_budget' else None, **kw)
        else:
            p.add_argument(flag, type=base, choices=CHOICES.get(f.name), **kw)
    add_fsr_arguments(p)
    return p


def main(argv=None, clock_start: float = CLOCK_START) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    model_args = fsr_model_args(args)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in model_args}
    overrides['model_args'] = model_args  # only the flags given: train_summary.json records what built the model
    command = 'python tools/train.py ' + ' '.join(shlex.quote(a) for a in argv)
    try:
        cfg = TrainConfig(**overrides)
        with interruptible():  # SIGINT or SIGTERM: the last complete epoch stays in last.pt
            train(cfg, command=command, clock_start=clock_start)
    except (DatasetError, CheckpointError, WeightsError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: the last complete epoch is in OUT/last.pt (use --resume)', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
