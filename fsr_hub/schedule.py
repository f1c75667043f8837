"""The shape of a training run as functions of its epoch count: the learning rate (the paper's piecewise-constant
schedule, the cyclic one of fast adversarial training, or the warm-up-and-decay triangle of ADML fine-tuning),
which epochs are evaluated on the held-out slice, how many epochs fit a time budget, and how many still fit when a
machine slows down mid-run.

Every function here is pure, so a run planned under a time budget is reproduced exactly by giving the chosen
epoch count (``--epochs N``): the schedule and the evaluation epochs follow from N alone. A per-iteration schedule
planned (or re-planned) mid-run also needs its recorded ``lr_plan``, the epoch count in force from each step on.
"""
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Optional, Sequence, Tuple

from .paper import ADML_WARMUP

__all__ = [
    'AT_MILESTONES', 'NATURAL_MILESTONES', 'NATURAL_RECIPE', 'SCHEDULES', 'PER_ITERATION', 'CYCLIC_LR_MAX',
    'CYCLIC_RULE', 'ADML_RULE', 'lr_milestones', 'lr_at', 'triangle_lr',
    'cyclic_lr', 'adml_lr', 'parse_lr_plan', 'check_lr_plan', 'step_lr', 'default_eval_every', 'eval_epochs',
    'EVAL_RULE', 'BudgetCosts', 'plan_epochs', 'replan_epochs',
]

#: natural training (``objective='natural'``): SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, pad-4 crop
#: and flip, lr /10 after 1/2 and 3/4 of the epochs. The schedule is He et al. 2016's CIFAR-10 one (Sec. 4.2:
#: /10 at 32k and 48k of 64k iterations); weight decay and the rest are the paper's adversarial recipe, so the
#: natural and adversarial runs differ only in the objective. Best checkpoint: held-out clean accuracy.
NATURAL_RECIPE = ('SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, pad-4 crop + flip; lr x0.1 after 1/2 and '
                  '3/4 of the epochs (He et al. 2016, Sec. 4.2); best checkpoint by held-out clean accuracy')

#: piecewise: lr x gamma after milestone epochs (the paper); cyclic: a per-iteration triangle (fast AT); adml: the
#: per-iteration warm-up-and-decay triangle of ADML fine-tuning
SCHEDULES = ('piecewise', 'cyclic', 'adml')
#: the schedules that set the lr every iteration (the others once per epoch)
PER_ITERATION = ('cyclic', 'adml')
#: the peak lr of the cyclic schedule when none is given (Wong et al. 2020; de Jorge et al. 2022)
CYCLIC_LR_MAX = 0.2
CYCLIC_RULE = ('per iteration: a triangle from 0 up to lr at the middle of the run and back to 0 at its end, '
               'sampled at the middle of each iteration (Wong et al. 2020, de Jorge et al. 2022)')

#: ADML fine-tuning (Lee et al., ICCV 2023; its numbers: :mod:`fsr_hub.paper`)
ADML_RULE = ('per iteration: a triangle from 0 up to lr after the first 20 % of the iterations (2 of 10 epochs) '
             'and down to 0 at the end of the run, sampled at the middle of each iteration (ADML, Lee et al. 2023)')

#: the paper (Sec. 4.1): lr x0.1 after epochs 75 and 90 of 100
AT_MILESTONES = (Fraction(3, 4), Fraction(9, 10))
#: He et al. 2016 (Sec. 4.2, CIFAR-10): lr /10 at 32k and 48k of 64k iterations, i.e. after 1/2 and 3/4 of the run
NATURAL_MILESTONES = (Fraction(1, 2), Fraction(3, 4))

EVAL_RULE = ('every `every` epochs, then every epoch of the last quarter (where the best checkpoint is found in '
             'practice: robust overfitting sets in after the first lr decay), and always the last epoch')


def lr_milestones(epochs: int, fractions: Sequence[Fraction] = AT_MILESTONES) -> Tuple[int, ...]:
    """Epoch counts after which the lr decays, at the given fractions of ``epochs`` (rounded down).

    (75, 90) for 100 epochs. Any ``epochs >= 1`` gives a valid schedule: each milestone is at least 1 and above
    the previous one, so a run too short for every decay keeps the first ones (1 epoch: the initial lr only;
    2 epochs: lr, then lr x gamma; 10 epochs: (7, 9)).
    """
    if epochs < 1:
        raise ValueError(f'epochs must be >= 1, got {epochs}.')
    out, prev = [], 0
    for f in fractions:
        prev = max(prev + 1, int(Fraction(f) * epochs))
        out.append(prev)
    return tuple(out)


