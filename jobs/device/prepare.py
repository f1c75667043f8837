"""Here, before a run: the carry folders of each call (data, wheels, settings), the size check against what a call
may carry, and the device calls to make, as JSON."""
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .plan import (
    CALL_LIMIT_MIB, CARRY_A, CARRY_B, CARRY_V, CARRY_VS, CIFAR10_MD5, COMMAND_PREFIX, FILES_A, FILES_B, FILES_V, MIB,
    WEIGHTS, WHEEL_EXCLUDE, WHEELS, JobError, JobSettings, LeasePlan, PathLike, plan_lines,
)
from .lease_state import MANIFEST, carry_state, clear_carried
from .staging import read_json

__all__ = ['tree_files', 'repack_wheel', 'prepare', 'prepare_verify']


def tree_files(root: PathLike) -> List[Path]:
    """The files a device call sends of the checkout: tracked and untracked-not-ignored files that exist (git's
    view). Outside a git checkout (a source archive), every file but hidden, build and cache folders."""
    root = Path(root)
    try:
        out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                             check=True, capture_output=True).stdout
        files = [root / p for p in out.decode().split('\0') if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {'build', 'dist', 'runs', '__pycache__'}
        files = [p for p in root.rglob('*') if not any(
            part.startswith('.') or part in skip or part.endswith('.egg-info')
            for part in p.relative_to(root).parts[:-1]) and not p.name.endswith(('.tmp', '.pyc'))]
    return [f for f in files if f.is_file() and not f.is_symlink()]


def _size(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _folder_size(folder: Path) -> int:
    return _size(p for p in folder.rglob('*') if p.is_file()) if folder.is_dir() else 0


def _copy_into(folder: Path, sources: Sequence[Path]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for src in sources:
        if not src.is_file():
            raise JobError(f'{src} is missing (a CIFAR-10 source folder holds {", ".join(FILES_A + FILES_B)}).')
        shutil.copyfile(src, folder / src.name)


def repack_wheel(name: str, dest: PathLike, exclude: Sequence[str] = ()) -> Path:
    """A pure-Python wheel of the installed distribution ``name``, without files under ``exclude`` prefixes,
    compiled files and installer records; written to ``dest`` (made offline from what is installed here)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise JobError(f'{name} is not installed here: install it (pip install {name}) before prepare.') from None
    files = list(dist.files or [])
    info = next((f.parts[0] for f in files if f.parts[0].endswith('.dist-info')), None)
    wheel_text = dist.read_text('WHEEL') or ''
    tags = re.findall(r'^Tag:\s*(\S+)', wheel_text, re.M)
    if info is None or not tags or 'Root-Is-Purelib: true' not in wheel_text:
        raise JobError(f'{name}: not a pure-Python wheel install; it cannot be carried as a wheel made here.')
    skip_info = {f'{info}/{n}' for n in ('RECORD', 'INSTALLER', 'REQUESTED', 'direct_url.json')}
    keep = []
    for f in files:
        p = f.as_posix()
        if p.startswith('..') or p in skip_info or '__pycache__' in f.parts or p.endswith('.pyc'):
            continue
        if any(p.startswith(e) for e in exclude):
            continue
        keep.append((p, Path(f.locate())))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r'[-_.]+', '_', dist.metadata['Name'])
    path = dest / f'{stem}-{dist.version}-{tags[0]}.whl'
    record = []
    with zipfile.ZipFile(path.with_suffix('.tmp'), 'w', zipfile.ZIP_DEFLATED) as z:
        for arc, src in sorted(keep):
            data = src.read_bytes()
            z.writestr(zipfile.ZipInfo(arc, (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
            digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
            record.append(f'{arc},sha256={digest},{len(data)}')
        record.append(f'{info}/RECORD,,')
        z.writestr(zipfile.ZipInfo(f'{info}/RECORD', (1980, 1, 1, 0, 0, 0)), '\n'.join(record) + '\n',
                   zipfile.ZIP_DEFLATED)
    os.replace(path.with_suffix('.tmp'), path)
    return path


def _wheels(folder: Path) -> List[Path]:
    return [repack_wheel(n, folder, WHEEL_EXCLUDE.get(n, ())) for n in WHEELS]


def _tree(root: Path) -> Tuple[List[Path], List[Path], int]:
    """The files a call sends of ``root``, the released weights among them (to move out first) and the bytes of
    the rest."""
    files = tree_files(root)
    move_out = [f for f in files if f.name == WEIGHTS and f.relative_to(root).parts[0] == 'model_cards']
    return files, move_out, _size(f for f in files if f not in move_out)


def _check_sizes(root: Path, carries: Mapping[str, Path], limit_mib: float) -> Tuple[Dict[str, float], List[str]]:
    """MiB each call sends (tree + its carry) and the released weights to move out of the checkout first: they
    are not counted, since they must not travel (a release folder's weights alone are 25-95 MB)."""
    files, move_out, tree = _tree(root)
    sizes = {'tree': round(tree / MIB, 2)}
    for call, folder in carries.items():
        total = tree + _folder_size(folder)
        sizes[call] = round(total / MIB, 2)
        if total > limit_mib * MIB:
            biggest = sorted((f for f in files if f not in move_out), key=lambda f: -f.stat().st_size)[:3]
            raise JobError(f'call {call} would send {total / MIB:.1f} MiB (tree {tree / MIB:.1f} + carry '
                           f'{_folder_size(folder) / MIB:.1f}), over {limit_mib} MiB; largest files in the tree: '
                           + ', '.join(str(f.relative_to(root)) for f in biggest) + '.')
    return sizes, [str(f.relative_to(root)) for f in move_out]


def _move_out_note(move_out: Sequence[str]) -> List[str]:
    if not move_out:
        return []
    return [f'BEFORE the calls move the released weights out of the checkout (they are not counted above and must '
            f'not travel), e.g. mkdir -p /tmp/weights-out && for f in {" ".join(move_out)}; do mkdir -p '
            f'/tmp/weights-out/$(dirname $f) && mv $f /tmp/weights-out/$f; done; move them back afterwards']


def _call(name: str, args: str, carry: Sequence[Path], timeout_s: int) -> Dict[str, Any]:
    command = f'{COMMAND_PREFIX} {args}'.strip()
    if len(command) > 2000:
        raise JobError(f'the command of call {name} is {len(command)} characters (the tool takes 2000).')
    return {'name': name, 'command': command, 'carry': [p.as_posix() for p in carry], 'timeout_s': timeout_s}


def _carry_state(root: Path, settings: JobSettings, state_dir: Path, limit_mib: float) -> List[Path]:
    """The r carry folders of a run continued from ``state_dir`` (a joined run state), checked against the
    settings' run."""
    if not settings.epochs:
        raise JobError('--continue-from continues a run of fixed epochs: give the same --epochs as its first lease.')
    manifest = read_json(state_dir / MANIFEST, f'the joined run state in {state_dir}')
    if (manifest.get('model'), manifest.get('epochs')) != (settings.model, settings.epochs):
        raise JobError(f'{state_dir} holds a {manifest.get("model")} run of {manifest.get("epochs")} epochs, not '
                       f'the {settings.model} run of {settings.epochs} epochs asked for.')
    return carry_state(root, state_dir, int(limit_mib * MIB - _tree(root)[2] - MIB))


def prepare(root: PathLike, source: PathLike, settings: Optional[JobSettings] = None,
            limit_mib: float = CALL_LIMIT_MIB, continue_from: Optional[PathLike] = None) -> Dict[str, Any]:
    """Fill ``.data/a`` and ``.data/b`` under ``root`` from the CIFAR-10 mosaic folder ``source`` and return the
    device calls (``calls``), the per-call sizes in MiB and the lease plan. ``continue_from``: a joined run state
    of an earlier lease (a run of ``settings.epochs``), carried by r calls made before a."""
    root, source = Path(root), Path(source)
    settings = settings or JobSettings()
    if not source.is_dir():
        raise JobError(f'CIFAR-10 source folder {source} not found (pass --source DIR holding the .webp mosaics).')
    if continue_from:
        carried = _carry_state(root, settings, Path(continue_from), limit_mib)
    else:
        carried = []
        clear_carried(root)  # a fresh run: no state of an earlier one may travel
    _copy_into(root / CARRY_A, [source / f for f in FILES_A])
    _copy_into(root / CARRY_B, [source / f for f in FILES_B])
    _wheels(root / CARRY_A / 'wheels')
    (root / CARRY_A / 'job.json').write_text(json.dumps(settings.to_dict(), indent=2) + '\n')
    carries = {**{f.name: root / f for f in carried}, 'a': root / CARRY_A, 'b': root / CARRY_B}
    sizes, move_out = _check_sizes(root, carries, limit_mib)
    p = settings.plan
    calls = [_call(f.name, f'r {f.name[1:]}', [f], 60) for f in carried]
    calls += [_call('a', 'a', [CARRY_A], int(p.a + 60)), _call('b', 'b', [CARRY_B], int(p.command_limit))]
    notes = _move_out_note(move_out) + [
        'make each call right after the one before returns (the machine keeps .data/ only while warm, 30 s); append '
        '--lease-left-s S to b\'s command, S = lease.budget_left_s of call a\'s reply, so that b plans from the '
        'real device time left (without it b assumes the machine started 2 minutes before a)',
        f'afterwards: python tools/device_job.py join <files_at of b> --out model_cards/{settings.name}']
    if settings.epochs:
        notes.append(f'a run of {settings.epochs} epochs: when b\'s reply has "continue" (the run is unfinished), '
                     f'make call c (command: {COMMAND_PREFIX} c, no carry, timeout_s 60) at once, again while its '
                     f'reply lists parts_left; then python tools/device_job.py join-state <files_at of b> <files_at '
                     f'of each c> --out .data/lease_state, and next lease: prepare --epochs {settings.epochs} '
                     f'--continue-from .data/lease_state')
    return {'calls': calls, 'sizes_mib': sizes, 'limit_mib': limit_mib, 'move_out': move_out,
            'plan': plan_lines(p, settings.epochs, len(carried)), 'notes': notes}


def _stage_source(folder: Path, spec: str) -> Dict[str, str]:
    """Put the transfer source ``MODEL:WEIGHTS`` into ``folder`` (``.data/vs``, carried by a call of its own:
    with the test set and the release's weights it would pass the limit): a safetensors file as it is, weights
    named in :data:`fsr_hub.sources.NAMED_WEIGHTS` converted here to ``<name>.safetensors`` in float32 (the
    device's wheels lack them). Returns the job settings of the source: its spec on the machine and sha256."""
    from fsr_hub.sources import NAMED_WEIGHTS, load_model_spec
    from fsr_hub.weights import WeightsError, save_weights

    name, _, weights = spec.partition(':')
    try:
        model, info = load_model_spec(spec, what='--transfer-from')  # builds and loads it: a bad spec fails here
    except (ValueError, WeightsError) as e:
        raise JobError(str(e)) from None
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    file = f'{weights}.safetensors' if weights in NAMED_WEIGHTS else Path(weights).name
    if weights in NAMED_WEIGHTS:
        sha = save_weights(model.state_dict(), folder / file)
    else:
        shutil.copyfile(weights, folder / file)
        sha = info['sha256']
    (folder / 'source.json').write_text(json.dumps({'file': file, 'sha256': sha, 'origin': spec}, indent=2) + '\n')
    return {'transfer_from': f'{name}:{(CARRY_VS / file).as_posix()}', 'transfer_sha256': sha,
            'transfer_origin': spec}


def prepare_verify(root: PathLike, source: PathLike, release: PathLike, deadline_minutes: float = 8.5,
                   md5: Optional[Mapping[str, str]] = None, limit_mib: float = CALL_LIMIT_MIB,
                   tool_start: float = LeasePlan.tool_start, min_verify: float = LeasePlan.min_verify,
                   transfer_from: Optional[str] = None) -> Dict[str, Any]:
    """Fill ``.data/v`` with a release folder's weights, config and results, the test set and the wheels; return
    the device call of a full verification (continued from the release's results.json when partial).

    ``transfer_from`` (``MODEL:WEIGHTS``) adds the transfer attack: the source goes to ``.data/vs``, carried by a
    first call (``verify-source``) that the verify call must follow at once, while the machine keeps it."""
    root, source, release = Path(root), Path(source), Path(release)
    for f in (WEIGHTS, 'config.json', 'results.json'):
        if not (release / f).is_file():
            raise JobError(f'{release / f} is missing: pass a release folder (model_cards/<arch>.<tag>).')
    _copy_into(root / CARRY_V, [source / f for f in FILES_V] + [release / f for f in (WEIGHTS, 'config.json',
                                                                                      'results.json')])
    _wheels(root / CARRY_V / 'wheels')
    settings = {'md5': dict(md5 or CIFAR10_MD5), 'deadline_minutes': deadline_minutes, 'tool_start': tool_start,
                'min_verify': min_verify}
    carries, calls = {'verify': root / CARRY_V}, [_call('verify', 'verify', [CARRY_V], 600)]
    if transfer_from:
        settings.update(_stage_source(root / CARRY_VS, transfer_from))
        carries = {'verify-source': root / CARRY_VS, **carries}
        calls.insert(0, _call('verify-source', 'verify-source', [CARRY_VS], 120))
    (root / CARRY_V / 'job.json').write_text(json.dumps(settings, indent=2) + '\n')
    sizes, move_out = _check_sizes(root, carries, limit_mib)
    notes = _move_out_note(move_out)
    if transfer_from:
        notes.append('make the verify call right after verify-source returns (the machine keeps .data/vs only while '
                     'warm, 30 s); without it the verify call runs the suite without the transfer attack')
    return {'calls': calls, 'sizes_mib': sizes, 'limit_mib': limit_mib, 'move_out': move_out,
            'notes': notes + [f'afterwards: copy results.json from the files into {release}/ and run '
                              f'python tools/make_card.py --folder {release}; if the report is partial (complete: '
                              f'false), prepare-verify again in the next lent session to continue']}


# ---------------------------------------------------------------------------------------------------------------
# On the machine: phases, logging, unpacking, staging
