"""On the machine, during a call: the log with phase timings, subprocesses under a time limit, unpacking with the
md5 check, and the staging of files into ``$OUT`` (weights in parts); here, afterwards: joining the parts."""
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from fsr_hub.checkpoint import write_json

from .plan import (
    CIFAR, JOB, MIB, OUT_MAX_FILE, OUT_MAX_FILES, OUT_MAX_TOTAL, PART_BYTES, SITE, WEIGHTS, JobError, PathLike, mmss,
)

__all__ = ['Log', 'Stager', 'run', 'unpack', 'digest', 'split_file', 'join_parts', 'join', 'read_json', 'write_state',
           'out_dir', 'install_wheels', 'cpu_seconds']


class Log:
    """Phase timings (wall and CPU seconds of this process and its children) and a log mirrored to $OUT."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.time()
        self.phases: List[Dict[str, Any]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('')

    def __call__(self, text: str) -> None:
        line = f'[+{mmss(time.time() - self.t0)}] {text}'
        print(line, flush=True)
        with open(self.path, 'a') as f:
            f.write(line + '\n')

    def raw(self, text: str) -> None:
        """Subprocess output, as it comes."""
        sys.stdout.write(text)
        sys.stdout.flush()
        with open(self.path, 'a') as f:
            f.write(text)

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as the phase ``name``: logged, timed and recorded even when it fails."""
        self(f'{name} ...')
        t, cpu = time.time(), cpu_seconds()
        ok = False
        try:
            result = fn()
            ok = True
            return result
        finally:
            rec = {'phase': name, 'wall_s': round(time.time() - t, 2), 'cpu_s': round(cpu_seconds() - cpu, 2), 'ok': ok}
            self.phases.append(rec)
            self(f'{name}: {"done" if ok else "FAILED"} in {rec["wall_s"]:.1f} s (cpu {rec["cpu_s"]:.1f} s)')


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _env(root: Path) -> Dict[str, str]:
    """The environment of a subprocess: the checkout and the carried wheels first on the import path."""
    parts = [str(root), str(root / SITE)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(dict.fromkeys(parts)), 'PYTHONUNBUFFERED': '1'}


def run(cmd: Sequence[str], root: Path, log: Log, timeout: Optional[float] = None,
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


def digest(path: Path, algorithm: str = 'md5') -> str:
    """Hex digest of a file."""
    h = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def unpack(root: Path, unpacker: Path, src: Path, names: Sequence[str], md5: Mapping[str, str], log: Log,
           only: Optional[str] = None) -> None:
    """Unpack the mosaics in ``src`` with the source's ``unpacker`` and check the batches ``names`` against ``md5``."""
    # unpack.py exits 1 while any batch of the split is missing (each call carries part of them): the md5 list is
    # the check, file by file
    run([sys.executable, unpacker, root / CIFAR, '--src', src] + (['--only', only] if only else []), root, log)
    bad = []
    for name in names:
        path = root / CIFAR / 'cifar-10-batches-py' / name
        got = digest(path) if path.is_file() else 'missing'
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


def join_parts(parts: Sequence[Path], dest: Path, want: str, what: str, where: str) -> str:
    """Concatenate ``parts`` into ``dest`` (written under a temporary name, renamed only if its sha256 is
    ``want``); returns the sha256, or a JobError naming ``what`` was joined and ``where`` the sum comes from."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f'.{dest.name}.tmp'
    h = hashlib.sha256()
    with open(tmp, 'wb') as f:
        for part in parts:
            data = part.read_bytes()
            h.update(data)
            f.write(data)
    got = h.hexdigest()
    if got != want:
        tmp.unlink()
        raise JobError(f'{what} have sha256 {got}, but {where} says {want}.')
    os.replace(tmp, dest)
    return got


class Stager:
    """Copies files into $OUT as they appear or change; a background thread polls while a phase runs."""

    def __init__(self, out: Path, log: Log):
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
        """Poll ``watch`` (source, staged name) every ``every`` seconds until :meth:`stop`."""
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
        """End the polling and stage the watched files one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for src, name in self.watch:
            self.stage(src, name)

    def check_limits(self) -> None:
        """A JobError if $OUT holds more than comes back from a call."""
        files = [p for p in self.out.iterdir() if p.is_file() and not p.name.startswith('.')]
        big = [p.name for p in files if p.stat().st_size > OUT_MAX_FILE]
        total = sum(p.stat().st_size for p in files)
        if len(files) > OUT_MAX_FILES or big or total > OUT_MAX_TOTAL:
            raise JobError(f'$OUT holds {len(files)} files ({total / MIB:.1f} MiB; too big: {big or "none"}): '
                           f'at most {OUT_MAX_FILES} files of 16 MiB, 64 MiB in all, come back from a call.')


def out_dir() -> Path:
    """``$OUT``, the folder whose files come back from the call."""
    out = os.environ.get('OUT')
    if not out:
        raise JobError('OUT is not set: the machine sets it for a call; elsewhere run with OUT=DIR.')
    return Path(out)


def install_wheels(root: Path, wheels: Path, log: Log) -> None:
    """Install the carried wheels into ``.data/site`` (no index, no dependencies)."""
    found = sorted(wheels.glob('*.whl'))
    if not found:
        raise JobError(f'no wheels in {wheels}: run prepare here first.')
    rc = run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
              '--no-cache-dir', '--upgrade', '--target', root / SITE] + found, root, log)
    if rc:
        raise JobError(f'pip could not install the carried wheels (exit {rc}).')


def write_state(root: Path, name: str, state: Mapping[str, Any]) -> None:
    """Record of a call in ``.data/job/``, for the calls after it."""
    write_json(root / JOB / name, state)


def read_json(path: Path, what: str) -> Dict[str, Any]:
    """A JSON file, or a JobError naming ``what`` it should have been."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f'{what} ({path}) is missing or unreadable ({e}).') from None


def _expected_sha(folder: Path) -> Tuple[Optional[str], str]:
    """The sha256 the first of config.json, results.json, train_summary.json names, and which one did."""
    for name, keys in (('config.json', ('pretrained_cfg', 'sha256')), ('results.json', ('model', 'sha256')),
                       ('train_summary.json', ('weights', 'best', 'sha256'))):
        path = folder / name
        if path.is_file():
            value: Any = read_json(path, name)
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
        # a release's card files and the plots its card embeds (e.g. per_class.png)
        if release:
            names = ['config.json', 'results.json', 'README.md'] + sorted(p.name for p in src.glob('*.png'))
        else:
            names = [p.name for p in src.iterdir()
                     if p.is_file() and '.part-' not in p.name and not p.name.startswith('.')]
        for name in names:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
    got = join_parts(parts, dest / WEIGHTS, want, 'joined weights', where)
    if dest.resolve() == src.resolve():
        for part in parts:
            part.unlink()
    info: Dict[str, Any] = {'weights': str(dest / WEIGHTS), 'sha256': got, 'checked_against': where}
    if release and all((dest / n).is_file() for n in ('config.json', 'results.json', 'README.md')):
        from fsr_hub.release import ReleaseError, validate_release, write_robustbench
        try:
            write_robustbench(dest)  # derived from config.json and results.json: not transferred
            info['release'] = validate_release(dest).name
        except ReleaseError as e:
            raise JobError(f'the joined folder is not a valid release: {e}') from e
    return info
