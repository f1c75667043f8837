"""One lent GPU lease = one release: the device job behind ``tools/device_job.py``.

A lease is 15 device-minutes in all (start-up, transfers and idle time included), one command runs at most 10
minutes, and at most 64 MiB travels per call, so CIFAR-10 (six ~17 MB mosaics) needs two calls:

* ``prepare`` (here): fills the ignored carry folders ``.data/a`` (train_1..3, meta, unpack.py, the md5 list,
  the job's settings and the wheels the GPU image lacks) and ``.data/b`` (train_4..5, test), checks that each
  call's tree plus carry stays under :data:`CALL_LIMIT_MIB`, and returns the two device calls to make.
* ``a`` (first call): installs the wheels into ``.data/site``, unpacks the first half, runs ``pytest -m cuda``
  and a short benchmark that picks the training path, and records the call's start time for ``b``.
* ``b`` (second call, at once): unpacks the rest, checks every md5, trains for what is left of the lease,
  verifies the best checkpoint (quick preset, with a deadline), builds the release folder and stages it in
  ``$OUT`` (weights in parts of at most 15 MiB); while training, each new best checkpoint and the summary are
  staged as they appear.
* ``verify`` (a later lease): one call with a release's weights and the test set, the full suite under a
  deadline, resumable; stages the updated ``results.json``.
* ``join`` (here): reassembles the parts and checks the sha256.
* ``rehearse`` (here, on the CPU): all of the above against a synthetic CIFAR-10 source, with a fake ``$OUT``.

Everything the machine keeps between the calls lives in the ignored folder ``.data/`` of the checkout there.
"""
import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from base64 import urlsafe_b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .checkpoint import write_json
from .cli import fsr_flags
from .releases import release_name

__all__ = [
    'JobError', 'LeasePlan', 'JobSettings', 'CIFAR10_MD5', 'WHEELS', 'CALL_LIMIT_MIB', 'PART_BYTES',
    'prepare', 'prepare_verify', 'job_a', 'job_b', 'job_verify_source', 'job_verify', 'join', 'rehearse',
    'repack_wheel', 'tree_files', 'split_file', 'train_seconds', 'plan_lines', 'make_synthetic_source',
]

PathLike = Union[str, os.PathLike]
MIB = 1024 * 1024
#: what one call may carry (tree + carried folders), below the tool's 64 MiB
CALL_LIMIT_MIB = 60
#: weight parts staged in $OUT (the tool returns files of at most 16 MiB, 8 files, 64 MiB in all)
PART_BYTES = 15 * MIB
OUT_MAX_FILES, OUT_MAX_FILE, OUT_MAX_TOTAL = 8, 16 * MIB, 64 * MIB
WEIGHTS = 'model.safetensors'

DATA = Path('.data')
CARRY_A, CARRY_B, CARRY_V, CARRY_VS = DATA / 'a', DATA / 'b', DATA / 'v', DATA / 'vs'
SITE, CIFAR, JOB, RUN, VOUT = DATA / 'site', DATA / 'cifar', DATA / 'job', DATA / 'run', DATA / 'vout'
FILES_A = ('train_1.webp', 'train_2.webp', 'train_3.webp', 'meta.json.gz', 'unpack.py')
FILES_B = ('train_4.webp', 'train_5.webp', 'test.webp')
FILES_V = ('test.webp', 'meta.json.gz', 'unpack.py')
BATCHES_A = ('data_batch_1', 'data_batch_2', 'data_batch_3', 'batches.meta')
BATCHES_B = ('data_batch_4', 'data_batch_5', 'test_batch', 'batches.meta')
BATCHES_ALL = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch', 'batches.meta')
BATCHES_TEST = ('test_batch', 'batches.meta')
#: md5 sums published with CIFAR-10 (python version); synthetic sources bring their own list
CIFAR10_MD5 = {
    'data_batch_1': 'c99cafc152244af753f735de768cd75f', 'data_batch_2': 'd4bba439e000b95fd0a9bffe97cbabec',
    'data_batch_3': '54ebc095f3ab1f0389bbae665268c751', 'data_batch_4': '634d18415352ddfa80567beed471001a',
    'data_batch_5': '482c414d41f54cd18b22e5b47cb7c3cb', 'test_batch': '40351d587109b95175f43aff81a1287e',
    'batches.meta': '5ff9c542aee3614f3951f8cda6e48888',
}
#: packages the GPU image lacks (fvcore and its missing dependencies, pyautoattack), carried as pure wheels
WHEELS = ('fvcore', 'iopath', 'yacs', 'termcolor', 'pyautoattack')
#: files of an installed distribution left out of its carried wheel (pyautoattack: a 44 MB example checkpoint)
WHEEL_EXCLUDE = {'pyautoattack': ('pyautoattack/examples/',)}
COMMAND_PREFIX = 'export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD; python3 tools/device_job.py'


class JobError(RuntimeError):
    """A step of the device job cannot go on (one-line message)."""


# ---------------------------------------------------------------------------------------------------------------
# The lease budget


