"""The whole run rehearsed here on the CPU: a synthetic CIFAR-10 source in the mosaic format, a copy of the checkout
as the machine, and the exact commands ``prepare`` prints, each run with bash and a fake ``$OUT``."""
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .plan import BATCHES_ALL, OUT_MAX_FILES, JOB, JobError, JobSettings, LeasePlan, PathLike, plan_lines
from .prepare import prepare, prepare_verify, tree_files
from .staging import cpu_seconds, digest, join, read_json

__all__ = ['make_synthetic_source', 'rehearse']

#: the stand-in of CIFAR-10's unpack.py that a synthetic source carries
UNPACK_SCRIPT = Path(__file__).with_name('synthetic_unpack.py')


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
    shutil.copyfile(UNPACK_SCRIPT, folder / 'unpack.py')
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(folder / 'unpack.py'), tmp], check=True, capture_output=True)
        md5 = {n: digest(Path(tmp) / 'cifar-10-batches-py' / n) for n in BATCHES_ALL}
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


def _rehearsal_settings(md5: Dict[str, str], budget_minutes: float) -> JobSettings:
    """Job settings sized for a CPU: tiny training and verification, call b's command limit ``budget_minutes``,
    no lease to bind it."""
    b = 60 * budget_minutes
    plan = LeasePlan(lease=1e6, startup=0, a=60, gap=0, after=0, margin=0, command_limit=b, command_margin=3,
                     unpack=3, tests=60, benchmark=3, verify=0.25 * b, release=0.25 * b, min_train=20,
                     train_grace=60, min_verify=20, tool_start=10)
    return JobSettings(
        model='fsr_resnet18', tag='at_cifar10', md5=md5, plan=plan,
        train_args=['--max-train-images', '16', '--holdout', '16', '--batch-size', '16', '--eval-batch-size', '16',
                    '--steps', '1', '--eval-steps', '1', '--device', 'cpu'],
        verify_args=['--batch-size', '25', '--device', 'cpu'],
        pytest_args=['-m', 'cuda', '-q', '-p', 'no:cacheprovider', 'tests/test_evaluate.py'],
        benchmark_args=['--batch-size', '8', '--steps', '1', '--batches', '1', '--no-eval'])


