"""``python -m fsr_hub`` / ``fsr-hub``: evaluate a released model on the CIFAR-10 sample shipped with the package.

With no arguments it loads the default release (:func:`fsr_hub.catalog.default_release`: the best released model)
from its release folder in a source checkout, or else from the Hugging Face Hub, and reports clean and PGD-20
accuracy on the first 50 of the 200 sample images (``--n 200`` for the whole sample), next to the model card's and
the paper's numbers. A planned release whose weights are not out yet says so, prints the cost report instead, and
exits 0; a name that is neither released nor planned is an error.

    python -m fsr_hub [--model ARCH.TAG] [--weights FILE | --release FOLDER]
                      [--attack pgd20|fgsm|clean] [--n 50] [--batch-size 50] [--device cpu]
"""
# Only the standard library (and the attack registry, itself pure data) at module level: the evaluation stack
# (attacks, evaluation, release, sample, fvcore) loads once the arguments are parsed. torch and timm are loaded
# before this module by ``import fsr_hub`` itself, which registers the models with timm and which
# ``python -m fsr_hub`` always runs first.
import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .attack_registry import CLEAN, FGSM, PGD20

__all__ = ['main', 'DEFAULT_N', 'EPS']

DEFAULT_N = 50
EPS = 8 / 255
#: the attacks a CPU check of the sample affords
ATTACKS = (PGD20, FGSM, CLEAN)


class _Fail(Exception):
    """A one-line error for the user (exit status 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='fsr-hub', description=__doc__.split('\n\n')[1].replace('\n', ' '))
    p.add_argument('--model', default=None, help='<architecture>.<tag> (default: the best released model)')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--weights', help='a local safetensors file for --model (no card numbers)')
    src.add_argument('--release', help='a local release folder (model_cards/<arch>.<tag>); validated first')
    p.add_argument('--attack', default=PGD20, choices=ATTACKS, help=f'attack besides clean (default {PGD20})')
    p.add_argument('--n', type=int, default=DEFAULT_N, help=f'sample images, 1..200 (default {DEFAULT_N})')
    p.add_argument('--batch-size', type=int, default=50, help='images per attack batch (default 50)')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def _resolve(name: str, released: Mapping[str, str], need_status: bool) -> Tuple[str, Optional[str], str]:
    """``(architecture, tag, status)`` of ``--model``; status is 'released', 'planned' or 'local'."""
    from .models import ALL_MODELS
    from .catalog import PLANNED, release_name, split_name

    arch, tag = split_name(name)
    if tag == '':
        raise _Fail(f'--model {name}: nothing after the dot; give <architecture>.<tag> or the architecture alone.')
    if arch not in ALL_MODELS:
        raise _Fail(f'--model {name}: unknown architecture {arch!r}; choose from {", ".join(ALL_MODELS)}.')
    def tags_of(names):
        return [split_name(n)[1] for n in names if split_name(n)[0] == arch]
    tags = {'released': tags_of(released), 'planned': tags_of(n for n in PLANNED if n not in released)}
    tag = tag or next(iter(tags['released'] + tags['planned']), None)
    if not need_status:
        return arch, tag, 'local'
    for status in ('released', 'planned'):
        if tag in tags[status]:
            return arch, tag, status
    listed = '; '.join(f"{s}: {', '.join(release_name(arch, t) for t in ts) or 'none'}" for s, ts in tags.items())
    raise _Fail(f'--model {name}: {arch} has no release or planned release called {tag!r} ({listed}).')


def _released(name: str, pin: str):
    """The release files of ``name``, validated against ``pin``: its folder in a source checkout, else through
    huggingface_hub (cache, or download). Returns (ReleaseInfo, where they came from)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from .release import REQUIRED_FILES, validate_release
    from .catalog import hub_id, local_release

    folder = local_release(name)
    if folder is not None:
        info = validate_release(folder, name=name, pin=pin)
        return info, f'release folder {folder} (sha256 {info.sha256[:12]})'

    try:
        paths = [hf_hub_download(hub_id(name), f) for f in REQUIRED_FILES]
    except (EntryNotFoundError, OSError) as e:  # not cached offline, no such repo or file, no network
        raise _Fail(f'could not get {name} from the Hugging Face Hub repo {hub_id(name)}: {type(e).__name__}: '
                    f'{str(e).splitlines()[0]}') from e
    info = validate_release(Path(paths[0]).parent, name=name, pin=pin, check_card=False)
    return info, f'{hub_id(name)} (sha256 {info.sha256[:12]})'


def _print_cost(arch: str) -> None:
    from .cost import cost_table, format_markdown
    from .models import VANILLA_TWINS

    fsr_arch = arch if arch in VANILLA_TWINS else next(k for k, v in VANILLA_TWINS.items() if v == arch)
    print(f'\nCost of {fsr_arch} vs its vanilla twin (no weights needed):\n')
    print(format_markdown(cost_table([fsr_arch])))