def lr_at(epoch: int, base_lr: float, milestones: Sequence[int], gamma: float) -> float:
    """The lr of 0-based ``epoch``: ``base_lr * gamma**k`` with k the milestones already passed (MultiStepLR)."""
    return base_lr * gamma ** sum(epoch >= m for m in milestones)


def triangle_lr(iteration: int, total: int, lr_max: float, peak: float = 0.5) -> float:
    """The lr of 0-based ``iteration`` of ``total`` on a triangle that rises linearly from 0 to ``lr_max`` at the
    fraction ``peak`` of the run and falls linearly back to 0 at its end, sampled at t = (iteration + 0.5) / total
    (so never exactly 0: no wasted step). A run re-planned to fewer epochs keeps the shape over its new length."""
    if total < 1 or not 0 <= iteration < total:
        raise ValueError(f'iteration must lie in [0, total) with total >= 1, got {iteration} of {total}.')
    if not 0 < peak < 1:
        raise ValueError(f'peak must lie in (0, 1), got {peak}.')
    t = (iteration + 0.5) / total
    return lr_max * (t / peak if t <= peak else (1.0 - t) / (1.0 - peak))


def cyclic_lr(iteration: int, total: int, lr_max: float) -> float:
    """The cyclic (fast AT) lr: :func:`triangle_lr` peaking at the middle of the run, lr_max * (1 - |2 t - 1|)."""
    return triangle_lr(iteration, total, lr_max, 0.5)


def adml_lr(iteration: int, total: int, lr_max: float) -> float:
    """The ADML fine-tuning lr: :func:`triangle_lr` peaking after :data:`ADML_WARMUP` of the iterations (2 of 10
    epochs; the same 20 % / 80 % split for any epoch count)."""
    return triangle_lr(iteration, total, lr_max, float(ADML_WARMUP))


@lru_cache(maxsize=16)  # step_lr reads the plan at every training step
def parse_lr_plan(plan: str) -> Tuple[Tuple[int, int], ...]:
    """``'EPOCHS@STEP,...'`` as ``((step, epochs), ...)``: from 0-based global step STEP on, the per-iteration lr
    follows the schedule of EPOCHS epochs. A time-budget run records its plan and re-plans this way
    (``budget.lr_plan`` in train_summary.json), so ``--lr-plan`` replays its schedule exactly."""
    entries = []
    for part in str(plan).split(','):
        epochs, sep, step = part.strip().partition('@')
        try:
            entry = (int(step), int(epochs))
        except ValueError:
            entry = None
        if not sep or entry is None or entry[0] < 0 or entry[1] < 1:
            raise ValueError(f'lr plan entries are EPOCHS@STEP with EPOCHS >= 1 and STEP >= 0 (e.g. 30@0,10@11,8@382), '
                             f'got {part.strip()!r} in {plan!r}.')
        entries.append(entry)
    if entries[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(entries, entries[1:])):
        raise ValueError(f'lr plan steps must start at 0 and increase, got {plan!r}.')
    return tuple(entries)


def check_lr_plan(plan: str, steps_per_epoch: int) -> None:
    """Raise ValueError unless each entry's schedule of ``plan`` is still running where the next entry takes over
    (a plan recorded with another batch size or data size fails here; the config checks that it ends with the
    run's epoch count)."""
    entries = parse_lr_plan(plan)
    for (_, e), (step, _) in zip(entries, entries[1:]):
        if step >= e * steps_per_epoch:
            raise ValueError(f'the lr plan {plan!r} switches at step {step}, after its {e}-epoch schedule ended '
                             f'({e} x {steps_per_epoch} steps per epoch): was it recorded with another batch size '
                             f'or training set?')


def step_lr(cfg: Any, epoch: int, i: int, steps_per_epoch: int) -> float:
    """The lr of step ``i`` of 0-based ``epoch`` of a resolved ``TrainConfig``: per epoch (piecewise) or per
    iteration (cyclic, adml), the latter over the epochs of the ``lr_plan`` entry in force where one is given."""
    if cfg.schedule in PER_ITERATION:
        fn = cyclic_lr if cfg.schedule == 'cyclic' else adml_lr
        step = epoch * steps_per_epoch + i
        epochs = cfg.epochs
        if cfg.lr_plan:
            epochs = [e for s, e in parse_lr_plan(cfg.lr_plan) if s <= step][-1]
        return fn(step, epochs * steps_per_epoch, cfg.lr)
    return lr_at(epoch, cfg.lr, cfg.milestones, cfg.lr_gamma)