class _Rehearsal:
    """The scratch folder, the copy of the checkout as the machine, each phase's timing and each call's record."""

    def __init__(self, work: Path, echo: Callable[[str], None]):
        self.work, self.machine, self.echo = work, work / 'machine', echo
        self.timings: List[Dict[str, Any]] = []
        self.states: Dict[str, Dict[str, Any]] = {}

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, its wall and CPU seconds recorded as the phase ``name`` here."""
        t, cpu = time.time(), cpu_seconds()
        try:
            return fn()
        finally:
            self.timings.append({'phase': name, 'wall_s': round(time.time() - t, 2),
                                 'cpu_s': round(cpu_seconds() - cpu, 2)})

    def device_call(self, call: Dict[str, Any]) -> None:
        """Run a device call as the machine would: its command with bash in the machine's copy, a fake $OUT."""
        out = self.work / f'out_{call["name"]}'
        out.mkdir(parents=True)
        self.echo(f'--- call {call["name"]}: {call["command"]} (carry {call["carry"]}, timeout {call["timeout_s"]} s)')
        t = time.time()
        # the machine stops a call at timeout_s; a CPU of unknown speed is not held to it: an overrun is
        # reported (the job's own budget logic is what is rehearsed), and only a hung call is stopped
        rc = self.timed(f'call {call["name"]}', lambda: subprocess.run(
            ['bash', '-c', call['command']], cwd=self.machine, env={**os.environ, 'OUT': str(out)},
            timeout=call['timeout_s'] + 900, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        if rc.returncode:
            raise JobError(f'call {call["name"]} failed (exit {rc.returncode}):\n{rc.stdout[-3000:]}')
        state = read_json(self.machine / JOB / f'{call["name"]}.json', f'record of call {call["name"]}')
        state['over_limit_s'] = round(max(time.time() - t - call['timeout_s'], 0.0), 1)
        state['staged'] = sorted(p.name for p in out.iterdir())
        if len(state['staged']) > OUT_MAX_FILES:
            raise JobError(f'call {call["name"]} staged {len(state["staged"])} files, over {OUT_MAX_FILES}.')
        self.states[call['name']] = state

    def verify_release(self, release: Path, md5: Dict[str, str], plan: LeasePlan, verify_minutes: float,
                       transfer_from: Optional[str]) -> Dict[str, Any]:
        """The later verify call(s) on ``release``; the staged results.json re-rendered into a valid release."""
        from fsr_hub.release import validate_release, write_card

        pv = self.timed('prepare-verify', lambda: prepare_verify(
            self.machine, self.work / 'source', release, verify_minutes, md5, tool_start=plan.tool_start,
            min_verify=plan.min_verify, transfer_from=transfer_from))
        for call in pv['calls']:
            self.device_call(call)
        shutil.copyfile(self.work / 'out_verify' / 'results.json', release / 'results.json')
        write_card(release)
        validate_release(release)
        return read_json(release / 'results.json', 'the verified report')


def rehearse(repo: PathLike, work: PathLike, budget_minutes: float = 1.0, verify_minutes: float = 0.5,
             per_batch: int = 50, echo: Callable[[str], None] = print,
             transfer_from: Optional[str] = None) -> Dict[str, Any]:
    """prepare, a and b end to end on the CPU, then a verify call on the release: a synthetic source, a copy of
    the checkout as the machine, the exact commands prepare prints (run with bash, a fake $OUT each), join and
    validation of the release, and the updated results.json re-rendered into a valid release. Call b gets
    ``budget_minutes`` as its command limit (the lease does not bind), the verify call ``verify_minutes``;
    ``transfer_from`` gives the verify call a transfer source (and so the verify-source call before it)."""
    repo, work = Path(repo), Path(work)
    if work.exists():
        shutil.rmtree(work)
    r = _Rehearsal(work, echo)
    md5 = r.timed('synthetic source', lambda: make_synthetic_source(work / 'source', per_batch))
    r.timed('copy of the checkout', lambda: _sandbox(repo, r.machine))
    settings = _rehearsal_settings(md5, budget_minutes)
    prepared = r.timed('prepare', lambda: prepare(r.machine, work / 'source', settings))
    for call in prepared['calls']:
        r.device_call(call)
    release = work / 'release' / settings.name
    joined = r.timed('join + validate', lambda: join(work / 'out_b', release))
    verified = r.verify_release(release, md5, settings.plan, verify_minutes, transfer_from) if verify_minutes \
        else None
    states = r.states
    rows = [{'call': call, **ph} for call in states for ph in states[call].get('phases', [])]
    report = {'calls': prepared['calls'], 'sizes_mib': prepared['sizes_mib'], 'plan': plan_lines(LeasePlan()),
              'phases': rows, 'outer': r.timings, 'join': joined,
              'over_limit_s': {k: v['over_limit_s'] for k, v in states.items()},
              'step': states['a'].get('step'), 'step_why': states['a'].get('why'),
              'train_budget_s': states['b'].get('train_budget_s'), 'staged': states['b']['staged'],
              'verify': None if verified is None else {'complete': verified.get('complete'),
                                                       'results': sorted(verified['results']),
                                                       'not_run': verified.get('not_run'),
                                                       'transfer_from': states['verify'].get('transfer_from')}}
    _echo_report(report, budget_minutes, verify_minutes, verified, echo)
    return report


def _echo_report(report: Dict[str, Any], budget_minutes: float, verify_minutes: float,
                 verified: Optional[Dict[str, Any]], echo: Callable[[str], None]) -> None:
    """The lease plan and each phase's measured wall and CPU time, in words."""
    echo('The lease plan (device, 15 min):')
    for line in report['plan']:
        echo('  ' + line)
    echo(f'Rehearsal here (CPU; call b given {budget_minutes:g} min, training {report["train_budget_s"]} s; '
         f'verify call {verify_minutes:g} min), measured per phase:')
    for r in report['phases']:
        echo(f'  call {r["call"]:<7} {r["phase"]:<40} wall {r["wall_s"]:7.1f} s  cpu {r["cpu_s"]:7.1f} s'
             f'{"" if r["ok"] else "  FAILED"}')
    for r in report['outer']:
        echo(f'  here         {r["phase"]:<40} wall {r["wall_s"]:7.1f} s  cpu {r["cpu_s"]:7.1f} s')
    for call, over in report['over_limit_s'].items():
        if over:
            echo(f'  NOTE: call {call} ran {over} s past its timeout_s here (the machine would have stopped it; the '
                 f'staged files up to then come back)')
    joined = report['join']
    echo(f'staged by b: {", ".join(report["staged"])}; joined {joined["weights"]} (sha256 checked against '
         f'{joined["checked_against"]}; release {joined.get("release")} validates)')
    if verified is not None:
        echo(f'verify call: results {", ".join(report["verify"]["results"])}; complete {verified.get("complete")}; '
             f'the re-rendered release validates')
