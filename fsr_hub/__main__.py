"""``python -m fsr_hub`` / ``fsr-hub``: evaluate a released model on the CIFAR-10 sample shipped with the package.

With no arguments it loads the default release (``fsr_resnet18.at_cifar10``) and reports clean and PGD-20
accuracy on the first 50 sample images (PGD-20 on ResNet-18 costs about 1 s per image on 2 CPU cores; pass
``--n 200`` for the whole sample), next to the model card's and the paper's numbers. While no weights have been
released for the chosen tag it says so, prints the cost report instead, and exits 0.

    python -m fsr_hub [--model fsr_resnet18.at_cifar10] [--weights FILE | --release FOLDER]
                      [--attack pgd20|fgsm|clean] [--n 50] [--batch-size 50] [--device cpu]
"""
import argparse
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import timm
import torch

from . import paper
from .evaluate import evaluate
from .models import ALL_MODELS, VANILLA_TWINS
from .releases import hub_id
from .release import RESULTS_NAME, ReleaseError, validate_release
from .sample import SampleError, load_sample
from .weights import WeightsError, load_weights, registry_sha256

__all__ = ['main', 'DEFAULT_MODEL', 'DEFAULT_N', 'EPS']

DEFAULT_MODEL = 'fsr_resnet18.at_cifar10'
DEFAULT_N = 50
EPS = 8 / 255
ATTACKS = ('pgd20', 'fgsm', 'clean')


def _parse_name(name: str) -> Tuple[str, str]:
    arch, _, tag = name.partition('.')
    if arch not in ALL_MODELS:
        raise ValueError(f'--model {name}: unknown architecture {arch!r}; choose from {", ".join(ALL_MODELS)}.')
    if not tag:
        tag = timm.models.get_pretrained_cfg(arch).tag or ''
    return arch, tag


def _card_from_hub(name: str) -> Optional[Dict[str, Any]]:
    """results.json of a released repo (from the HF cache or the hub); None when unavailable."""
    import json

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        with open(hf_hub_download(hub_id(name), RESULTS_NAME)) as f:
            return json.load(f)
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError, ValueError):
        return None


def _print_cost(arch: str) -> None:
    fsr_arch = arch if arch in VANILLA_TWINS else next(k for k, v in VANILLA_TWINS.items() if v == arch)
    try:
        from .cost import cost_table, format_markdown
    except ImportError as e:
        print(f'(cost report unavailable: {e})')
        return
    print(f'\nCost of {fsr_arch} vs its vanilla twin (no weights needed):\n')
    print(format_markdown(cost_table([fsr_arch])))


def _table(measured: Mapping[str, float], card: Optional[Mapping[str, Any]], ref: Optional[paper.PaperReference],
           n: int, device: str) -> str:
    card_n = (card or {}).get('data', {}).get('n')
    head = ['metric', f'measured here ({n} images, {device})',
            f'model card ({card_n} images)' if card else 'model card', f'paper ({ref.setting})' if ref else 'paper']
    rows: List[List[str]] = []
    for key, value in measured.items():
        c = ((card or {}).get('results') or {}).get(key)
        rows.append([paper.METRIC_NAMES.get(key, key), f'{value:.2f}',
                     f"{c['accuracy']:.2f}" if c else ('not measured' if card else 'no card'),
                     f'{ref.metrics[key]:.2f} ({ref.sources[key]})' if ref and key in ref.metrics else '-'])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    fmt = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa: E731
    return '\n'.join([fmt(head), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [fmt(r) for r in rows])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m fsr_hub`` and the ``fsr-hub`` console script; returns the exit status."""
    p = argparse.ArgumentParser(prog='fsr-hub', description=__doc__.split('\n\n')[1].replace('\n', ' '))
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'<architecture>.<tag> (default {DEFAULT_MODEL})')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--weights', help='a local safetensors file for --model (no card numbers)')
    src.add_argument('--release', help='a local release folder (model_cards/<arch>.<tag>); validated first')
    p.add_argument('--attack', default='pgd20', choices=ATTACKS, help='attack besides clean (default pgd20)')
    p.add_argument('--n', type=int, default=DEFAULT_N, help=f'sample images, 1..200 (default {DEFAULT_N})')
    p.add_argument('--batch-size', type=int, default=50)
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f'fsr-hub: error: {msg}', file=sys.stderr)
        return 2

    if args.batch_size < 1:
        return fail(f'--batch-size must be positive, got {args.batch_size}')
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        return fail(f'--device {args.device}: {e}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        return fail(f'--device {args.device} requested but CUDA is not available')
    try:
        x, y = load_sample(args.n)
    except SampleError as e:
        return fail(f'--n: {e}')

    card: Optional[Dict[str, Any]] = None
    try:
        if args.release:
            info = validate_release(args.release)
            arch, tag, model, card = info.architecture, info.tag, info.model, info.results
            source = f'release folder {info.folder} (sha256 {info.sha256[:12]})'
        else:
            arch, tag = _parse_name(args.model)
            name = f'{arch}.{tag}'
            if args.weights:
                model = timm.create_model(arch)
                load_weights(model, args.weights)
                source = f'local file {args.weights} (unchecked: no sha256 pin)'
            elif registry_sha256(arch, tag) is None:
                print(f'No weights have been released for {name} yet: nothing to evaluate. Evaluate a local '
                      f'checkpoint with --weights FILE or --release FOLDER.')
                _print_cost(arch)
                return 0
            else:
                model = timm.create_model(name, pretrained=True)
                card = _card_from_hub(name)
                source = f'{hub_id(name)} (sha256 {registry_sha256(arch, tag)[:12]})'
    except (ReleaseError, WeightsError, ValueError) as e:
        return fail(str(e))

    name = f'{arch}.{tag}'
    print(f'{name}: {source}')
    t0 = time.perf_counter()
    attacks = ('clean',) if args.attack == 'clean' else ('clean', args.attack)  # the verify suite's attacks
    report = evaluate(model, x, y, attacks=attacks, eps=EPS, batch_size=args.batch_size, device=device,
                      masking_checks=False, progress=not args.no_progress)
    measured = {k: report['results'][k]['accuracy'] for k in attacks}
    seconds = time.perf_counter() - t0
    print(f'\n{_table(measured, card, paper.paper_reference(arch, tag), len(x), str(device))}')
    print(f'\nLinf eps 8/255; PGD-20: step eps/10, no random start. {len(x)} images of the shipped CIFAR-10 '
          f'test sample (standard error up to {50 / len(x) ** 0.5:.1f} points); {seconds:.1f} s.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