@dataclass(frozen=True)
class LeasePlan:
    """Seconds of a lease: the assumptions the job plans with (the device tool's limits and our margins)."""
    lease: float = 900.0  # device time of one session, start-up, transfers and idle included
    startup: float = 120.0  # machine start and transfer of call a, before a starts (assumed)
    a: float = 150.0  # call a's target
    gap: float = 30.0  # a's files come back, b's tree is sent and b starts
    after: float = 45.0  # b's files come back and the machine idles 30 s before it is given back
    margin: float = 30.0  # kept free on the lease
    command_limit: float = 600.0  # one command's limit
    command_margin: float = 20.0  # b ends this long before its command limit
    unpack: float = 20.0  # b: unpack the second half and check every md5 (estimate)
    tests: float = 75.0  # a: pytest -m 'cuda and not slow', at most (imports and CUDA start-up included)
    benchmark: float = 40.0  # a: benchmark seconds (eager and cuda-graph, FSR and vanilla)
    verify: float = 150.0  # b: the quick verification's share (it also gets whatever training leaves)
    release: float = 45.0  # b: card, release folder, staging
    min_train: float = 60.0  # b trains at least this long, even when the lease is late
    train_grace: float = 30.0  # past its budget (and 10 %), training is interrupted (it keeps its last epoch)
    min_verify: float = 30.0  # and verifies at least this long (clean, FGSM, PGD-20 on 10,000 images on an H100)
    tool_start: float = 20.0  # a tool's imports and model loading, before its own deadline clock starts

    def b_end(self, a_start: float, b_start: float, lease_left: Optional[float] = None) -> float:
        """Wall-clock time by which call b must have ended (the earlier of lease and command limit).

        ``lease_left``: the device time the tool reported left when call a returned (its reply's
        ``lease.budget_left_s``); b then started ``gap`` seconds after that. Without it, the lease is assumed to
        have started ``startup`` seconds before call a."""
        if lease_left is not None:
            lease_end = b_start - self.gap + lease_left - self.after - self.margin
        else:
            lease_end = a_start - self.startup + self.lease - self.after - self.margin
        return min(lease_end, b_start + self.command_limit - self.command_margin)


def train_seconds(plan: LeasePlan, a_start: float, b_start: float, now: float,
                  lease_left: Optional[float] = None) -> float:
    """Training budget of call b at time ``now``: what is left before b must end, minus verification and release
    (at least ``plan.min_train``)."""
    return max(plan.b_end(a_start, b_start, lease_left) - now - plan.verify - plan.release, plan.min_train)


def _mmss(seconds: float) -> str:
    s = int(round(seconds))
    return f'{s // 60:02d}:{s % 60:02d}'


def plan_lines(plan: LeasePlan) -> List[str]:
    """The minute-by-minute budget of a lease when every step takes its planned time."""
    a0 = plan.startup
    a1 = a0 + plan.a
    b0 = a1 + plan.gap
    b_end = plan.b_end(a0, b0)
    t_train = train_seconds(plan, a0, b0, b0 + plan.unpack)
    t1 = b0 + plan.unpack + t_train
    t2 = b_end - plan.release
    rows = [
        (0, a0, 'machine start-up and transfer of call a (assumed)'),
        (a0, a1, f'call a: install wheels, unpack train_1..3, pytest -m "cuda and not slow" (<= {plan.tests:.0f} s), '
                 f'benchmark ({plan.benchmark:.0f} s), choose the training path'),
        (a1, b0, 'a returns; call b is sent and starts'),
        (b0, b0 + plan.unpack, 'call b: unpack train_4..5 + test, md5 of all 7 files'),
        (b0 + plan.unpack, t1, f'train (--time-budget {t_train / 60:.2f} min; best checkpoint + summary staged '
                               f'as they appear)'),
        (t1, t2, f'verify the best checkpoint (--preset quick, deadline {plan.verify / 60:.2f} min + whatever '
                 f'training left)'),
        (t2, b_end, 'release folder (make_card), weights in 15 MiB parts, stage in $OUT'),
        (b_end, b_end + plan.after, 'b returns; 30 s idle, then the machine is given back'),
        (b_end + plan.after, plan.lease, 'margin'),
    ]
    return [f'{_mmss(s)}-{_mmss(e)}  {what}' for s, e, what in rows]


@dataclass
class JobSettings:
    """What ``prepare`` decides and calls a/b read (``.data/a/job.json``): nothing is left to decide there."""
    model: str = 'fsr_resnet18'
    tag: str = 'at_cifar10'
    train_args: List[str] = field(default_factory=list)
    verify_args: List[str] = field(default_factory=list)
    pytest_args: List[str] = field(default_factory=lambda: ['-m', 'cuda and not slow', '-q', '-p', 'no:cacheprovider'])
    benchmark_args: List[str] = field(default_factory=list)
    md5: Dict[str, str] = field(default_factory=lambda: dict(CIFAR10_MD5))
    plan: LeasePlan = field(default_factory=LeasePlan)

    @property
    def name(self) -> str:
        """The release: ``model.tag``."""
        return release_name(self.model, self.tag)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'JobSettings':
        d = dict(d)
        try:
            d['plan'] = LeasePlan(**d.get('plan', {}))
            return cls(**d)
        except TypeError as e:
            raise JobError(f'job settings are malformed ({e}); run prepare again.') from None


# ---------------------------------------------------------------------------------------------------------------
# prepare (here)


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


def _check_sizes(root: Path, carries: Mapping[str, Path], limit_mib: float) -> Tuple[Dict[str, float], List[str]]:
    """MiB each call sends (tree + its carry) and the released weights to move out of the checkout first: they
    are not counted, since they must not travel (a release folder's weights alone are 25-95 MB)."""
    files = tree_files(root)
    move_out = [f for f in files if f.name == WEIGHTS and f.relative_to(root).parts[0] == 'model_cards']
    tree = _size(f for f in files if f not in move_out)
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


def prepare(root: PathLike, source: PathLike, settings: Optional[JobSettings] = None,
            limit_mib: float = CALL_LIMIT_MIB) -> Dict[str, Any]:
    """Fill ``.data/a`` and ``.data/b`` under ``root`` from the CIFAR-10 mosaic folder ``source`` and return the
    two device calls (``calls``), the per-call sizes in MiB and the lease plan."""
    root, source = Path(root), Path(source)
    settings = settings or JobSettings()
    if not source.is_dir():
        raise JobError(f'CIFAR-10 source folder {source} not found (pass --source DIR holding the .webp mosaics).')
    _copy_into(root / CARRY_A, [source / f for f in FILES_A])
    _copy_into(root / CARRY_B, [source / f for f in FILES_B])
    _wheels(root / CARRY_A / 'wheels')
    (root / CARRY_A / 'job.json').write_text(json.dumps(settings.to_dict(), indent=2) + '\n')
    sizes, move_out = _check_sizes(root, {'a': root / CARRY_A, 'b': root / CARRY_B}, limit_mib)
    p = settings.plan
    calls = [_call('a', 'a', [CARRY_A], int(p.a + 60)), _call('b', 'b', [CARRY_B], int(p.command_limit))]
    return {'calls': calls, 'sizes_mib': sizes, 'limit_mib': limit_mib, 'move_out': move_out,
            'plan': plan_lines(p),
            'notes': _move_out_note(move_out) + [
                'make call b right after a returns (the machine keeps .data/ only while warm, 30 s); append '
                '--lease-left-s S to its command, S = lease.budget_left_s of call a\'s reply, so that b plans from '
                'the real device time left (without it b assumes the machine started 2 minutes before a)',
                f'afterwards: python tools/device_job.py join <files_at of b> --out '
                f'model_cards/{settings.name}']}


