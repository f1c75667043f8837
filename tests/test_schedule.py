"""The run's shape as functions of its epoch count: lr milestones, held-out evaluation epochs, budget planning."""
import pytest

from fsr_hub.schedule import (
    NATURAL_MILESTONES, BudgetCosts, default_eval_every, eval_epochs, lr_at, lr_milestones, plan_epochs,
)


def test_lr_milestones_keep_the_papers_shape_for_any_epoch_count():
    assert lr_milestones(100) == (75, 90) and lr_milestones(200) == (150, 180)
    assert lr_milestones(100, NATURAL_MILESTONES) == (50, 75)
    assert lr_milestones(1) == (1, 2)  # one epoch: the initial lr only
    assert lr_milestones(2) == (1, 2) and lr_milestones(10) == (7, 9)
    for epochs in range(1, 301):
        m1, m2 = lr_milestones(epochs)
        assert 1 <= m1 < m2 and m1 <= max(1, 0.75 * epochs) and m2 <= max(m1 + 1, 0.9 * epochs)
        lrs = [lr_at(e, 0.1, (m1, m2), 0.1) for e in range(epochs)]
        assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True)  # starts at the base lr, never rises
        if epochs >= 5:  # both decays happen inside the run
            assert lrs[-1] == pytest.approx(0.001)
        elif epochs >= 2:  # too short for both: the first one
            assert lrs[-1] == pytest.approx(0.01)
    with pytest.raises(ValueError):
        lr_milestones(0)


def test_eval_epochs_sparse_early_every_epoch_in_the_last_quarter():
    assert default_eval_every(100) == 10 and default_eval_every(5) == 1
    e = eval_epochs(100, 10)
    assert e[:7] == (10, 20, 30, 40, 50, 60, 70) and e[7:] == tuple(range(76, 101))
    assert eval_epochs(7, 3) == (3, 6, 7) and eval_epochs(1, 1) == (1,)
    assert eval_epochs(9, 4)[-1] == 9  # the last epoch always


def test_plan_epochs():
    costs = BudgetCosts(step=0.01, steps_per_epoch=100, steps_done=10, evaluation=0.5, checkpoint=0.1)
    epochs, estimate, fits = plan_epochs(60.0, costs, max_epochs=100, slack=1.0)
    assert fits and 1 <= epochs < 100 and estimate <= 60.0
    # one more epoch would not fit (cost of epochs + 1, as plan_epochs counts it)
    n = epochs + 1
    more = (n * 100 - 10) * 0.01 + len(eval_epochs(n, default_eval_every(n))) * 0.6 + (n + 1) * 0.1
    assert more > 60.0
    assert plan_epochs(1e6, costs, max_epochs=100)[0] == 100  # the cap
    assert plan_epochs(0.1, costs, max_epochs=100)[::2] == (1, False)  # nothing fits: one epoch, said so
    assert plan_epochs(10.0, costs, 100, holdout=False)[0] > plan_epochs(10.0, costs, 100)[0]
