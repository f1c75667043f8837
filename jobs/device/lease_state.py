"""A training run continued over several leases: what call b leaves when the run is not finished (``last.pt``, the
best weights and the summary, packed into one file), staged in parts over call b and the ``c`` calls after it,
joined here, and carried to the next lease by ``r`` calls of their own, where call b lands it before training.

One lease carries at most 64 MiB per call and brings back at most 64 MiB per call; the state of a ResNet-18 run is
about 120 MiB (fp32 weights and SGD momentum in ``last.pt``, fp16 best weights), so it travels in parts over
several calls. Every part and the whole file are checked against the sha256 sums of the state's manifest.
"""
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from fsr_hub.checkpoint import write_json

from .plan import CARRY_R, JOB, MIB, OUT_MAX_FILES, OUT_MAX_TOTAL, PART_BYTES, RUN, JobError, PathLike
from .staging import Log, digest, join_parts, read_json, split_file

__all__ = ['STATE', 'MANIFEST', 'RUN_FILES', 'pack_state', 'stage_state_parts', 'join_state', 'carry_state',
           'clear_carried', 'check_carried', 'land_state', 'state_progress']

STATE = 'run_state.tar'
MANIFEST = 'run_state.json'
#: what a continued run needs of its folder (last.pt: model, optimizer, RNG, history, best record)
RUN_FILES = ('last.pt', 'best.safetensors', 'train_summary.json')
PARTS = JOB / 'state_parts'  # on the machine: the packed state's parts, until staged
STAGED = 'staged.json'  # in PARTS: the parts already staged by earlier calls


def state_progress(summary: Dict[str, Any]) -> Dict[str, Any]:
    """Epochs done and planned, and the run's config, from a training summary."""
    config = summary.get('config') or {}
    return {'epochs_done': len(summary.get('history') or []), 'epochs': config.get('epochs'),
            'model': config.get('model'), 'complete': bool(summary.get('complete'))}


def _split(tar: Path, dest: Path, part_bytes: int) -> List[Dict[str, Any]]:
    """``tar`` split into parts in ``dest``: each part's name, size and sha256."""
    return [{'name': p.name, 'bytes': p.stat().st_size, 'sha256': digest(p, 'sha256')}
            for p in split_file(tar, dest, base=STATE, part_bytes=part_bytes)]


def pack_state(run_dir: PathLike, dest: PathLike, part_bytes: int = PART_BYTES) -> Dict[str, Any]:
    """Pack ``run_dir``'s :data:`RUN_FILES` into ``dest/run_state.tar``, split it into parts there (the tar itself
    removed) and write the manifest (sha256 of the whole and of each part, progress of the run)."""
    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / 'last.pt').is_file() or not (run_dir / 'train_summary.json').is_file():
        raise JobError(f'{run_dir} holds no last.pt and train_summary.json: nothing to continue from.')
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    tar = dest / STATE
    with tarfile.open(tar, 'w') as t:
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                t.add(run_dir / name, arcname=name, recursive=False)
    manifest = {'file': STATE, 'bytes': tar.stat().st_size, 'sha256': digest(tar, 'sha256'),
                **state_progress(read_json(run_dir / 'train_summary.json', 'the training summary')),
                'parts': _split(tar, dest, part_bytes)}
    tar.unlink()
    write_json(dest / MANIFEST, manifest)
    return manifest