def _stage_source(folder: Path, spec: str) -> Dict[str, str]:
    """Put the transfer source ``MODEL:WEIGHTS`` into ``folder`` (``.data/vs``, carried by a call of its own:
    with the test set and the release's weights it would pass the limit): a safetensors file as it is, weights
    named in :data:`fsr_hub.sources.NAMED_WEIGHTS` converted here to ``<name>.safetensors`` in float32 (the
    device's wheels lack them). Returns the job settings of the source: its spec on the machine and sha256."""
    from .sources import NAMED_WEIGHTS, load_model_spec
    from .weights import WeightsError, save_weights

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


class _Log:
    """Phase timings (wall and CPU seconds of this process and its children) and a log mirrored to $OUT."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()
        self.phases: List[Dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('')

    def __call__(self, text: str) -> None:
        line = f'[+{_mmss(time.time() - self.t0)}] {text}'
        print(line, flush=True)
        with open(self.path, 'a') as f:
            f.write(line + '\n')

    def raw(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        with open(self.path, 'a') as f:
            f.write(text)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        self(f'{name} ...')
        t, cpu = time.time(), _cpu()
        ok = False
        try:
            result = fn()
            ok = True
            return result
        finally:
            rec = {'phase': name, 'wall_s': round(time.time() - t, 2), 'cpu_s': round(_cpu() - cpu, 2), 'ok': ok}
            self.phases.append(rec)
            self(f'{name}: {"done" if ok else "FAILED"} in {rec["wall_s"]:.1f} s (cpu {rec["cpu_s"]:.1f} s)')


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _env(root: Path) -> Dict[str, str]:
    parts = [str(root), str(root / SITE)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(dict.fromkeys(parts)), 'PYTHONUNBUFFERED': '1'}


def _run(cmd: Sequence[str], root: Path, log: _Log, timeout: Optional[float] = None,
         interrupt_first: bool = False) -> int:
    """Run ``cmd`` in ``root``, output mirrored to the log; past ``timeout`` it is stopped (SIGINT first if
    ``interrupt_first``, so a trainer can save; then SIGTERM/SIGKILL) and 124 returned."""
    log(f'$ {" ".join(shlex.quote(str(c)) for c in cmd)}')
    proc = subprocess.Popen([str(c) for c in cmd], cwd=root, env=_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    timer = None
    timed_out = threading.Event()
    if timeout is not None:
        def stop():
            timed_out.set()
            _stop(proc, interrupt_first)
        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.raw(line)
    rc = proc.wait()
    if timer is not None:
        timer.cancel()
    if timed_out.is_set():
        log(f'stopped after {timeout:.0f} s (time limit)')
        return 124
    return rc


def _stop(proc: subprocess.Popen, interrupt_first: bool) -> None:
    for sig, grace in ([(signal.SIGINT, 30)] if interrupt_first else []) + [(signal.SIGTERM, 10), (signal.SIGKILL, 0)]:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _digest(path: Path, algorithm: str = 'md5') -> str:
    h = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _unpack(root: Path, unpacker: Path, src: Path, names: Sequence[str], md5: Mapping[str, str], log: _Log,
            only: Optional[str] = None) -> None:
    # unpack.py exits 1 while any batch of the split is missing (each call carries part of them): the md5 list is
    # the check, file by file
    _run([sys.executable, unpacker, root / CIFAR, '--src', src] + (['--only', only] if only else []), root, log)
    bad = []
    for name in names:
        path = root / CIFAR / 'cifar-10-batches-py' / name
        got = _digest(path) if path.is_file() else 'missing'
        if got != md5.get(name):
            bad.append(f'{name} ({got}, expected {md5.get(name)})')
    if bad:
        raise JobError(f'md5 check failed: {", ".join(bad)}.')
    log(f'md5 ok: {", ".join(names)}')


def split_file(path: Path, out: Path, base: str = WEIGHTS, part_bytes: int = PART_BYTES) -> List[Path]:
    """Copy ``path`` into ``out`` as ``base.part-00``, ``-01``, ... of at most ``part_bytes`` each (each part
    written under a temporary name, then renamed); parts left from a longer earlier file are removed."""
    parts = []
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(part_bytes)
            if not chunk and parts:
                break
            part = out / f'{base}.part-{len(parts):02d}'
            tmp = out / f'.{part.name}.tmp'
            tmp.write_bytes(chunk)
            os.replace(tmp, part)
            parts.append(part)
            if len(chunk) < part_bytes:
                break
    for stale in out.glob(f'{base}.part-*'):
        if stale not in parts:
            stale.unlink()
    return parts


class _Stager:
    """Copies files into $OUT as they appear or change; a background thread polls while a phase runs."""

    def __init__(self, out: Path, log: _Log):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.seen: Dict[Path, Tuple[int, int]] = {}
        self.watch: List[Tuple[Path, str]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def stage(self, src: Path, name: str) -> bool:
        """Stage ``src`` as ``name`` (weights: as parts) if it changed since the last time; False if absent."""
        with self._lock:
            if not src.is_file():
                return False
            stat = src.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if self.seen.get(src) == key:
                return True
            if name == WEIGHTS:
                split_file(src, self.out)
            else:
                tmp = self.out / f'.{name}.tmp'
                shutil.copyfile(src, tmp)
                os.replace(tmp, self.out / name)
            after = src.stat()
            if (after.st_mtime_ns, after.st_size) == key:  # unchanged while copying: a consistent copy
                self.seen[src] = key
                self.log(f'staged {src.name} -> $OUT/{name}{" (parts)" if name == WEIGHTS else ""}')
            return True

    def start(self, watch: Sequence[Tuple[Path, str]], every: float = 2.0) -> None:
        self.watch = list(watch)
        self._stop.clear()

        def loop():
            while not self._stop.wait(every):
                for src, name in self.watch:
                    try:
                        self.stage(src, name)
                    except OSError as e:  # a file replaced under us: try again at the next poll
                        self.log(f'staging {src.name} failed for now ({e})')

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for src, name in self.watch:
            self.stage(src, name)

    def check_limits(self) -> None:
        files = [p for p in self.out.iterdir() if p.is_file() and not p.name.startswith('.')]
        big = [p.name for p in files if p.stat().st_size > OUT_MAX_FILE]
        total = _size(files)
        if len(files) > OUT_MAX_FILES or big or total > OUT_MAX_TOTAL:
            raise JobError(f'$OUT holds {len(files)} files ({total / MIB:.1f} MiB; too big: {big or "none"}): '
                           f'the tool returns at most {OUT_MAX_FILES} files of 16 MiB, 64 MiB in all.')


def _out_dir() -> Path:
    out = os.environ.get('OUT')
    if not out:
        raise JobError('OUT is not set: the device tool sets it; elsewhere run with OUT=DIR.')
    return Path(out)


def _install_wheels(root: Path, wheels: Path, log: _Log) -> None:
    found = sorted(wheels.glob('*.whl'))
    if not found:
        raise JobError(f'no wheels in {wheels}: run prepare here first.')
    rc = _run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
               '--no-cache-dir', '--upgrade', '--target', root / SITE] + found, root, log)
    if rc:
        raise JobError(f'pip could not install the carried wheels (exit {rc}).')


def _write_state(root: Path, name: str, state: Mapping[str, Any]) -> None:
    write_json(root / JOB / name, state)


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f'{what} ({path}) is missing or unreadable ({e}).') from None


# ---------------------------------------------------------------------------------------------------------------
# Call a


def job_a(root: PathLike, benchmark_seconds: Optional[float] = None,
          started: Optional[float] = None) -> Dict[str, Any]:
    """First device call: wheels, first half of the data, CUDA tests, benchmark -> the training path for b.
    ``started``: when the call's process started (default: now)."""
    root = Path(root)
    start = started or time.time()
    out = _out_dir()
    log = _Log(out / 'job-a.log')
    settings = JobSettings.from_dict(_read_json(root / CARRY_A / 'job.json', 'the job settings of prepare'))
    state: Dict[str, Any] = {'a_start': start, 'step': 'eager', 'why': 'default'}
    _write_state(root, 'a.json', state)  # b plans from this start time even if a fails later
    log(f'call a on {root}; model {settings.name}')
    log.phase('install wheels', lambda: _install_wheels(root, root / CARRY_A / 'wheels', log))
    log.phase('unpack train_1..3', lambda: _unpack(root, root / CARRY_A / 'unpack.py', root / CARRY_A, BATCHES_A,
                                                    settings.md5, log))
    p = settings.plan
    rc_tests = log.phase('cuda tests', lambda: _run([sys.executable, '-m', 'pytest'] + settings.pytest_args, root,
                                                     log, timeout=p.tests))
    bench = root / JOB / 'benchmark.json'
    bench.unlink(missing_ok=True)
    seconds = p.benchmark if benchmark_seconds is None else benchmark_seconds
    rc_bench = log.phase('benchmark', lambda: _run(
        [sys.executable, 'tools/benchmark.py', '--model', settings.model, '--seconds', f'{seconds:g}',
         '--json', bench, *settings.benchmark_args], root, log, timeout=seconds + 60))
    state.update(tests_rc=rc_tests, benchmark_rc=rc_bench)
    if rc_tests not in (0, 5):  # 5: no test collected (no CUDA tests at all)
        state.update(step='eager', why=f'pytest -m cuda failed (exit {rc_tests}): the fast path is not trusted')
    elif rc_bench != 0 or not bench.is_file():
        state.update(step='eager', why=f'the benchmark failed (exit {rc_bench}): the eager reference path')
    else:
        result = _read_json(bench, 'the benchmark result')
        paths = result.get('paths') or {}
        fastest = result.get('fastest')
        if fastest not in paths:
            state.update(step='eager', why=f'the benchmark named no measured path ({fastest!r})')
        else:
            state.update(step=fastest, why='fastest in the benchmark',
                         seconds_per_epoch={k: (v or {}).get('seconds_per_epoch') for k, v in paths.items()})
        shutil.copyfile(bench, out / 'benchmark.json')
    state['phases'] = log.phases
    state['a_seconds'] = round(time.time() - start, 2)
    _write_state(root, 'a.json', state)
    log(f'training path for b: {state["step"]} ({state["why"]}); call a took {state["a_seconds"]:.0f} s')
    return state


