#!/usr/bin/env python3
"""Analyses of an fsr_hub model beyond the accuracy tables: one command each, a deadline each, JSON (and PNG) out.

commands:
  feature-swap  Table 5a: accuracy under attack when the final feature f~ is replaced by f+, f-, f~- (or kept)
  knn           Table 5b: weighted k-NN accuracy (k = 5, 20; exp(cos / gamma)) of f+, f-, f~-, f~ of PGD-20 examples
  gradcam       Fig. 1: Grad-CAM of f_nat (natural model) and of f+, f-, f~- of adversarial examples, one PNG grid
  eps-curve     PGD-20 accuracy for eps in {0, 1, 2, 4, 6, 8, 10, 12, 16}/255, JSON and PNG
  plot-eps      one plot of the eps curves of one or several models (FSR vs vanilla twin) from their JSON files
  blackbox      Table 3: TI-FGSM and DI-FGSM crafted on a source model, and NAttack (1,000 images, 40,000 queries),
                through the verify suite (the same numbers as tools/verify.py --blackbox)
  ib-split      robust / non-robust feature units by Information Bottleneck (NeurIPS 2021) at a feature stage:
                the tail's accuracy on each part, the robust fraction, FSR's mask on each part, inversions (PNG)
  ib-attack     the NRF, NRF2, RF, RF2 feature attacks and CW-L2 (L2, minimum distortion): success rate and L2
  attach        put analysis JSON files into a results.json's `analysis` section and their PNGs beside it (a
                release folder: the model card shows each complete analysis of its weights with its figure)

MODEL:WEIGHTS (--natural, --source) is a safetensors file or cifar_resnet18:pyautoattack, pyautoattack's naturally
trained CIFAR-10 ResNet-18 (the default f_nat of gradcam); --model cifar_resnet18 --weights pyautoattack analyses
that model itself (e.g. the non-robust reference of ib-split and ib-attack).

examples:
  python tools/analyze.py eps-curve --model fsr_resnet18 --weights w.safetensors --data /data --n 1000 \\
      --out a/eps_curve.json
  python tools/analyze.py knn --model fsr_resnet18 --weights w.safetensors --data /data --n 1000 \\
      --deadline-minutes 20 --out a/knn.json
  python tools/analyze.py gradcam --model fsr_resnet18 --weights w.safetensors --sample --n 6 --out a/gradcam.json
  python tools/analyze.py blackbox --model fsr_resnet18 --weights w.safetensors --data /data \\
      --source cifar_resnet18:pyautoattack --out a/blackbox.json
  python tools/analyze.py ib-split --model fsr_resnet18 --weights w.safetensors --data /data --n 1000 \\
      --deadline-minutes 30 --out a/ib_split.json
  python tools/analyze.py ib-attack --model fsr_resnet18 --weights w.safetensors --data /data --n 100 \\
      --out a/ib_attack.json
  python tools/analyze.py attach model_cards/fsr_resnet18.at_cifar10/results.json a/*.json
  python tools/make_card.py --folder model_cards/fsr_resnet18.at_cifar10      # re-render the card
"""
import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from fsr_hub import analysis as A
from fsr_hub.blackbox import BLACKBOX_ATTACKS, NATTACK, NATTACK_N
from fsr_hub.checkpoint import write_json
from fsr_hub.cli import comma_list, number
from fsr_hub.data import DATASETS, DatasetError, images_to_float, load_dataset
from fsr_hub.evaluate import parse_attacks
from fsr_hub.fsr import FSR_OUTPUTS
from fsr_hub.sample import SampleError, load_sample
from fsr_hub.sources import (
    NAMED_WEIGHTS, PYAUTOATTACK, PYAUTOATTACK_SPEC, describe_source, load_model, load_model_spec,
)
from fsr_hub.weights import WeightsError