def stage_state_parts(parts_dir: PathLike, out: PathLike, log: Log) -> List[str]:
    """Copy the manifest and as many not yet staged parts into ``out`` as come back from a call (with what ``out``
    holds already); returns the names of the parts still left for a later call."""
    parts_dir, out = Path(parts_dir), Path(out)
    manifest = read_json(parts_dir / MANIFEST, 'the packed run state (was it packed on this machine?)')
    done = set(read_json(parts_dir / STAGED, 'staged parts')) if (parts_dir / STAGED).is_file() else set()
    shutil.copyfile(parts_dir / MANIFEST, out / MANIFEST)
    files = [p for p in out.iterdir() if p.is_file() and not p.name.startswith('.')]
    count, total = len(files), sum(p.stat().st_size for p in files)
    left = []
    for part in manifest['parts']:
        if part['name'] in done:
            continue
        if left or count + 1 > OUT_MAX_FILES or total + part['bytes'] > OUT_MAX_TOTAL - MIB:
            left.append(part['name'])
            continue
        shutil.copyfile(parts_dir / part['name'], out / part['name'])
        done.add(part['name'])
        count, total = count + 1, total + part['bytes']
        log(f'staged {part["name"]} -> $OUT ({part["bytes"] / MIB:.1f} MiB)')
    (parts_dir / STAGED).write_text(json.dumps(sorted(done)))
    return left


def _check_parts(folders: Sequence[Path], manifest: Dict[str, Any]) -> Dict[str, Path]:
    """Each part of ``manifest``, found in one of ``folders`` with its size and sha256; a JobError naming what
    is missing or wrong."""
    found: Dict[str, Path] = {}
    for part in manifest['parts']:
        path = next((f / part['name'] for f in folders if (f / part['name']).is_file()), None)
        if path is None:
            raise JobError(f'run state part {part["name"]} is in none of {", ".join(map(str, folders))}.')
        if path.stat().st_size != part['bytes'] or digest(path, 'sha256') != part['sha256']:
            raise JobError(f'{path}: not the part the manifest names (size or sha256 differ).')
        found[part['name']] = path
    return found


def _manifest(folders: Sequence[Path]) -> Dict[str, Any]:
    """The one manifest the folders hold (several copies must agree)."""
    found = [read_json(f / MANIFEST, 'the run state manifest') for f in folders if (f / MANIFEST).is_file()]
    if not found:
        raise JobError(f'no {MANIFEST} in {", ".join(map(str, folders))}.')
    if any(m['sha256'] != found[0]['sha256'] for m in found):
        raise JobError(f'the folders hold the manifests of different run states: {", ".join(map(str, folders))}.')
    return found[0]


def _assemble(parts: Dict[str, Path], manifest: Dict[str, Any], dest: Path) -> Path:
    """The parts concatenated into ``dest`` in the manifest's order, checked against the whole's sha256."""
    join_parts([parts[p['name']] for p in manifest['parts']], dest, manifest['sha256'], 'the joined run state parts',
               'the manifest')
    return dest


def join_state(sources: Sequence[PathLike], dest: PathLike) -> Dict[str, Any]:
    """Here, after a lease that left its run unfinished: the state's parts staged by call b and the c calls
    (``sources``: their files_at folders) joined into ``dest/run_state.tar`` with the manifest beside it."""
    folders, dest = [Path(s) for s in sources], Path(dest)
    manifest = _manifest(folders)
    parts = _check_parts(folders, manifest)
    dest.mkdir(parents=True, exist_ok=True)
    _assemble(parts, manifest, dest / STATE)
    write_json(dest / MANIFEST, {k: v for k, v in manifest.items() if k != 'parts'})
    return {'state': str(dest / STATE), 'sha256': manifest['sha256'], 'epochs_done': manifest['epochs_done'],
            'epochs': manifest['epochs']}