# ---------------------------------------------------------------------------------------------------------------
# Call b


def _train_cmd(settings: JobSettings, minutes: float, step: str) -> List[str]:
    return [sys.executable, 'tools/train.py', '--model', settings.model, '--data', str(CIFAR), '--out', str(RUN),
            '--time-budget', f'{minutes:.3f}', '--step', step, '--fp16', '--no-progress', '--resume',
            *settings.train_args]


def _verify_cmd(settings: JobSettings, weights: Path, minutes: float, summary: Optional[Path]) -> List[str]:
    return [sys.executable, 'tools/verify.py', '--model', settings.model, '--tag', settings.tag, '--weights',
            str(weights), '--data', str(CIFAR), '--preset', 'quick', '--deadline-minutes', f'{minutes:.3f}',
            '--out', str(RUN / 'results.json'), '--no-progress',
            *(['--train-summary', str(summary)] if summary else []), *settings.verify_args]


def job_b(root: PathLike, started: Optional[float] = None, lease_left: Optional[float] = None) -> Dict[str, Any]:
    """Second device call: rest of the data, md5, budgeted training, quick verification, release, staging.
    ``started``: when the call's process started (default: now). ``lease_left``: the device time the tool reported
    left when call a returned (see :meth:`LeasePlan.b_end`); without it b plans from a's recorded start."""
    root = Path(root)
    b_start = started or time.time()
    out = _out_dir()
    log = _Log(out / 'job.log')
    stager = _Stager(out, log)
    settings = JobSettings.from_dict(_read_json(root / CARRY_A / 'job.json', 'the job settings of prepare'))
    a = _read_json(root / JOB / 'a.json', "call a's record (was call a run on this machine, just before?)")
    if not (root / SITE).is_dir():
        raise JobError(f'{root / SITE} is missing: call a did not finish on this machine; run a, then b at once.')
    plan, a_start = settings.plan, float(a['a_start'])
    log(f'call b: {settings.name}, path {a.get("step")} ({a.get("why")}); '
        f'{b_start - a_start:.0f} s after a started; b must end within {plan.b_end(a_start, b_start, lease_left) - b_start:.0f} s')
    state: Dict[str, Any] = {'b_start': b_start, 'a': a, 'lease_left_s': lease_left}
    try:
        log.phase('unpack train_4..5 + test, md5 of all',
                  lambda: _unpack(root, root / CARRY_A / 'unpack.py', root / CARRY_B, BATCHES_ALL, settings.md5, log))
        run = root / RUN
        run.mkdir(parents=True, exist_ok=True)
        budget = train_seconds(plan, a_start, b_start, time.time(), lease_left)
        state['train_budget_s'] = round(budget, 1)
        summary, best, final = run / 'train_summary.json', run / 'best.safetensors', run / 'final.safetensors'
        stager.start([(best, WEIGHTS), (summary, 'train_summary.json')])
        try:
            state['train_rc'] = log.phase(f'train ({budget / 60:.2f} min)', lambda: _run(
                _train_cmd(settings, budget / 60, a.get('step') or 'eager'), root, log,
                timeout=budget + max(plan.train_grace, 0.1 * budget), interrupt_first=True))
        finally:
            stager.stop()
        weights = best if best.is_file() else final
        if not weights.is_file():
            raise JobError(f'training left no weights in {run} (exit {state["train_rc"]}).')
        if weights == final:
            stager.stage(final, WEIGHTS)
        verify_s = plan.b_end(a_start, b_start, lease_left) - time.time() - plan.release
        if verify_s < plan.min_verify:
            log(f'training ran late: verification gets its minimum of {plan.min_verify:.0f} s, not {verify_s:.0f} s')
            verify_s = plan.min_verify
        state['verify_deadline_s'] = round(verify_s, 1)
        (run / 'results.json').unlink(missing_ok=True)  # never stage a report of an earlier run
        stager.start([(run / 'results.json', 'results.json')])
        try:
            rc = log.phase(f'verify ({verify_s / 60:.2f} min)', lambda: _run(
                _verify_cmd(settings, weights.relative_to(root), (verify_s - plan.tool_start) / 60,
                            summary.relative_to(root) if summary.is_file() else None), root, log,
                timeout=verify_s + 30, interrupt_first=True))
            if rc == 2 and summary.is_file():
                log('verify refused the summary (of another checkpoint?): verifying without it')
                again = max(plan.b_end(a_start, b_start, lease_left) - time.time() - plan.release, plan.min_verify)
                rc = log.phase('verify without summary', lambda: _run(
                    _verify_cmd(settings, weights.relative_to(root), (again - plan.tool_start) / 60, None), root, log,
                    timeout=again + 30, interrupt_first=True))
        finally:
            stager.stop()
        state['verify_rc'] = rc
        if not (run / 'results.json').is_file():
            raise JobError(f'verification wrote no report (exit {rc}).')
        cards = run / 'cards'
        rc = log.phase('release folder', lambda: _run(
            [sys.executable, 'tools/make_card.py', str(RUN / 'results.json'), '--out', str(RUN / 'cards'),
             '--overwrite'], root, log))
        folder = cards / settings.name
        if rc or not (folder / 'README.md').is_file():
            raise JobError(f'make_card failed (exit {rc}); weights, summary and results.json are staged.')
        for name in ('config.json', 'results.json', 'README.md'):
            stager.stage(folder / name, name)
        stager.stage(folder / WEIGHTS, WEIGHTS)
        stager.check_limits()
        state['released'] = settings.name
    finally:
        state['phases'] = log.phases
        state['b_seconds'] = round(time.time() - b_start, 2)
        _write_state(root, 'b.json', state)
        log(f'call b took {state["b_seconds"]:.0f} s; staged: {", ".join(sorted(p.name for p in out.iterdir()))}')
    return state