def default_eval_every(epochs: int) -> int:
    """Held-out evaluation interval before the last quarter: about ten evaluations there (1 for <= 19 epochs)."""
    return max(1, epochs // 10)


def eval_epochs(epochs: int, every: int) -> Tuple[int, ...]:
    """The 1-based epochs after which the held-out slice is evaluated (see :data:`EVAL_RULE`)."""
    if every < 1:
        raise ValueError(f'eval_every must be >= 1, got {every}.')
    last_quarter_after = epochs - epochs // 4
    return tuple(e for e in range(1, epochs + 1) if e % every == 0 or e > last_quarter_after or e == epochs)


def _count_eval_epochs(epochs: int, every: int) -> int:
    # len(eval_epochs(epochs, every)) in O(1): multiples of `every` up to the last quarter, the last quarter, the end
    early = epochs - epochs // 4
    return early // every + (epochs - early) + (1 if early == epochs and epochs % every else 0)


@dataclass(frozen=True)
class BudgetCosts:
    """Measured seconds that a time-budget plan adds up (all per process, maxima over DDP ranks)."""
    step: float  # one training step, steady state (after the compile / capture warm-up)
    steps_per_epoch: int
    steps_done: int  # steps of the first epoch already run when the plan is made
    evaluation: float  # one held-out evaluation
    checkpoint: float  # writing last.pt (also charged for best.safetensors and the final outputs)


def plan_epochs(
        available: float, costs: BudgetCosts, max_epochs: int, eval_every: Optional[int] = None,
        holdout: bool = True, slack: float = 1.05,
) -> Tuple[int, float, bool]:
    """The most epochs (<= ``max_epochs``) whose remaining cost fits ``available`` seconds.

    The cost of E epochs: the steps not yet run, ``slack`` x their measured time; one evaluation plus one
    best-weights write per evaluated epoch (``eval_every`` None: :func:`default_eval_every` of E); one
    checkpoint per epoch and the final outputs. Returns (epochs, estimated seconds, fits); when even one
    epoch does not fit: (1, its estimate, False).
    """
    if max_epochs < 1:
        raise ValueError(f'max_epochs must be >= 1, got {max_epochs}.')

    def cost(e: int) -> float:
        n_eval = _count_eval_epochs(e, eval_every or default_eval_every(e)) if holdout else 0
        steps_left = max(0, e * costs.steps_per_epoch - costs.steps_done)
        return (slack * steps_left * costs.step + n_eval * (costs.evaluation + costs.checkpoint)
                + (e + 1) * costs.checkpoint)

    for e in range(max_epochs, 0, -1):
        c = cost(e)
        if c <= available:
            return e, c, True
    return 1, cost(1), False


def replan_epochs(
        available: float, done: int, epochs: int, epoch_seconds: float, evaluation: float, checkpoint: float,
        eval_every: Optional[int] = None, holdout: bool = True,
) -> Tuple[int, float, bool]:
    """The most epochs E in [done + 1, ``epochs``] whose remaining cost (epochs done + 1 .. E at the measured
    ``epoch_seconds``, their evaluations and checkpoints, the final outputs) fits ``available`` seconds.

    The schedule follows E (compressed, not truncated: the run still reaches its last lr decay / the end of its
    cycle). When none fits: (done + 1, its estimate, False): one more epoch, under the new, shortest schedule.
    """
    if not 0 <= done < epochs:
        raise ValueError(f'replan_epochs needs 0 <= done < epochs, got done={done}, epochs={epochs}.')

    def cost(e: int) -> float:
        every = eval_every or default_eval_every(e)
        n_eval = sum(1 for k in eval_epochs(e, every) if k > done) if holdout else 0
        return (e - done) * (epoch_seconds + checkpoint) + n_eval * (evaluation + checkpoint) + checkpoint

    for e in range(epochs, done, -1):
        c = cost(e)
        if c <= available:
            return e, c, True
    return done + 1, cost(done + 1), False
