#!/usr/bin/env python3
"""Robustness verification of an fsr_hub model: the paper's white-box suite, AutoAttack (standard and rand),
transfer and black-box attacks and gradient-masking checks, written as an ``fsr-hub/verify/v1`` JSON report.

    python tools/verify.py --model fsr_resnet18 --weights best.safetensors --data /tmp/data --out results.json
    python tools/verify.py ... --preset quick --deadline-minutes 3          # fits a lease; partial if time runs out
    python tools/verify.py ... --preset full --resume results.json --out results.json   # continue a partial run
    python tools/verify.py --model fsr_resnet18 --pretrained --tag at_cifar10 --data /tmp/data --attacks clean,pgd20
    python tools/verify.py ... --transfer-from cifar_resnet18:runs/vanilla/final.safetensors
    python tools/verify.py --model resnet50 --weights runs/r50_fsr/final.safetensors --train-summary \\
        runs/r50_fsr/train_summary.json --data /tmp/data      # any timm CNN + FSR: model_args from the summary
    python tools/verify.py ... --preset full --blackbox --transfer-from cifar_resnet18:pyautoattack   # + Table 3
    python tools/verify.py --model fsr_resnet18 --weights model_fp16.safetensors --data /tmp/data --prune-summary \\
        runs/mad90/prune_summary.json --cast-from runs/mad90/pruned.safetensors   # a pruned model (tools/prune.py)

Presets (stages run cheapest first): quick = clean, FGSM, PGD-20, C&W, PGD-100 and Ensemble on all images, then
AutoAttack standard on the first 1,000; full = those on all images, the masking checks (first 1,000), AutoAttack
rand (first 1,000), AutoAttack standard on all images, and the transfer attack when --transfer-from is given;
cpu = clean on all images, FGSM, PGD-20 and C&W on the first 2,000, PGD-100 (and so the Ensemble) and AutoAttack
standard on the first 1,000, and the masking checks (a CPU's hours; continue it with --resume).
lease = quick with C&W and PGD-100 (and so the Ensemble) on the first 1,000: what a rented GPU's lease has time for
(clean, FGSM and PGD-20 on all images; from the first H200 lease's stage times, about 38 s against quick's 163 s).
--blackbox adds the paper's Table 3 black-box attacks (opt-in, also nameable in --attacks): TI-FGSM and DI-FGSM
crafted on the --transfer-from source, and NAttack (at most 40,000 queries per image) on the first --nattack-n
images (1,000, the paper's protocol); NAttack saves its progress like AutoAttack. The source
cifar_resnet18:pyautoattack is pyautoattack's naturally trained CIFAR-10 ResNet-18 (examples/model_test.pt).
With --out the report is rewritten (atomically) after every stage, so a run stopped by the deadline, a signal or
a crash leaves a valid partial report whose "not_run" says what did not run and why; AutoAttack's progress is
saved in it batch by batch, the masking checks' sweep by sweep, and --resume continues from there. A resumed
AutoAttack may take another --batch-size (e.g. 25 on a slow CPU, where a Square batch of 100 takes hours): the points
its current sub-attack has not attacked yet go on in the new batches, recorded under "rebatched". Attacks run in
strict float32 (TF32 off).
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from fsr_hub.attack_registry import NATTACK, NATTACK_N, SOURCE_ATTACKS, TRANSFER
from fsr_hub.checkpoint import write_json
from fsr_hub.cli import add_fsr_arguments, agreed_model_args, fsr_model_args, interruptible, number
from fsr_hub.data import DATASETS, INPUT_SIZE, DatasetError, images_to_float, load_dataset
from fsr_hub.evaluate import (
    ATTACKS, PRESETS, build_report, evaluate, model_info, parse_attacks, preset, training_section,
)
from fsr_hub.models import create
from fsr_hub.catalog import release_name
from fsr_hub.pruning.record import pruning_section
from fsr_hub.schemas import VERIFY_SCHEMA, report_runs
from fsr_hub.sources import PYAUTOATTACK_SPEC, describe_source, load_model_spec
from fsr_hub.weights import WeightsError, cast_dtype, load_weights, resolve_pretrained_file, sha256_file


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
    p.add_argument('--preset', choices=sorted(PRESETS), default=None,
                   help='quick: the white-box suite on all images, then AutoAttack on the first 1,000; '
                        'full (the default): everything, masking checks included; cpu: clean on all images, the '
                        'rest on the first 2,000 / 1,000; lease: quick with C&W and PGD-100 on the first 1,000 (see '
                        'above)')
    p.add_argument('--attacks', default=None,
                   help=f'instead of a preset: comma list from {",".join(ATTACKS)} or "all" (all images each; '
                        'nattack: the first --nattack-n); the masking checks still run unless --no-masking-checks')
    p.add_argument('--deadline-minutes', type=number, default=None,
                   help='wall-clock limit: stages that do not fit are skipped and listed under not_run')
    p.add_argument('--resume', default=None, metavar='REPORT',
                   help='continue this partial report of the same weights and data (it may be --out itself)')
    p.add_argument('--eps', type=number, default=8 / 255, help='L-inf radius (default 8/255)')
    p.add_argument('--transfer-from', default=None, metavar='MODEL:WEIGHTS',
                   help='source model of the transfer attacks (transfer, ti_fgsm, di_fgsm): a safetensors file or '
                        f'{PYAUTOATTACK_SPEC}; adds "transfer" to the attacks unless --attacks names ti_fgsm or '
                        'di_fgsm')
    p.add_argument('--transfer-train-summary', default=None, metavar='SUMMARY',
                   help="train_summary.json of the transfer source's weights: its model_args build the source")
    p.add_argument('--blackbox', action='store_true',
                   help='add TI-FGSM and DI-FGSM (need --transfer-from) and NAttack to the preset')
    p.add_argument('--nattack-n', type=int, default=NATTACK_N,
                   help=f'NAttack runs on the first N images (default {NATTACK_N}, the paper\'s protocol)')
    p.add_argument('--no-masking-checks', action='store_true', help='skip the gradient-masking checks')
    p.add_argument('--masking-n', type=int, default=1000, help='images used by the eps / unbounded sweeps')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--channels-last', action='store_true',
                   help='run the models in channels_last memory (float32 still; faster on some CPUs, see '
                        'tools/benchmark_eval.py)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out', default=None, help='write the JSON report here, after every stage (default: stdout '
                                               'at the end)')
    p.add_argument('--train-summary', default=None,
                   help="the trainer's train_summary.json of these weights: recipe, command and timing go into the "
                        "report, and its model_args build the model (--fsr-* flags, if given, must agree)")
    p.add_argument('--prune-summary', default=None,
                   help="instead of --train-summary for a pruned model: tools/prune.py's prune_summary.json of "
                        "these weights; the run's record and the sparsity of the weights go into the report")
    p.add_argument('--cast-from', default=None, metavar='TRAINED',
                   help="with --train-summary (or --prune-summary): the trainer's file (e.g. its fp32 "
                        "best.safetensors, or pruned.safetensors) that --weights is an exact cast of (e.g. the fp16 "
                        "file to release); checked tensor by tensor")
    add_fsr_arguments(p)
    p.add_argument('--no-progress', action='store_true')
    return p


def _read_previous(path: str, sha256: str, data: Dict[str, Any], eps: float) -> Optional[Dict[str, Any]]:
    p = Path(path)
    if not p.is_file():  # nothing to continue yet: a first run may name its own --out
        print(f'note: --resume {path}: no report there yet, so this is a fresh run.', file=sys.stderr)
        return None
    try:
        prev = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'--resume {path}: not a readable JSON report ({e}).') from e
    if not isinstance(prev, dict) or prev.get('schema') != VERIFY_SCHEMA:
        raise ValueError(f'--resume {path}: not an {VERIFY_SCHEMA} report.')
    if (prev.get('model') or {}).get('sha256') != sha256:
        raise ValueError(f'--resume {path}: the report is of other weights (sha256 '
                         f'{(prev.get("model") or {}).get("sha256")}, these are {sha256}).')
    old = prev.get('data') or {}
    same = all(old.get(k) == data[k] for k in ('dataset', 'split', 'n', 'seed')) and prev.get('eps') == eps
    if not same:
        raise ValueError(f'--resume {path}: the report used other data or eps ({old}, eps {prev.get("eps")}).')
    return prev


def _read_summary(path: str, model: str, kind: str = 'train') -> Dict[str, Any]:
    """A trainer's train_summary.json (or ``kind`` 'prune': a prune_summary.json), which must be of a ``model``
    run (when it names its model)."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: not a readable {kind} summary ({e}).') from e
    if not isinstance(summary, dict):
        raise ValueError(f'{path}: not a {kind} summary (a JSON object).')
    trained = (summary.get('config') or {}).get('model')
    if trained is not None and trained != model:
        raise ValueError(f'{path} is the summary of a {trained} run, not {model}.')
    return summary