# ---------------------------------------------------------------------------------------------------------------
# verify (a later lease)


def _source_landed(root: Path, settings: Mapping[str, Any]) -> bool:
    """Whether the transfer source prepare-verify named is on this machine (verify-source landed it), with its
    sha256."""
    path = root / str(settings['transfer_from']).partition(':')[2]
    return path.is_file() and _digest(path, 'sha256') == settings.get('transfer_sha256')


def job_verify_source(root: PathLike) -> Dict[str, Any]:
    """The call before verify when a transfer source is carried: it lands ``.data/vs`` on the machine and checks
    the file against the sha256 that prepare-verify recorded."""
    root = Path(root)
    meta = _read_json(root / CARRY_VS / 'source.json', 'the transfer source record of prepare-verify --transfer-from')
    path = root / CARRY_VS / str(meta.get('file'))
    state = {'source': str(path.relative_to(root)), 'origin': meta.get('origin'),
             'sha256': _digest(path, 'sha256') if path.is_file() else 'missing'}
    if state['sha256'] != meta.get('sha256'):
        raise JobError(f'{path}: sha256 {state["sha256"]}, but prepare-verify recorded {meta.get("sha256")}.')
    _write_state(root, 'verify-source.json', state)
    return state


def job_verify(root: PathLike, deadline_minutes: Optional[float] = None, started: Optional[float] = None,
               tool_start: float = LeasePlan.tool_start) -> Dict[str, Any]:
    """One device call: the full suite on a release's weights under a deadline, continued from its results.json;
    the updated results.json is staged each time verify rewrites it. ``started``: the process start."""
    root = Path(root)
    start = started or time.time()
    out = _out_dir()
    log = _Log(out / 'job.log')
    stager = _Stager(out, log)
    v = root / CARRY_V
    settings = _read_json(v / 'job.json', 'the verify settings of prepare-verify')
    config = _read_json(v / 'config.json', 'the release config')
    arch, tag = config.get('architecture'), (config.get('pretrained_cfg') or {}).get('tag')
    if not arch or not tag:
        raise JobError('config.json names no architecture and tag.')
    minutes = deadline_minutes if deadline_minutes is not None else float(settings.get('deadline_minutes', 8.5))
    tool_start = float(settings.get('tool_start', tool_start))
    log.phase('install wheels', lambda: _install_wheels(root, v / 'wheels', log))
    log.phase('unpack test', lambda: _unpack(root, v / 'unpack.py', v, BATCHES_TEST, settings['md5'], log,
                                             only='test'))
    report = root / VOUT / 'results.json'
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(v / 'results.json', report)
    model_flags = fsr_flags({k: v for k, v in (config.get('model_args') or {}).items() if k != 'num_classes'})
    transfer: List[str] = []
    if settings.get('transfer_from'):
        if not _source_landed(root, settings):
            log(f'the transfer source {settings["transfer_from"]} is not on this machine with its sha256 (did '
                f'verify-source run just before, on the same warm machine?): the suite runs without the transfer '
                f'attack')
        else:
            transfer = ['--transfer-from', settings['transfer_from']]
    left = 60 * minutes - (time.time() - start)
    min_verify = float(settings.get('min_verify', LeasePlan.min_verify))
    if left < min_verify:
        log(f'setting up took long: verification gets its minimum of {min_verify:.0f} s, not {left:.0f} s')
        left = min_verify
    stager.start([(report, 'results.json')])
    try:
        rc = log.phase(f'verify --preset full ({left / 60:.2f} min)', lambda: _run(
            [sys.executable, 'tools/verify.py', '--model', arch, '--tag', tag, '--weights', str(CARRY_V / WEIGHTS),
             '--data', str(CIFAR), '--preset', 'full', '--deadline-minutes', f'{(left - tool_start) / 60:.3f}',
             '--resume', str(VOUT / 'results.json'), '--out', str(VOUT / 'results.json'), '--no-progress',
             *model_flags, *transfer], root, log, timeout=left + 30, interrupt_first=True))
    finally:
        stager.stop()
    result = _read_json(report, 'the verify report')
    log(f'verify exit {rc}; complete: {result.get("complete")}; not run: {result.get("not_run")}')
    state = {'rc': rc, 'complete': result.get('complete'), 'not_run': result.get('not_run'), 'phases': log.phases,
             'seconds': round(time.time() - start, 2), 'transfer_from': transfer[1] if transfer else None}
    _write_state(root, 'verify.json', state)
    if rc not in (0, 124, 130):  # 124 / 130: stopped at the time limit; the partial report is staged
        raise JobError(f'tools/verify.py failed (exit {rc}); the report staged is the last one it wrote.')
    return state