def carry_state(root: PathLike, state_dir: PathLike, room_bytes: int, part_bytes: int = PART_BYTES) -> List[Path]:
    """Fill the carry folders ``.data/r1``, ``.data/r2``, ... under ``root`` with the parts of ``state_dir``'s
    joined run state, each folder at most ``room_bytes``; returns them (relative to ``root``)."""
    root, state_dir = Path(root), Path(state_dir)
    manifest = read_json(state_dir / MANIFEST, f'the joined run state (python tools/device_job.py join-state ... '
                                               f'--out {state_dir})')
    tar = state_dir / STATE
    if not tar.is_file() or digest(tar, 'sha256') != manifest.get('sha256'):
        raise JobError(f'{tar} is missing or not the state its manifest names.')
    clear_carried(root)
    scratch = root / CARRY_R.parent / f'{CARRY_R.name}_parts'
    scratch.mkdir(parents=True)
    manifest = {**manifest, 'parts': _split(tar, scratch, part_bytes)}
    folders: List[Path] = []
    used = room_bytes
    for part in manifest['parts']:
        if part['bytes'] > room_bytes:
            raise JobError(f'a part of {part["bytes"] / MIB:.1f} MiB does not fit a call\'s room of '
                           f'{room_bytes / MIB:.1f} MiB.')
        if used + part['bytes'] > room_bytes:
            folders.append(Path(f'{CARRY_R}{len(folders) + 1}'))
            (root / folders[-1]).mkdir(parents=True)
            write_json(root / folders[-1] / MANIFEST, manifest)
            used = 0
        shutil.move(str(scratch / part['name']), root / folders[-1] / part['name'])
        used += part['bytes']
    shutil.rmtree(scratch)
    return folders


def _carried(root: Path) -> List[Path]:
    """The carry folders ``.data/r1``, ``.data/r2``, ... under ``root``, in order."""
    found = [p for p in (root / CARRY_R.parent).glob(f'{CARRY_R.name}[0-9]*') if p.name[1:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[1:]))


def clear_carried(root: PathLike) -> None:
    """Remove the r carry folders (and a scratch folder of an interrupted :func:`carry_state`) under ``root``."""
    root = Path(root)
    for old in [root / CARRY_R.parent / f'{CARRY_R.name}_parts', *_carried(root)]:
        if old.exists():  # never a glob on 'r*': .data/run is there too
            shutil.rmtree(old)


def check_carried(root: PathLike, name: str) -> Dict[str, Any]:
    """Call ``r<k>`` on the machine: the parts its folder carried, checked against the manifest."""
    folder = Path(root) / f'{CARRY_R}{name[1:]}'
    manifest = read_json(folder / MANIFEST, f'the manifest carried by call {name}')
    here = [p for p in manifest['parts'] if (folder / p['name']).is_file()]
    _check_parts([folder], {**manifest, 'parts': here})
    return {'call': name, 'parts': [p['name'] for p in here], 'state_sha256': manifest['sha256'],
            'epochs_done': manifest['epochs_done']}


def land_state(root: PathLike, log: Log) -> Optional[Dict[str, Any]]:
    """Call b: the run state the r calls carried, joined, checked and unpacked into ``.data/run`` (None when no r
    call carried one; not over a later epoch of the same run there); a JobError if a part is missing or differs."""
    root = Path(root)
    folders = _carried(root)
    if not folders:
        return None
    manifest = _manifest(folders)
    run_dir = root / RUN
    summary = run_dir / 'train_summary.json'
    here = state_progress(read_json(summary, 'the training summary')) if summary.is_file() else None
    if here and (here['model'], here['epochs']) == (manifest['model'], manifest['epochs']) \
            and here['epochs_done'] >= manifest['epochs_done']:
        log(f'{run_dir} already holds epoch {here["epochs_done"]} of this run (b ran before on this machine): the '
            f'carried state of epoch {manifest["epochs_done"]} is not landed over it')
        return manifest
    parts = _check_parts(folders, manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    tar = _assemble(parts, manifest, root / JOB / STATE)
    with tarfile.open(tar) as t:
        members = t.getmembers()
        bad = [m.name for m in members if m.name not in RUN_FILES or not m.isfile()]
        if bad:
            raise JobError(f'the run state holds unexpected entries: {", ".join(bad)}.')
        for m in members:
            src = t.extractfile(m)
            assert src is not None  # a regular file, checked above
            with src, open(run_dir / m.name, 'wb') as f:
                shutil.copyfileobj(src, f)
    tar.unlink()
    log(f'landed the run state of epoch {manifest["epochs_done"]} of {manifest["epochs"]} into {run_dir}')
    return manifest