def _common(p: argparse.ArgumentParser, data: bool = True, figure: Optional[str] = None) -> None:
    p.add_argument('--model', required=True, help='timm model name, e.g. fsr_resnet18')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--weights', help=f'safetensors weight file, or named weights: {", ".join(NAMED_WEIGHTS)} '
                                       f'(with --model {NAMED_WEIGHTS[PYAUTOATTACK][0]})')
    src.add_argument('--random-init', action='store_true', help='random weights (tests and dry runs only)')
    p.add_argument('--tag', default=None, help='release tag of the weights, e.g. at_cifar10 (recorded)')
    if data:
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument('--data', help='dataset root (CIFAR-10: DIR/cifar-10-batches-py)')
        where.add_argument('--sample', action='store_true', help="the package's 200-image CIFAR-10 test sample")
        p.add_argument('--dataset', default='cifar10', choices=sorted(DATASETS))
        p.add_argument('--n', type=int, default=None, help='first N test images (default: all)')
    p.add_argument('--eps', type=number, default=8 / 255, help='L-inf radius (default 8/255)')
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--deadline-minutes', type=float, default=None,
                   help='stop starting new work units when the next would pass this budget; '
                        'the JSON says complete: false')
    p.add_argument('--out', required=True, help='JSON file to write')
    if figure:
        p.add_argument('--png', default=None, help=f'figure to write (default: {figure} beside --out)')
    p.add_argument('--no-progress', action='store_true')