# ---------------------------------------------------------------------------------------------------------------
# join (here)


def _expected_sha(folder: Path) -> Tuple[Optional[str], str]:
    for name, keys in (('config.json', ('pretrained_cfg', 'sha256')), ('results.json', ('model', 'sha256')),
                       ('train_summary.json', ('weights', 'best', 'sha256'))):
        path = folder / name
        if path.is_file():
            value: Any = _read_json(path, name)
            for k in keys:
                value = value.get(k) if isinstance(value, dict) else None
            if value:
                return str(value), name
    return None, 'nothing'


def join(src: PathLike, dest: Optional[PathLike] = None) -> Dict[str, Any]:
    """Reassemble ``src``'s ``model.safetensors.part-*`` into ``dest``/model.safetensors (default ``src``) and check
    its sha256 against config.json, results.json or train_summary.json (the first that names one). A release
    (config.json present) gets its card files copied, its robustbench.json written and the folder validated."""
    src = Path(src)
    dest = Path(dest) if dest is not None else src
    parts = sorted(src.glob(f'{WEIGHTS}.part-*'))
    if not parts:
        raise JobError(f'no {WEIGHTS}.part-* files in {src}.')
    want, where = _expected_sha(src)
    if want is None:
        raise JobError(f'{src} holds no config.json, results.json or train_summary.json naming the sha256.')
    dest.mkdir(parents=True, exist_ok=True)
    release = (src / 'config.json').is_file()
    if dest.resolve() != src.resolve():
        names = ('config.json', 'results.json', 'README.md') if release else \
            [p.name for p in src.iterdir() if p.is_file() and '.part-' not in p.name and not p.name.startswith('.')]
        for name in names:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
    tmp = dest / f'.{WEIGHTS}.tmp'
    h = hashlib.sha256()
    with open(tmp, 'wb') as f:
        for part in parts:
            data = part.read_bytes()
            h.update(data)
            f.write(data)
    got = h.hexdigest()
    if got != want:
        tmp.unlink()
        raise JobError(f'joined weights have sha256 {got}, but {where} says {want}.')
    os.replace(tmp, dest / WEIGHTS)
    if dest.resolve() == src.resolve():
        for part in parts:
            part.unlink()
    info: Dict[str, Any] = {'weights': str(dest / WEIGHTS), 'sha256': got, 'checked_against': where}
    if release and all((dest / n).is_file() for n in ('config.json', 'results.json', 'README.md')):
        from .release import ReleaseError, validate_release, write_robustbench
        try:
            write_robustbench(dest)  # derived from config.json and results.json: not transferred
            info['release'] = validate_release(dest).name
        except ReleaseError as e:
            raise JobError(f'the joined folder is not a valid release: {e}') from e
    return info


