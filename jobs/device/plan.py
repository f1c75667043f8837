"""What a short GPU run is planned with: the limits of the rented machine, the files each call carries, the
time budget of the calls, and the settings ``prepare`` writes for them."""
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from fsr_hub.catalog import release_name

PathLike = Union[str, os.PathLike]
MIB = 1024 * 1024
#: what one call may carry (tree + carried folders), below the machine's 64 MiB per call
CALL_LIMIT_MIB = 60
#: weight parts staged in $OUT (what comes back: files of at most 16 MiB, 8 files, 64 MiB in all)
PART_BYTES = 15 * MIB
OUT_MAX_FILES, OUT_MAX_FILE, OUT_MAX_TOTAL = 8, 16 * MIB, 64 * MIB
WEIGHTS = 'model.safetensors'

DATA = Path('.data')
CARRY_A, CARRY_B, CARRY_V, CARRY_VS = DATA / 'a', DATA / 'b', DATA / 'v', DATA / 'vs'
CARRY_R = DATA / 'r'  # + 1, 2, ...: the parts of a run state continued from an earlier lease (jobs.device.lease_state)
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
#: call b's verification (fsr_hub.evaluate PRESETS): the floors' metrics on all test images, the slow ones on 1,000
VERIFY_PRESET = 'lease'
#: how every call starts on the machine (in the checkout sent there)
COMMAND_PREFIX = 'export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD; python3 tools/device_job.py'


class JobError(RuntimeError):
    """A step of the device job cannot go on (one-line message)."""


@dataclass(frozen=True)
class LeasePlan:
    """Seconds of a lease (one rented machine session): what the job plans with, the machine's limits and our
    margins."""
    lease: float = 900.0  # device time of one session, start-up, transfers and idle included
    startup: float = 120.0  # machine start and transfer of call a, before a starts (assumed)
    a: float = 150.0  # call a's target
    gap: float = 30.0  # a's files come back, b's tree is sent and b starts
    after: float = 45.0  # b's files come back and the machine idles 30 s before it is given back
    margin: float = 30.0  # kept free on the lease
    command_limit: float = 600.0  # one command's limit
    command_margin: float = 20.0  # b ends this long before its command limit
    unpack: float = 10.0  # b: unpack the second half and check every md5 (H200 lease, 2026-12-04: 3.4 s)
    tests: float = 75.0  # a: pytest -m 'cuda and not slow', at most (imports and CUDA start-up included)
    # a: benchmark seconds (eager and cuda-graph, FSR and vanilla); H200 lease, 2026-12-04: 20 s took 23.0 s and gave
    # the s/epoch that 40 s (29.8 s) gave (fsr_resnet18 cuda-graph 12.40 vs 12.46)
    benchmark: float = 20.0
    # b: the verification's share (it also gets whatever training leaves): --preset lease on the third H200 lease of
    # 2026-12-04: attacks 38.4 s (clean 1.0, FGSM 1.7, PGD-20 21.7 s on 10,000; C&W 3.3, PGD-100 10.7 s on 1,000),
    # 52.5 s with the tool's start
    verify: float = 70.0
    release: float = 25.0  # b: card, release folder, staging (H200 lease, 2026-12-04: 10.1 s)
    min_train: float = 60.0  # b trains at least this long, even when the lease is late
    train_grace: float = 30.0  # past its budget (and 10 %), training is interrupted (it keeps its last epoch)
    min_verify: float = 30.0  # and verifies at least this long (clean, FGSM and PGD-20 on the test set)
    tool_start: float = 20.0  # a tool's imports and model loading, before its own deadline clock starts
    # a run of fixed --epochs over several leases (jobs.device.lease_state): b packs and stages the state of an
    # unfinished run, a c call after b stages the rest of it (its gap included)
    pack: float = 15.0
    c: float = 30.0
    r: float = 25.0  # an r call before a: ~50 MiB sent, the sha256 of its parts checked (assumed)
    # the trainer's start (imports, data, model) and the first epoch's CUDA-graph capture, beyond a steady epoch:
    # H200, 2026-12-04, fourth lease: 26.6 s (first epoch ended 38 s after the command, then 11.36 s per epoch)
    capture: float = 27.0
    # an epoch's held-out evaluation (1.8 s every few epochs) and checkpoint writes, on top of its training time
    epoch_overhead: float = 1.1

    def b_end(self, a_start: float, b_start: float, lease_left: Optional[float] = None, reserve: float = 0.0) -> float:
        """Wall-clock time by which call b must have ended (the earlier of lease and command limit).

        ``lease_left``: the device time left when call a returned, as the machine's reply to a reports it; b then
        started ``gap`` seconds after that. Without it, the lease is assumed to have started ``startup`` seconds
        before call a. ``reserve``: lease time kept for calls after b."""
        if lease_left is not None:
            lease_end = b_start - self.gap + lease_left - self.after - self.margin
        else:
            lease_end = a_start - self.startup + self.lease - self.after - self.margin
        return min(lease_end - reserve, b_start + self.command_limit - self.command_margin)

    def fixed_epochs_budget(self, b_end: float, now: float, epochs_left: int, seconds_per_epoch: Optional[float],
                            leave_end: Optional[float] = None) -> Tuple[float, bool]:
        """Training seconds of call b in a run of fixed epochs, and whether the run finishes in them (then b also
        verifies and releases by ``b_end``; otherwise it trains to ``leave_end``, default ``b_end``, and leaves the
        run's state for the next lease: an earlier end when c calls must follow)."""
        full = b_end - now - self.verify - self.release
        if seconds_per_epoch and self.capture + epochs_left * seconds_per_epoch * self.epoch_overhead <= full:
            return max(full, self.min_train), True
        end = b_end if leave_end is None else leave_end
        return max(end - now - self.pack, self.min_train), False


