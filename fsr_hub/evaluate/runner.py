"""The state of one evaluation (:class:`EvaluationRun`): what ran, what did not and why, what an earlier
evaluation already measured, and the snapshot ``on_update`` receives and the report holds."""
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.nn as nn

from ..attack_registry import CLEAN, ENSEMBLE, ENSEMBLE_ATTACKS, MASKING, SOURCE_ATTACKS, SPECS
from ..autoattack import AA_KEYS, departures, pack_flags, unpack_flags
from ..hardware import MEMORY_FORMATS, hardware_name, strict_float32
from .checks import STEPS_SWEEP, masking_section
from .config import EvalConfig
from .measure import Clock, DeadlineReached, assert_eval, pct, per_class, subset_label
from .stages import BATCH_COST, STAGES, masking_stage

__all__ = ['PENDING', 'EvaluationRun', 'run_evaluation']

PENDING = 'not reached: the run stopped before this stage (killed, crashed or still running)'

Snapshot = Dict[str, Any]


class EvaluationRun:
    """One evaluation of ``model`` on (x, y): the stages of ``config`` and their report entries so far."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                 transfer_model: Optional[nn.Module] = None, previous: Optional[Mapping[str, Any]] = None,
                 on_update: Optional[Callable[[Snapshot], None]] = None):
        self.model, self.x, self.y, self.config = model, x, y, config
        self.transfer_model = transfer_model
        self.on_update = on_update
        self.clock = Clock(None if config.deadline_minutes is None else 60 * config.deadline_minutes)
        self.stages = config.stages
        self.precision: Dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self.results: Dict[str, Dict[str, Any]] = {}
        self.flags: Dict[str, torch.Tensor] = {}
        self.masking: Optional[Dict[str, Any]] = None
        self.not_run: Dict[str, str] = {s: PENDING for s in self.stages}
        #: saved progress of the resumable stages (AutoAttack, NAttack, the masking checks)
        self.saved_progress: Dict[str, Dict[str, Any]] = {}
        #: PGD-100's iterates at each k of the steps sweep
        self.traj: Dict[int, List[torch.Tensor]] = {k: [] for k in STEPS_SWEEP}
        self.current: Optional[str] = None
        self.resumed: List[str] = []
        #: whether the continued evaluation ran on a machine like this one (its speeds then plan this run)
        self.same_machine = True
        if previous is not None:
            self._adopt(previous)

    # -- continuing an earlier evaluation -------------------------------------------------------------------
    def _adoptable(self, name: str, entry: Mapping[str, Any], n: int) -> bool:
        if n != self.n_images(name):
            return False  # measured on another subset: run again
        params = self.config.params(name)
        if params and entry.get('params') != params:
            return False  # measured with other parameters: run again
        if name in AA_KEYS and departures(entry.get('params'), AA_KEYS[name], self.config.eps):
            return False  # not the original AutoAttack (or not recorded as such): run again
        return name not in SOURCE_ATTACKS or entry.get('source') == self.config.source  # else: another source

    def _adopt(self, prev: Mapping[str, Any]) -> None:
        # another machine's speed would misplan the deadline (a CPU's would keep a GPU from starting a stage)
        self.same_machine = (prev.get('hardware') or {}).get('device') in (None, hardware_name(self.config.device))
        per_example = prev.get('per_example') or {}
        for name, entry in (prev.get('results') or {}).items():
            if name not in self.stages or name not in per_example:
                continue
            n = int(entry.get('n', len(self.y)))
            if not self._adoptable(name, entry, n):
                continue
            self.results[name] = dict(entry)
            self.flags[name] = unpack_flags(per_example[name], n)
            self.not_run.pop(name, None)
            self.resumed.append(name)
            if self.same_machine and name in BATCH_COST and isinstance(entry.get('seconds'), (int, float)):
                self.clock.record(BATCH_COST[name] * n, entry['seconds'])  # the speed measured then plans this run
        m = prev.get('masking_checks')
        if MASKING in self.stages and isinstance(m, dict) and m.get('n') == self.n_images(MASKING):
            self.masking = dict(m)
            self.not_run.pop(MASKING, None)
            self.resumed.append(MASKING)
        for name, st in (prev.get('progress') or {}).items():
            if name in self.not_run and isinstance(st, dict):
                self.saved_progress[name] = dict(st)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def n_images(self, stage: str) -> int:
        """Images ``stage`` runs on (the first n)."""
        return self.config.n_images(stage, len(self.y))

    def clean_accuracy(self) -> float:
        """Clean accuracy (%) when measured, else 100 (for estimates)."""
        return self.results.get(CLEAN, {}).get('accuracy', 100.0)

    def finish(self, name: str, entry: Dict[str, Any], correct: torch.Tensor) -> None:
        """Record a finished stage: its report entry and per-example correctness."""
        self.results[name] = entry
        self.flags[name] = correct
        self.not_run.pop(name)

    def skip_if_late(self, name: str, units: float, what: Optional[str] = None) -> bool:
        """True (and ``name`` listed as not run) if ``units`` gradient evaluations do not fit the deadline;
        ``what``: the part of the stage they measure, when not all of it (named in the reason)."""
        need = self.clock.estimate(units)
        if self.clock.fits(need):
            return False
        self.not_run[name] = self.clock.reason(need, what)
        return True

    def _ensemble(self, results: Dict[str, Any], not_run: Dict[str, str]) -> None:
        # the Ensemble is reported only over every suite attack asked for (never a smaller, weaker one), on the
        # first images all of them ran on (each ran on a first-n subset)
        ens = [a for a in ENSEMBLE_ATTACKS if a in self.stages]
        missing = [a for a in ens if a not in self.flags]
        if len(ens) >= 2 and missing:
            not_run[ENSEMBLE] = f'needs {", ".join(missing)}'
        elif len(ens) >= 2:
            k = min(len(self.flags[a]) for a in ens)
            correct = torch.stack([self.flags[a][:k] for a in ens]).all(dim=0)
            results[ENSEMBLE] = {'accuracy': pct(correct),
                                 'per_class': per_class(correct, self.y[:k].cpu(), self.config.num_classes),
                                 'attacks': ens, 'n': k, 'subset': subset_label(k, len(self.y))}

    def snapshot(self) -> Snapshot:
        """The evaluation so far: ``results``, ``masking_checks``, ``timing``, ``precision``, ``per_example``,
        ``not_run``, ``progress``, ``resumed`` and ``complete``."""
        results = dict(self.results)
        not_run = dict(self.not_run)
        self._ensemble(results, not_run)
        return {
            'results': results,
            'masking_checks': masking_section(self.masking, self.flags),
            'timing': {'total_seconds': round(time.perf_counter() - self.t0, 3)},
            'precision': dict(self.precision),
            'per_example': {k: pack_flags(v) for k, v in self.flags.items()},
            'not_run': not_run,
            'progress': {k: dict(v) for k, v in self.saved_progress.items()},
            'resumed': list(self.resumed),
            'complete': not not_run,
        }

    def update(self) -> None:
        """Hand the snapshot to ``on_update``."""
        if self.on_update is not None:
            self.on_update(self.snapshot())

    def interrupt(self) -> None:
        """Mark what did not finish as interrupted, and hand the snapshot on."""
        for s in list(self.not_run):
            self.not_run[s] = ('interrupted while running' if s == self.current else 'not reached: interrupted')
        self.update()

    # -- stages -------------------------------------------------------------------------------------------
    def stage(self, name: str) -> None:
        """Run stage ``name`` unless an earlier evaluation already measured it."""
        if name not in self.not_run:
            return  # adopted from the previous evaluation
        self.current = name
        try:
            if name == MASKING:
                masking_stage(self)
            else:
                STAGES[SPECS[name].kind](self, name)
        except DeadlineReached as e:
            self.not_run[name] = f'{self.clock.reason()} ({e})'
        self.current = None
        self.update()


def run_evaluation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                   transfer_model: Optional[nn.Module] = None, previous: Optional[Mapping[str, Any]] = None,
                   on_update: Optional[Callable[[Snapshot], None]] = None) -> Snapshot:
    """Run the stages of a checked ``config`` in strict float32 (see :func:`fsr_hub.evaluate.evaluate`)."""
    fmt = 'channels_last' if config.channels_last else 'contiguous'
    model = model.to(config.device, memory_format=MEMORY_FORMATS[fmt])
    assert_eval(model)
    if transfer_model is not None:
        transfer_model = transfer_model.to(config.device, memory_format=MEMORY_FORMATS[fmt])
        assert_eval(transfer_model)
    run = EvaluationRun(model, x, y, config, transfer_model, previous, on_update)
    try:
        with strict_float32() as precision:
            run.precision = {**precision, 'memory_format': fmt}
            torch.manual_seed(config.seed)
            try:
                for stage in run.stages:
                    run.stage(stage)
            except KeyboardInterrupt:
                run.interrupt()
                raise
    finally:  # the caller's models go back to the default format
        for m in (model, transfer_model):
            if m is not None:
                m.to(memory_format=torch.contiguous_format)
    return run.snapshot()