# ---------------------------------------------------------------------------------------------------------------
# Synthetic CIFAR-10 in the mosaic format, and the rehearsal


#: unpack.py of a synthetic source: the same command line as CIFAR-10's, standard pickles, no canonical md5
_SYNTHETIC_UNPACK = '''#!/usr/bin/env python3
"""Stand-in for CIFAR-10's unpack.py in a SYNTHETIC rehearsal source (fsr_hub.device_job.make_synthetic_source):
same command line, tile i of a mosaic at row i // cols, column i % cols, standard protocol-2 pickles. No
canonical md5 here: the device job checks the md5 list that prepare carried. Exits 1 while a mosaic is missing."""
import argparse
import gzip
import json
import os
import pickle
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def rows(path, n):
    m = np.asarray(Image.open(path).convert("RGB"))
    cols = m.shape[1] // 32
    tiles = [m[(i // cols) * 32:(i // cols + 1) * 32, (i % cols) * 32:(i % cols + 1) * 32] for i in range(n)]
    return np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2).reshape(n, 3072))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out_root")
    p.add_argument("--src", default=HERE)
    p.add_argument("--only", choices=["test", "train"])
    a = p.parse_args(argv)
    meta_path = os.path.join(a.src, "meta.json.gz")
    if not os.path.exists(meta_path):
        meta_path = os.path.join(HERE, "meta.json.gz")
    with gzip.open(meta_path, "rt") as f:
        meta = json.load(f)
    out = os.path.join(a.out_root, "cifar-10-batches-py")
    os.makedirs(out, exist_ok=True)
    names = {"test": NAMES[5:], "train": NAMES[:5]}.get(a.only, NAMES)
    ok = True
    for name in names:
        mosaic = os.path.join(a.src, name.replace("data_batch_", "train_").replace("test_batch", "test") + ".webp")
        if not os.path.exists(mosaic):
            print(f"{name}: missing {mosaic}", file=sys.stderr)
            ok = False
            continue
        m = meta[name]
        entry = {b"batch_label": m["batch_label"].encode(), b"labels": m["labels"],
                 b"data": rows(mosaic, len(m["labels"])), b"filenames": [f.encode() for f in m["filenames"]]}
        with open(os.path.join(out, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
        print(name, "written")
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in meta["label_names"]],
                     b"num_vis": 3072}, f, protocol=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
'''


def _mosaic_name(batch: str) -> str:
    return batch.replace('data_batch_', 'train_').replace('test_batch', 'test') + '.webp'