def train_seconds(plan: LeasePlan, a_start: float, b_start: float, now: float,
                  lease_left: Optional[float] = None) -> float:
    """Training budget of call b at time ``now``: what is left before b must end, minus verification and release
    (at least ``plan.min_train``)."""
    return max(plan.b_end(a_start, b_start, lease_left) - now - plan.verify - plan.release, plan.min_train)


def mmss(seconds: float) -> str:
    """``seconds`` as mm:ss."""
    s = int(round(seconds))
    return f'{s // 60:02d}:{s % 60:02d}'


def plan_lines(plan: LeasePlan, epochs: Optional[int] = None, r_calls: int = 0) -> List[str]:
    """The minute-by-minute budget of a lease when every step takes its planned time (``epochs``: of a run of
    fixed epochs, as its last lease runs it; ``r_calls``: the calls before a that carry an earlier lease's state)."""
    a0 = plan.startup + r_calls * plan.r
    a1 = a0 + plan.a
    b0 = a1 + plan.gap
    left = plan.lease - a1  # what the device tool reports after a: r calls and start-up are spent
    b_end = plan.b_end(a0, b0, lease_left=left)
    t_train = train_seconds(plan, a0, b0, b0 + plan.unpack, lease_left=left)
    t1 = b0 + plan.unpack + t_train
    t2 = b_end - plan.release
    rows = [(0, plan.startup, f'machine start-up and transfer of call {"r1" if r_calls else "a"} (assumed)')]
    rows += [(plan.startup + k * plan.r, plan.startup + (k + 1) * plan.r,
              f'call r{k + 1}: part of the earlier lease\'s run state, its sha256 checked') for k in range(r_calls)]
    rows += [
        (a0, a1, f'call a: install wheels, unpack train_1..3, pytest -m "cuda and not slow" (<= {plan.tests:.0f} s), '
                 f'benchmark ({plan.benchmark:.0f} s), choose the training path'),
        (a1, b0, 'a returns; call b is sent and starts'),
        (b0, b0 + plan.unpack, 'call b: unpack train_4..5 + test, md5 of all 7 files'),
        (b0 + plan.unpack, t1, (f'train (--time-budget {t_train / 60:.2f} min' if epochs is None else
                                f'train the epochs left of {epochs} ({t_train / 60:.2f} min if they fit; if not, to '
                                f'b\'s end less {plan.pack:.0f} s, then the run\'s state is staged for the next '
                                f'lease, with a c call after b, instead of verify and release') +
                               '; best checkpoint + summary staged as they appear)'),
        (t1, t2, f'verify the best checkpoint (--preset {VERIFY_PRESET}, deadline {plan.verify / 60:.2f} min + '
                 f'whatever training left)'),
        (t2, b_end, 'release folder (make_card), weights in 15 MiB parts, stage in $OUT'),
        (b_end, b_end + plan.after, 'b returns; 30 s idle, then the machine is given back'),
        (b_end + plan.after, plan.lease, 'margin'),
    ]
    return [f'{mmss(s)}-{mmss(e)}  {what}' for s, e, what in rows]


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
    #: None: train what the lease allows (--time-budget); N: a run of N epochs, continued over as many leases as it
    #: takes (the state of an unfinished run comes back in parts, and goes to the next lease with r calls)
    epochs: Optional[int] = None
    #: metric -> the least accuracy (%) on all test images for a release; a run below any is not released
    floors: Dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The release: ``model.tag``."""
        return release_name(self.model, self.tag)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as JSON-ready data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'JobSettings':
        """Settings read back from ``job.json``; a JobError if they do not fit."""
        d = dict(d)
        try:
            d['plan'] = LeasePlan(**d.get('plan', {}))
            return cls(**d)
        except TypeError as e:
            raise JobError(f'job settings are malformed ({e}); run prepare again.') from None