def _ib_common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--stage', default=None, help='feature_info stage to cut at (default: the FSR position, else the '
                                                 'last stage)')
    p.add_argument('--beta', type=number, default=A.IB_BETA, help=f'weight of the KL term (default {A.IB_BETA})')
    p.set_defaults(batch_size=100)  # the split depends on the batch: the official batch size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')

    s = sub.add_parser('feature-swap', help='Table 5a: robustness with f~ replaced by f+, f-, f~-')
    _common(s, figure=A.PNG_NAMES['feature_swap'])
    s.add_argument('--attacks', default=','.join(A.TABLE5A_ATTACKS), help='verify attack names (default: Table 5a)')
    s.add_argument('--features', type=comma_list(str), default=list(FSR_OUTPUTS), help=f'from {",".join(FSR_OUTPUTS)}')
    s.add_argument('--position', default=None, help='FSR position (default: the last)')

    s = sub.add_parser('knn', help='Table 5b: weighted k-NN accuracy of each FSR feature')
    _common(s, figure=A.PNG_NAMES['knn'])
    s.add_argument('--n-train', type=int, default=None, help='first N training images as neighbours (default: all)')
    s.add_argument('--ks', type=comma_list(int), default=list(A.KNN_KS))
    s.add_argument('--gamma', type=float, default=A.KNN_GAMMA,
                   help=f'temperature (default {A.KNN_GAMMA}, Wu et al. 2018)')
    s.add_argument('--pool', choices=('avg', 'flatten'), default='avg')
    s.add_argument('--features', type=comma_list(str), default=list(FSR_OUTPUTS))
    s.add_argument('--position', default=None)

    s = sub.add_parser('gradcam', help='Fig. 1: Grad-CAM of f_nat, f+, f-, f~- as one PNG grid')
    _common(s, figure=A.PNG_NAMES['gradcam'])
    s.add_argument('--natural', default=PYAUTOATTACK_SPEC, metavar='MODEL:WEIGHTS',
                   help=f'naturally trained model for f_nat (default {PYAUTOATTACK_SPEC}; "none": no f_nat column)')
    s.add_argument('--scale', type=int, default=4, help='image upscaling in the figure')
    s.add_argument('--position', default=None)

    s = sub.add_parser('eps-curve', help='PGD-20 accuracy against eps, JSON and PNG')
    _common(s, figure=A.PNG_NAMES['eps_curve'])
    s.add_argument('--eps-list', type=comma_list(float), default=list(A.EPS_CURVE_255),
                   help='eps values in 1/255 units')
    s.add_argument('--compare', nargs='*', default=[], metavar='JSON', help='other models\' eps-curve JSON on the plot')

    s = sub.add_parser('plot-eps', help='plot eps curves of one or several models from their JSON files')
    s.add_argument('files', nargs='+', help='eps-curve JSON files or results.json files with an analysis section')
    s.add_argument('--png', required=True)

    s = sub.add_parser('blackbox', help='Table 3: TI-FGSM, DI-FGSM (from a source model) and NAttack')
    _common(s)
    s.add_argument('--attacks', type=comma_list(str), default=list(BLACKBOX_ATTACKS),
                   help=f'from {",".join(BLACKBOX_ATTACKS)}')
    s.add_argument('--source', default=None, metavar='MODEL:WEIGHTS',
                   help=f'source model of TI-FGSM / DI-FGSM, e.g. {PYAUTOATTACK_SPEC}')
    s.add_argument('--nattack-n', type=int, default=NATTACK_N, help=f'NAttack images (default {NATTACK_N}, the paper)')
    s.add_argument('--max-queries', type=int, default=NATTACK['max_queries'], help='NAttack queries per image')

    s = sub.add_parser('ib-split', help='robust / non-robust feature units by Information Bottleneck, JSON and PNG')
    _common(s, figure=A.PNG_NAMES['ib_split'])
    _ib_common(s)
    s.add_argument('--steps', type=int, default=A.IB_STEPS, help=f'Adam steps of the split (default {A.IB_STEPS})')
    s.add_argument('--lr', type=number, default=A.IB_LR, help=f'Adam learning rate of the split (default {A.IB_LR})')
    s.add_argument('--inversions', type=int, default=4, help='images whose Z, Z_r, Z_nr are inverted (0: none)')
    s.add_argument('--inversion-steps', type=int, default=A.IB_INVERSION['steps'],
                   help=f"Adam steps of the inversions (default {A.IB_INVERSION['steps']})")

    s = sub.add_parser('ib-attack', help='NRF, NRF2, RF, RF2 and CW-L2 attacks (L2): success rate and distortion')
    _common(s, figure=A.PNG_NAMES['ib_attack'])
    _ib_common(s)
    s.add_argument('--attacks', type=comma_list(str), default=list(A.IB_ATTACKS), help=f'from {",".join(A.IB_ATTACKS)}')
    s.add_argument('--steps', type=int, default=A.ATTACK_STEPS, help=f'Adam steps (default {A.ATTACK_STEPS})')
    s.add_argument('--lr', type=number, default=A.ATTACK_LR, help=f'Adam learning rate (default {A.ATTACK_LR})')
    s.add_argument('--c', type=number, default=A.ATTACK_C, help=f'weight of the margin term (default {A.ATTACK_C})')
    s.add_argument('--split-steps', type=int, default=A.IB_STEPS, help=f'steps of the split (default {A.IB_STEPS})')
    s.add_argument('--split-lr', type=number, default=A.IB_LR, help=f'learning rate of the split (default {A.IB_LR})')

    s = sub.add_parser('attach', help="put analysis JSON files into a results.json's `analysis` section")
    s.add_argument('results', help='results.json of tools/verify.py (rewritten in place unless --out)')
    s.add_argument('files', nargs='+', help='analysis JSON files of the same weights')
    s.add_argument('--out', default=None)
    return p