def make_synthetic_source(folder: PathLike, per_batch: int = 100, seed: int = 0) -> Dict[str, str]:
    """A small CIFAR-10 source folder in the mosaic format (``per_batch`` images per batch, 100 tiles per mosaic
    row, lossless WebP) with meta.json.gz, a stand-in unpack.py and ``md5.json`` (the md5 sums of what that
    unpack.py writes, for the job's check); returns the md5 list."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (10, 3))
    meta: Dict[str, Any] = {'label_names': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                            'horse', 'ship', 'truck']}
    cols = 100
    for name in BATCHES_ALL[:-1]:
        labels = rng.integers(0, 10, per_batch)  # each class its colour, plus noise
        tiles = np.clip(palette[labels][:, None, None, :] + rng.integers(-40, 41, (per_batch, 32, 32, 3)), 0, 255)
        mosaic = np.zeros((-(-per_batch // cols) * 32, min(per_batch, cols) * 32, 3), np.uint8)
        for i, t in enumerate(tiles.astype(np.uint8)):
            mosaic[(i // cols) * 32:(i // cols + 1) * 32, (i % cols) * 32:(i % cols + 1) * 32] = t
        Image.fromarray(mosaic).save(folder / _mosaic_name(name), lossless=True, method=0)
        label = 'testing batch 1 of 1' if name == 'test_batch' else f'training batch {name[-1]} of 5'
        meta[name] = {'batch_label': label, 'labels': labels.tolist(),
                      'filenames': [f'synthetic_{name}_{i:05d}.png' for i in range(per_batch)]}
    with gzip.open(folder / 'meta.json.gz', 'wt') as f:
        json.dump(meta, f)
    (folder / 'unpack.py').write_text(_SYNTHETIC_UNPACK)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(folder / 'unpack.py'), tmp], check=True, capture_output=True)
        md5 = {n: _digest(Path(tmp) / 'cifar-10-batches-py' / n) for n in BATCHES_ALL}
    (folder / 'md5.json').write_text(json.dumps(md5, indent=2) + '\n')
    return md5


def _sandbox(repo: Path, machine: Path) -> None:
    """A copy of what a device call sends of ``repo`` (its tree), made a git work tree when git is there."""
    if machine.exists():
        shutil.rmtree(machine)
    for f in tree_files(repo):
        rel = f.relative_to(repo)
        (machine / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, machine / rel)
    try:
        for cmd in (['git', 'init', '-q'], ['git', 'add', '-A']):
            subprocess.run(cmd, cwd=machine, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pass  # prepare then lists the tree without git


def rehearse(repo: PathLike, work: PathLike, budget_minutes: float = 1.0, verify_minutes: float = 0.5,
             per_batch: int = 50, echo: Callable[[str], None] = print,
             transfer_from: Optional[str] = None) -> Dict[str, Any]:
    """prepare, a and b end to end on the CPU, then a verify call on the release: a synthetic source, a copy of
    the checkout as the machine, the exact commands prepare prints (run with bash, a fake $OUT each), join and
    validation of the release, and the updated results.json re-rendered into a valid release. Call b gets
    ``budget_minutes`` as its command limit (the lease does not bind), the verify call ``verify_minutes``;
    ``transfer_from`` gives the verify call a transfer source (and so the verify-source call before it)."""
    from .release import validate_release, write_card

    repo, work = Path(repo), Path(work)
    if work.exists():
        shutil.rmtree(work)
    timings: List[Dict[str, Any]] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t, cpu = time.time(), _cpu()
        try:
            return fn()
        finally:
            timings.append({'phase': name, 'wall_s': round(time.time() - t, 2), 'cpu_s': round(_cpu() - cpu, 2)})

    states: Dict[str, Dict[str, Any]] = {}

    def device_call(call: Dict[str, Any]) -> None:
        out = work / f'out_{call["name"]}'
        out.mkdir(parents=True)
        echo(f'--- call {call["name"]}: {call["command"]} (carry {call["carry"]}, timeout {call["timeout_s"]} s)')
        t = time.time()
        # the device tool kills a call at timeout_s; a CPU of unknown speed is not held to it: an overrun is
        # reported (the job's own budget logic is what is rehearsed), and only a hung call is stopped
        rc = timed(f'call {call["name"]}', lambda: subprocess.run(
            ['bash', '-c', call['command']], cwd=machine, env={**os.environ, 'OUT': str(out)},
            timeout=call['timeout_s'] + 900, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        if rc.returncode:
            raise JobError(f'call {call["name"]} failed (exit {rc.returncode}):\n{rc.stdout[-3000:]}')
        state = _read_json(machine / JOB / f'{call["name"]}.json', f'record of call {call["name"]}')
        state['over_limit_s'] = round(max(time.time() - t - call['timeout_s'], 0.0), 1)
        state['staged'] = sorted(p.name for p in out.iterdir())
        if len(state['staged']) > OUT_MAX_FILES:
            raise JobError(f'call {call["name"]} staged {len(state["staged"])} files, over {OUT_MAX_FILES}.')
        states[call['name']] = state

    md5 = timed('synthetic source', lambda: make_synthetic_source(work / 'source', per_batch))
    machine = work / 'machine'
    timed('copy of the checkout', lambda: _sandbox(repo, machine))
    b = 60 * budget_minutes
    plan = LeasePlan(lease=1e6, startup=0, a=60, gap=0, after=0, margin=0, command_limit=b, command_margin=3,
                     unpack=3, tests=60, benchmark=3, verify=0.25 * b, release=0.25 * b, min_train=20,
                     train_grace=60, min_verify=20, tool_start=10)
    settings = JobSettings(
        model='fsr_resnet18', tag='at_cifar10', md5=md5, plan=plan,
        train_args=['--max-train-images', '16', '--holdout', '16', '--batch-size', '16', '--eval-batch-size', '16',
                    '--steps', '1', '--eval-steps', '1', '--device', 'cpu'],
        verify_args=['--batch-size', '25', '--device', 'cpu'],
        pytest_args=['-m', 'cuda', '-q', '-p', 'no:cacheprovider', 'tests/test_evaluate.py'],
        benchmark_args=['--batch-size', '8', '--steps', '1', '--batches', '1', '--no-eval'])
    prepared = timed('prepare', lambda: prepare(machine, work / 'source', settings))
    for call in prepared['calls']:
        device_call(call)
    name = settings.name
    release = work / 'release' / name
    joined = timed('join + validate', lambda: join(work / 'out_b', release))
    verified: Optional[Dict[str, Any]] = None
    if verify_minutes:
        pv = timed('prepare-verify', lambda: prepare_verify(machine, work / 'source', release, verify_minutes, md5,
                                                            tool_start=plan.tool_start, min_verify=plan.min_verify,
                                                            transfer_from=transfer_from))
        for call in pv['calls']:
            device_call(call)
        shutil.copyfile(work / 'out_verify' / 'results.json', release / 'results.json')
        write_card(release)
        validate_release(release)
        verified = _read_json(release / 'results.json', 'the verified report')
    rows = [{'call': call, **ph} for call in states for ph in states[call].get('phases', [])]
    report = {'calls': prepared['calls'], 'sizes_mib': prepared['sizes_mib'], 'plan': plan_lines(LeasePlan()),
              'phases': rows, 'outer': timings, 'join': joined,
              'over_limit_s': {k: v['over_limit_s'] for k, v in states.items()},
              'step': states['a'].get('step'), 'step_why': states['a'].get('why'),
              'train_budget_s': states['b'].get('train_budget_s'), 'staged': states['b']['staged'],
              'verify': None if verified is None else {'complete': verified.get('complete'),
                                                       'results': sorted(verified['results']),
                                                       'not_run': verified.get('not_run'),
                                                       'transfer_from': states['verify'].get('transfer_from')}}
    echo('The lease plan (device, 15 min):')
    for line in report['plan']:
        echo('  ' + line)
    echo(f'Rehearsal here (CPU; call b given {budget_minutes:g} min, training {report["train_budget_s"]} s; '
         f'verify call {verify_minutes:g} min), measured per phase:')
    for r in rows:
        echo(f'  call {r["call"]:<7} {r["phase"]:<40} wall {r["wall_s"]:7.1f} s  cpu {r["cpu_s"]:7.1f} s'
             f'{"" if r["ok"] else "  FAILED"}')
    for r in timings:
        echo(f'  here         {r["phase"]:<40} wall {r["wall_s"]:7.1f} s  cpu {r["cpu_s"]:7.1f} s')
    for call, over in report['over_limit_s'].items():
        if over:
            echo(f'  NOTE: call {call} ran {over} s past its timeout_s here (the device would have stopped it; the '
                 f'staged files up to then come back)')
    echo(f'staged by b: {", ".join(report["staged"])}; joined {joined["weights"]} (sha256 checked against '
         f'{joined["checked_against"]}; release {joined.get("release")} validates)')
    if verified is not None:
        echo(f'verify call: results {", ".join(report["verify"]["results"])}; complete {verified.get("complete")}; '
             f'the re-rendered release validates')
    return report