def _sha256_of(path: str) -> str:
    if not Path(path).is_file():
        raise WeightsError(f'Weight file not found: {path}')
    return sha256_file(path)


def _recorded_args(summary: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The model_args a train summary records (None: no summary; {} for a summary from before model_args)."""
    if summary is None:
        return None
    return (summary.get('config') or {}).get('model_args') or {}


def _check_args(args: argparse.Namespace) -> None:
    """One-line errors for flags that do not go together, before anything is loaded."""
    if args.preset and args.attacks:
        raise ValueError('give --preset or --attacks, not both.')
    if args.batch_size <= 0 or (args.n is not None and args.n <= 0) or args.masking_n <= 0 or args.nattack_n <= 0:
        raise ValueError('--batch-size, --n, --masking-n and --nattack-n must be positive.')
    if args.blackbox and args.attacks:
        raise ValueError('--blackbox adds to a preset: with --attacks, name ti_fgsm, di_fgsm, nattack there.')
    if args.blackbox and not args.transfer_from:
        raise ValueError('--blackbox needs --transfer-from MODEL:WEIGHTS, the source of TI-FGSM and DI-FGSM '
                         f'(e.g. {PYAUTOATTACK_SPEC}).')
    if args.deadline_minutes is not None and args.deadline_minutes <= 0:
        raise ValueError('--deadline-minutes must be positive.')
    if not 0 < args.eps <= 1:
        raise ValueError(f'--eps must lie in (0, 1] (pixels are in [0, 1]; e.g. 8/255), got {args.eps}.')
    if args.train_summary and args.prune_summary:
        raise ValueError('give --train-summary (a trained model) or --prune-summary (a pruned one), not both.')
    if args.transfer_train_summary and not args.transfer_from:
        raise ValueError('--transfer-train-summary describes the source of --transfer-from; give both.')


def _plan(args: argparse.Namespace) -> Tuple[str, List[str], Dict[str, int], bool]:
    """(preset name, attacks, {attack: first-n subset}, masking checks on?) that the flags ask for."""
    if args.attacks:
        attacks, subsets, masking = parse_attacks(args.attacks), {}, True
        preset_name = 'custom'
    else:
        preset_name = args.preset or 'full'
        attacks, subsets, masking = preset(preset_name, transfer=bool(args.transfer_from), blackbox=args.blackbox)
    subsets[NATTACK] = args.nattack_n
    return preset_name, list(attacks), subsets, masking and not args.no_masking_checks


def _transfer_source(args: argparse.Namespace, num_classes: int) -> Tuple[Optional[torch.nn.Module], Optional[str]]:
    """The source model of the transfer attacks and its description (None, None without --transfer-from)."""
    if not args.transfer_from:
        return None, None
    src_name, _, src_weights = args.transfer_from.partition(':')
    src_args: Dict[str, Any] = {}
    if args.transfer_train_summary:
        src_summary = _read_summary(args.transfer_train_summary, src_name)
        training_section(src_summary, _sha256_of(src_weights))  # the summary of exactly these weights
        src_args = agreed_model_args({}, _recorded_args(src_summary), args.transfer_train_summary)
    transfer_model, src = load_model_spec(args.transfer_from, num_classes, '--transfer-from', src_args)
    return transfer_model, describe_source(src, src_args)


def _test_set(args: argparse.Namespace) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """The test images (first --n), their labels and the report's ``data`` entry."""
    images, labels = load_dataset(args.dataset, args.data, train=False)
    total = len(labels)
    if args.n is not None and args.n > total:
        raise ValueError(f'--n {args.n}: the {args.dataset} test set has {total} images.')
    if args.n is not None:
        images, labels = images[:args.n], labels[:args.n]
    data = {'dataset': args.dataset, 'split': 'test', 'n': len(labels),
            'subset': 'all' if len(labels) == total else 'first n', 'seed': args.seed}
    return images, labels, data


def run(args: argparse.Namespace, command: str, t_start: float) -> Dict[str, Any]:
    _check_args(args)
    preset_name, attacks, subsets, masking = _plan(args)
    num_classes = DATASETS[args.dataset][0]
    summary_path = args.train_summary or args.prune_summary
    kind = 'prune' if args.prune_summary else 'train'
    summary = _read_summary(summary_path, args.model, kind) if summary_path else None
    model_args = agreed_model_args(fsr_model_args(args), _recorded_args(summary), str(summary_path))
    if args.pretrained:
        if model_args:
            raise ValueError(f'--pretrained loads a registered release, whose architecture fixes the model; '
                             f'model_args {model_args} go with --weights.')
        name = release_name(args.model, args.tag) if args.tag else args.model
        model = create(name, num_classes=num_classes, pretrained=True)
        weights = str(resolve_pretrained_file(model.pretrained_cfg))
    else:
        weights = args.weights
    sha256 = _sha256_of(weights)
    # checked before building (a summary of another run has other model_args) and before the (long) evaluation
    if args.cast_from and summary is None:
        raise ValueError('--cast-from names the trainer\'s file of --train-summary (or --prune-summary); give both.')
    cast = None
    if args.cast_from:
        cast = {'sha256': _sha256_of(args.cast_from), 'dtype': cast_dtype(weights, args.cast_from)}
    training = training_section(summary, sha256, cast) if args.train_summary else None
    if not args.pretrained:
        model = create(args.model, num_classes=num_classes, **model_args)
        load_weights(model, weights)
    pruning = None
    if args.prune_summary:
        pruning = pruning_section(summary, model, sha256, cast, INPUT_SIZE[args.dataset])
    transfer_model, transfer_source = _transfer_source(args, num_classes)
    if transfer_model is not None and not any(a in attacks for a in SOURCE_ATTACKS):
        attacks.append(TRANSFER)
    images, labels, data = _test_set(args)
    previous = _read_previous(args.resume, sha256, data, args.eps) if args.resume else None
    info = model_info(model, args.model, args.tag, weights, model_args=model_args)
    out = Path(args.out) if args.out else None

    def report_of(evaluation: Dict[str, Any]) -> Dict[str, Any]:
        # what a release's results.json adds to the report stays when it is continued (the same weights: sha256)
        report = {k: v for k, v in (previous or {}).items()
                  if k in ('cost', 'paper_reference', 'training', 'pruning', 'analysis', 'per_class_before')}
        report.update(build_report(info, data, evaluation, args.eps, args.batch_size, args.device, command,
                                   preset=preset_name, deadline_minutes=args.deadline_minutes))
        if previous is not None:  # the runs that built the report, oldest first, each with its hardware
            report['runs'] = report_runs(previous) + report_runs(report)
        if training is not None:
            report['training'] = training
        if pruning is not None:
            report['pruning'] = pruning
        return report

    def on_update(evaluation: Dict[str, Any]) -> None:
        if out is not None:
            write_json(out, report_of(evaluation), allow_nan=False)

    deadline = None
    if args.deadline_minutes is not None:
        deadline = args.deadline_minutes - (time.monotonic() - t_start) / 60
        if deadline <= 0:
            raise ValueError(f'the deadline of {args.deadline_minutes} min passed while loading the model and data.')
    evaluation = evaluate(
        model.eval(), images_to_float(images), labels, attacks=attacks, eps=args.eps, batch_size=args.batch_size,
        device=args.device, seed=args.seed, num_classes=num_classes, transfer_model=transfer_model,
        transfer_source=transfer_source, masking_checks=masking, masking_n=args.masking_n,
        progress=not args.no_progress, subsets=subsets, deadline_minutes=deadline, previous=previous,
        on_update=on_update, channels_last=args.channels_last)
    report = report_of(evaluation)
    if out is not None:
        write_json(out, report, allow_nan=False)
    return report


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)
    command = 'python tools/verify.py ' + ' '.join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        # SIGTERM (a timeout's kill) ends the run like Ctrl-C: the partial report names the interrupted stage
        with interruptible():
            report = run(args, command, t_start)
    except (DatasetError, WeightsError, ValueError, RuntimeError, OSError, ImportError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f'the partial report is in {args.out}' if args.out else 'no report written (no --out)'
        print(f'interrupted: {where}', file=sys.stderr)
        return 130
    if args.out:
        r = report['results']
        print(' '.join(f'{k}={v["accuracy"]:.2f}' for k, v in r.items()), f'-> {args.out}')
        for name, why in report['not_run'].items():
            print(f'not run: {name}: {why}')
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