def _table(measured: Mapping[str, float], card: Optional[Mapping[str, Any]], ref: Any, n: int, device: str) -> str:
    from .card import metric_sample
    from .paper import METRIC_NAMES

    other = "; the paper's recipe, not this model's" if ref and ref.other_recipe else ''
    paper = f'paper ({ref.setting}{other})' if ref else 'paper'
    head = ['metric', f'measured here ({n} images, {device})', 'model card (test images)', paper]
    rows: List[List[str]] = []
    for key, value in measured.items():
        c = ((card or {}).get('results') or {}).get(key)
        card_n, whole = metric_sample(c, card.get('data') or {}) if c else (None, False)
        rows.append([METRIC_NAMES.get(key, key), f'{value:.2f}',
                     f"{c['accuracy']:.2f} ({'all' if whole else 'first'} {card_n:,})" if c and card_n else
                     (f"{c['accuracy']:.2f}" if c else ('not measured' if card else 'no card')),
                     f'{ref.metrics[key]:.2f} ({ref.sources[key]})' if ref and key in ref.metrics else '-'])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    fmt = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa: E731
    return '\n'.join([fmt(head), '|' + '|'.join('-' * (w + 2) for w in widths) + '|'] + [fmt(r) for r in rows])


def _evaluate_release(args: argparse.Namespace, released: Mapping[str, str]) -> int:
    from .card import describe_attack
    from .evaluate import evaluate
    from .hardware import resolve_device
    from .inputs import check_pixels
    from .models import create
    from .paper import METRIC_NAMES, paper_reference
    from .release import ReleaseError, validate_release
    from .catalog import default_release, release_name
    from .sample import SampleError, load_sample
    from .weights import WeightsError, load_weights

    if args.batch_size < 1:
        raise _Fail(f'--batch-size must be positive, got {args.batch_size}')
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise _Fail(f'--device: {e}') from e
    try:
        x, y = load_sample(args.n)
        check_pixels(x, 'the shipped CIFAR-10 sample')
    except (SampleError, ValueError) as e:
        raise _Fail(f'--n: {e}') from e
    card: Optional[Dict[str, Any]] = None
    try:
        if args.release:
            info = validate_release(args.release)
            arch, tag, model, card = info.architecture, info.tag, info.model, info.results
            source = f'release folder {info.folder} (sha256 {info.sha256[:12]})'
        else:
            arch, tag, status = _resolve(args.model or default_release(released), released,
                                         need_status=not args.weights)
            name = release_name(arch, tag) if tag else arch
            if status == 'planned':
                print(f'No weights have been released for {name} yet (it is planned): nothing to evaluate. '
                      f'Evaluate a local checkpoint with --weights FILE or --release FOLDER.')
                _print_cost(arch)
                return 0
            if status == 'local':
                model = create(arch)
                load_weights(model, args.weights)
                source = f'local file {args.weights} (unchecked: no sha256 pin)'
            else:
                info, source = _released(name, released[name])
                model, card = info.model, info.results
    except (ReleaseError, WeightsError, ValueError) as e:
        raise _Fail(str(e)) from e
    print(f'{release_name(arch, tag) if tag else arch}: {source}')
    t0 = time.perf_counter()
    attacks = (CLEAN,) if args.attack == CLEAN else (CLEAN, args.attack)  # the verify suite's attacks
    report = evaluate(model.eval(), x, y, attacks=attacks, eps=EPS, batch_size=args.batch_size, device=device,
                      masking_checks=False, progress=not args.no_progress)
    measured = {k: report['results'][k]['accuracy'] for k in attacks}
    seconds = time.perf_counter() - t0
    print(f'\n{_table(measured, card, paper_reference(arch, tag), len(x), str(device))}\n')
    protocol = [f"{METRIC_NAMES[k]}: {describe_attack(k, report['results'][k])}" for k in attacks if k != CLEAN]
    print((f"Linf eps {round(EPS * 255)}/255; {'; '.join(protocol)}. " if protocol else 'Clean accuracy only. ') +
          f'{len(x)} images of the shipped CIFAR-10 test sample (standard error up to {50 / len(x) ** 0.5:.1f} '
          f'points); {seconds:.1f} s.')
    return 0


def main(argv: Optional[Sequence[str]] = None, released: Optional[Mapping[str, str]] = None) -> int:
    """Entry point of ``python -m fsr_hub`` and the ``fsr-hub`` console script; returns the exit status.

    ``released`` maps ``arch.tag`` to the pinned sha256 of its weights (default :data:`fsr_hub.catalog.RELEASED`).
    """
    args = _parser().parse_args(argv)
    if released is None:
        from .catalog import RELEASED
        released = RELEASED
    try:
        return _evaluate_release(args, released)
    except _Fail as e:
        print(f'fsr-hub: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