def _load_model(name: str, weights: Optional[str], num_classes: int,
                tag: Optional[str] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    if weights in NAMED_WEIGHTS:
        model, info = load_model_spec(f'{name}:{weights}', num_classes, '--model/--weights')
    else:
        model, info = load_model(name, weights, num_classes)
    return model, {**info, 'tag': tag, 'random_init': not weights}


def _test_data(args) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    if args.n is not None and args.n <= 0:
        raise ValueError('--n must be positive.')
    if args.sample:
        x, y = load_sample(args.n)
        return x, y, {'dataset': 'cifar10', 'split': 'test', 'source': 'fsr_hub test sample', 'n': len(y)}
    images, labels = load_dataset(args.dataset, args.data, train=False)
    if args.n is not None:
        images, labels = images[:args.n], labels[:args.n]
    data = {'dataset': args.dataset, 'split': 'test', 'subset': 'first n', 'n': len(labels)}
    return images_to_float(images), labels, data


def _png(args, default: str) -> Path:
    return Path(args.png) if args.png else Path(args.out).with_name(default)


class _Inputs(NamedTuple):
    """What every analysis command works on."""
    model: torch.nn.Module
    info: Dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    data: Dict[str, Any]  # the report's data entry (a command may add to it)
    deadline: A.Deadline
    num_classes: int


Section = Tuple[Dict[str, Any], Optional[Path]]


def _batching(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(batch_size=args.batch_size, device=args.device)


def _feature_swap(args: argparse.Namespace, i: _Inputs) -> Section:
    section = A.feature_swap(i.model, i.x, i.y, attacks=parse_attacks(args.attacks), outputs=args.features,
                             eps=args.eps, seed=args.seed, num_classes=i.num_classes, position=args.position,
                             deadline=i.deadline, progress=not args.no_progress, **_batching(args))
    png = _png(args, A.PNG_NAMES['feature_swap'])
    return section, A.plot_feature_swap(section, png) if section['features'] else None


def _knn(args: argparse.Namespace, i: _Inputs) -> Section:
    if args.sample:
        raise ValueError('knn needs the training images: pass --data DIR, not --sample.')
    images, labels = load_dataset(args.dataset, args.data, train=True)
    if args.n_train is not None:
        images, labels = images[:args.n_train], labels[:args.n_train]
    i.data['n_train'] = len(labels)
    section = A.knn_analysis(i.model, images_to_float(images), labels, i.x, i.y, ks=args.ks, gamma=args.gamma,
                             eps=args.eps, outputs=args.features, position=args.position, pool=args.pool,
                             num_classes=i.num_classes, deadline=i.deadline, **_batching(args))
    return section, A.plot_knn(section, _png(args, A.PNG_NAMES['knn'])) if section['features'] else None


def _gradcam(args: argparse.Namespace, i: _Inputs) -> Section:
    natural = None
    if args.natural.lower() != 'none':
        natural, i.data['natural_model'] = load_model_spec(args.natural, i.num_classes, '--natural')
    png = _png(args, A.PNG_NAMES['gradcam'])
    section = A.gradcam_analysis(i.model, i.x, i.y, natural_model=natural, eps=args.eps, position=args.position,
                                 device=args.device, png=png, scale=args.scale, deadline=i.deadline)
    return section, png if section['n'] else None


def _eps_curve(args: argparse.Namespace, i: _Inputs) -> Section:
    section = A.eps_curve(i.model, i.x, i.y, eps_255=args.eps_list, seed=args.seed, num_classes=i.num_classes,
                          deadline=i.deadline, progress=not args.no_progress, **_batching(args))
    if not section['eps_255']:
        return section, None
    curves = [(A.model_label(i.info), section['eps_255'], section['accuracy'])]
    curves += [A.read_eps_curve(f) for f in args.compare]
    test_images = i.data.get('source') or f'{i.data["dataset"]} test'
    return section, A.plot_eps_curves(curves, _png(args, A.PNG_NAMES['eps_curve']),
                                      title=f'Robustness vs. perturbation size (PGD-20, {test_images}, n = {len(i.y)})')


def _blackbox(args: argparse.Namespace, i: _Inputs) -> Section:
    source, source_name = None, None
    if any(a in ('ti_fgsm', 'di_fgsm') for a in args.attacks):
        if not args.source:
            raise ValueError('TI-FGSM / DI-FGSM need --source MODEL:WEIGHTS (the paper: a naturally trained model; '
                             f'e.g. {PYAUTOATTACK_SPEC}).')
        source, src = load_model_spec(args.source, i.num_classes, '--source')
        source_name = describe_source(src)
        i.data['source_model'] = src
    if args.nattack_n <= 0 or args.max_queries <= 0:
        raise ValueError('--nattack-n and --max-queries must be positive.')
    overrides = {'max_queries': args.max_queries} if args.max_queries != NATTACK['max_queries'] else {}
    section = A.blackbox_analysis(i.model, i.x, i.y, attacks=args.attacks, source=source, source_name=source_name,
                                  eps=args.eps, nattack_n=args.nattack_n, seed=args.seed,
                                  num_classes=i.num_classes, deadline=i.deadline, progress=not args.no_progress,
                                  **overrides, **_batching(args))
    return section, None


def _ib_split(args: argparse.Namespace, i: _Inputs) -> Section:
    png = _png(args, A.PNG_NAMES['ib_split'])
    section = A.ib_split(i.model, i.x, i.y, stage=args.stage, steps=args.steps, lr=args.lr, beta=args.beta,
                         seed=args.seed, inversions=args.inversions, inversion_steps=args.inversion_steps,
                         png=png, deadline=i.deadline, progress=not args.no_progress, **_batching(args))
    return section, png if section['n'] else None


def _ib_attack(args: argparse.Namespace, i: _Inputs) -> Section:
    A.require('matplotlib')  # the figure is drawn after the attacks: fail before them
    section = A.ib_attack(i.model, i.x, i.y, attacks=args.attacks, stage=args.stage, steps=args.steps, lr=args.lr,
                          c=args.c, split_steps=args.split_steps, split_lr=args.split_lr, beta=args.beta,
                          seed=args.seed, deadline=i.deadline, progress=not args.no_progress, **_batching(args))
    return section, A.plot_ib_attack(section, _png(args, A.PNG_NAMES['ib_attack'])) if section['n'] else None


#: command -> the analysis it runs on the model and test images
ANALYSES: Dict[str, Callable[[argparse.Namespace, _Inputs], Section]] = {
    'feature-swap': _feature_swap, 'knn': _knn, 'gradcam': _gradcam, 'eps-curve': _eps_curve,
    'blackbox': _blackbox, 'ib-split': _ib_split, 'ib-attack': _ib_attack,
}


def _attach(args: argparse.Namespace) -> str:
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{args.results}: not a readable results.json of tools/verify.py ({e}).') from None
    merged = A.attach_sections(results, args.files)
    out = Path(args.out or args.results)
    copied, missing = A.copy_figures(args.files, out.parent)
    write_json(out, merged)
    lines = [f'analysis {", ".join(sorted(k for k in merged["analysis"] if k != "schema"))} -> {out}']
    lines += [f'figure -> {p}' for p in copied]
    lines += [f'note: {m}' for m in missing]
    lines += [f'note: {k} is partial (complete: false): the card does not show it' for k, v in
              merged['analysis'].items() if isinstance(v, dict) and v.get('complete') is False]
    return '\n'.join(lines)


def run(args: argparse.Namespace, command: str) -> str:
    if args.command == 'plot-eps':
        path = A.plot_eps_curves([A.read_eps_curve(f) for f in args.files], args.png)
        return f'-> {path}'
    if args.command == 'attach':
        return _attach(args)
    if args.batch_size <= 0:
        raise ValueError('--batch-size must be positive.')
    num_classes = DATASETS[args.dataset][0]
    model, info = _load_model(args.model, args.weights, num_classes, args.tag)
    x, y, data = _test_data(args)
    deadline = A.Deadline(args.deadline_minutes)
    section, png = ANALYSES[args.command](args, _Inputs(model, info, x, y, data, deadline, num_classes))
    name = args.command.replace('-', '_')
    doc = {**A.section_meta(info, data, args.device, deadline, command), 'analysis': name, **section,
           'png': png.name if png else None}
    write_json(args.out, doc)
    state = '' if doc['complete'] else ' (stopped at the deadline: partial)'
    return f'{name}{state} -> {args.out}' + (f', {png}' if png else '')


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    words = argv if argv is not None else sys.argv[1:]
    command = 'python tools/analyze.py ' + ' '.join(shlex.quote(a) for a in words)
    try:
        print(run(args, command))
    except (A.AnalysisError, ValueError, ImportError, DatasetError, SampleError, WeightsError, OSError,
            RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
