"""A training run under a time budget: after the first steps of the first epoch, :func:`plan_budget` fixes the
epoch count from the measured step time, one timed held-out evaluation and one timed checkpoint write; at each
epoch boundary :func:`out_of_time` re-plans fewer epochs when the machine has slowed down. The schedule and the
evaluation epochs follow from the count (:mod:`fsr_hub.schedule`).
"""
import sys
import time

from .checkpoint import save_checkpoint
from .schedule import PER_ITERATION, BudgetCosts, plan_epochs, replan_epochs
from .train_checkpoint import checkpoint_state
from .train_config import with_epochs
from .train_holdout import time_holdout_evaluation
from .train_run import RunState, all_reduce_max

__all__ = ['PROBE_STEPS', 'plan_budget', 'out_of_time']

PROBE_STEPS = 10  # steady-state steps timed (after the set-up calls) to plan a time budget


def plan_budget(run: RunState, step_seconds: float, steps_done: int, warmup_seconds: float) -> None:
    """Fix the epoch count under the time budget from the measured step time, one timed held-out evaluation and
    one timed checkpoint write; the lr schedule and evaluation epochs follow from the count (``--epochs N``
    reproduces the run). Neither timing changes the model, the optimizer or any generator."""
    evaluation = time_holdout_evaluation(run) if run.cfg.holdout else 0.0
    checkpoint = _time_checkpoint(run) if run.is_main else 0.0
    elapsed = time.monotonic() - run.clock_start
    # maxima over the ranks: every rank then plans the same count
    step_seconds, evaluation, checkpoint, elapsed = all_reduce_max(
        [step_seconds, evaluation, checkpoint, elapsed], run)
    budget = 60.0 * run.raw.time_budget
    reserve = max(1.0, 0.02 * budget)
    costs = BudgetCosts(step=step_seconds, steps_per_epoch=len(run.loader), steps_done=steps_done,
                        evaluation=evaluation, checkpoint=checkpoint)
    epochs, estimate, fits = plan_epochs(budget - reserve - elapsed, costs, max_epochs=run.raw.epochs,
                                         eval_every=run.raw.eval_every, holdout=run.cfg.holdout > 0)
    run.cfg = with_epochs(run.raw, epochs)
    run.costs.update(evaluation=evaluation, checkpoint=checkpoint)
    run.budget = {
        'minutes': run.raw.time_budget, 'max_epochs': run.raw.epochs, 'epochs': epochs, 'fits': fits,
        'measured': {
            'seconds_per_step': round(step_seconds, 6), 'steps_per_epoch': len(run.loader),
            'seconds_per_epoch': round(step_seconds * len(run.loader), 3),
            'setup_steps': run.step.setup_calls, 'setup_seconds': round(warmup_seconds, 3),
            'evaluation_seconds': round(evaluation, 3), 'checkpoint_seconds': round(checkpoint, 3),
            'planned_after_seconds': round(elapsed, 3),
        },
        'reserve_seconds': round(reserve, 3), 'estimated_total_seconds': round(elapsed + estimate, 3),
        'stopped_after_epoch': None,
        'reproduce': _reproduce(run, epochs, steps_done),
    }
    if run.cfg.schedule in PER_ITERATION:
        # the steps timed before the plan followed the --epochs schedule
        run.budget['lr_plan'] = (f'{epochs}@0' if epochs == run.raw.epochs
                                 else f'{run.raw.epochs}@0,{epochs}@{steps_done}')
    if run.is_main:
        warn = '' if fits else ' (even one epoch does not fit: running one)'
        print(f'time budget {run.raw.time_budget:g} min: {step_seconds * len(run.loader):.2f} s/epoch measured, '
              f'{epochs} epochs{warn}, ~{elapsed + estimate:.0f} s in all', file=sys.stderr, flush=True)


def _reproduce(run: RunState, epochs: int, steps_done: int) -> str:
    """What ``--epochs N`` reproduces: all of the run, unless a per-iteration schedule's first steps (those timed
    before the plan) took their lr from the longer --epochs schedule; ``--lr-plan`` then replays it."""
    command = f'the same command with --epochs {epochs} and without --time-budget trains this run'
    if run.cfg.schedule not in PER_ITERATION or epochs == run.raw.epochs:
        return f'{command} exactly'
    return (f'{command}, except the lr of its first {steps_done} steps (taken while the speed was measured, before '
            f'the plan): they followed the --epochs {run.raw.epochs} schedule; adding --lr-plan '
            f'{run.raw.epochs}@0,{epochs}@{steps_done} replays them too')


def out_of_time(run: RunState) -> bool:
    """Under a time budget, at an epoch boundary: when the epochs left no longer fit (the machine slowed down), re-plan
    fewer epochs; the schedule follows the new count, so the run still ends with its last lr decay (piecewise) or
    the end of its cycle. True (stop) only when even one more epoch does not fit and the piecewise schedule's last
    decay is already behind."""
    if run.deadline is None or not run.history or run.budget is None or run.epoch >= run.cfg.epochs:
        return False
    last = run.steady_epoch_seconds if run.steady_epoch_seconds is not None else run.history[-1]['epoch_seconds']
    epoch_seconds, elapsed = all_reduce_max([last, time.monotonic() - run.clock_start], run)
    left = 60.0 * run.raw.time_budget - run.budget['reserve_seconds'] - elapsed
    epochs, estimate, fits = replan_epochs(left, run.epoch, run.cfg.epochs, epoch_seconds, run.costs['evaluation'],
                                           run.costs['checkpoint'], run.raw.eval_every, run.cfg.holdout > 0)
    if not fits and run.cfg.schedule == 'piecewise' and run.cfg.milestones and run.epoch > run.cfg.milestones[-1]:
        run.budget['stopped_after_epoch'] = run.epoch
        if run.is_main:
            print(f'time budget: stopping after epoch {run.epoch} of {run.cfg.epochs} (the next would end past '
                  f'the deadline; the last lr decay is behind)', file=sys.stderr)
        return True
    if epochs < run.cfg.epochs:
        old = run.cfg.epochs
        run.cfg = with_epochs(run.raw, epochs)
        run.budget['epochs'] = epochs
        run.budget.setdefault('replans', []).append({
            'after_epoch': run.epoch, 'from_epochs': old, 'epochs': epochs, 'fits': fits,
            'seconds_left': round(left, 3), 'epoch_seconds': round(epoch_seconds, 3),
            'estimated_seconds': round(estimate, 3)})
        reproduce = (f're-planned after epoch {run.epoch} (from {old} to {epochs} epochs): the epochs before ran '
                     f'under the longer schedule, so --epochs {epochs} alone does not reproduce this run')
        if 'lr_plan' in run.budget:
            run.budget['lr_plan'] += f',{epochs}@{run.epoch * len(run.loader)}'
            reproduce += f'; --epochs {epochs} --lr-plan {run.budget["lr_plan"]} does'
        run.budget['reproduce'] = reproduce
        if run.is_main:
            print(f'time budget: the machine slowed to {epoch_seconds:.1f} s/epoch; re-planned from {old} to '
                  f'{epochs} epochs after epoch {run.epoch} (schedule compressed)', file=sys.stderr, flush=True)
    return False


def _time_checkpoint(run: RunState) -> float:
    """Seconds to write this run's checkpoint (to a probe file, removed at once)."""
    probe = run.out / 'last.pt.probe'
    t = time.perf_counter()
    save_checkpoint(checkpoint_state(run), probe)
    seconds = time.perf_counter() - t
    probe.unlink()
    return seconds
