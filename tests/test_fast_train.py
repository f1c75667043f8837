"""Fast adversarial training: the training attacks by name, the cyclic schedule, the catastrophic-overfitting
guard, the precision chosen from the CPU's instruction set, and a budgeted run that slows down mid-way."""
import json
import time
import types

import pytest
import torch

import fsr_hub.engine as engine
import fsr_hub.guard as guard_module
import fsr_hub.hardware as hardware
import fsr_hub.train_budget as train_budget
import fsr_hub.train_checkpoint as train_checkpoint
import fsr_hub.train_holdout as train_holdout
from fsr_hub.attacks import linf_violation
from fsr_hub.engine import TrainConfig, train
from fsr_hub.guard import OverfitGuard, guard_accuracy
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig
from fsr_hub.step import TrainStep
from fsr_hub.schedule import cyclic_lr, lr_at, lr_milestones, replan_epochs
from fsr_hub.train_attacks import check_attack, training_attack

from conftest import separable_data, tiny_fsr_net

EPS = 8 / 255


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), epochs=2, batch_size=32, holdout=32, eval_batch_size=32, eval_steps=3, device='cpu',
                progress=False, amp=False, channels_last=False)
    base.update(kw)
    return TrainConfig(**base)


def _fake_clock(monkeypatch) -> list:
    """A clock (``clock[0]`` seconds) that every part of the engine that times reads instead of the real one."""
    clock = [0.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], perf_counter=lambda: clock[0], time=time.time)
    for module in (engine, train_budget, train_checkpoint, train_holdout):
        monkeypatch.setattr(module, 'time', fake_time)
    return clock


def _recorded_lrs(monkeypatch) -> list:
    """The list every lr the training steps are given is appended to."""
    lrs = []
    set_lr = TrainStep.set_lr
    monkeypatch.setattr(TrainStep, 'set_lr', lambda self, lr: (lrs.append(lr), set_lr(self, lr))[1])
    return lrs


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fgsm_rs_stays_in_the_eps_ball_and_the_box():
    model = tiny_fsr_net().eval()
    x, y = _batch()
    torch.manual_seed(0)
    x_adv = training_attack(model, x, y, 'fgsm-rs', EPS, 1.25 * EPS, 1)
    assert linf_violation(x_adv, x, EPS) <= 1e-6
    delta = (x_adv - x).abs()
    assert delta.amax() > 0.9 * EPS  # it moved: a step of 1.25 eps, clipped back to eps


def test_n_fgsm_is_not_projected_but_stays_within_3_eps_and_the_box():
    model = tiny_fsr_net().eval()
    x, y = _batch()
    x = 0.25 + 0.5 * x  # away from the box, so the clamp to [0, 1] does not hide the reach beyond eps
    torch.manual_seed(0)
    x_adv = training_attack(model, x, y, 'n-fgsm', EPS, EPS, 1)
    delta = (x_adv - x).abs()
    assert delta.amax() <= 3 * EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert delta.amax() > 2 * EPS  # noise up to 2 eps plus a step of eps: no projection to the eps-ball
    corner = torch.zeros(2, 3, 32, 32)  # at the box's edge the clamp keeps it inside
    x_edge = training_attack(model, corner, y[:2], 'n-fgsm', EPS, EPS, 1)
    assert x_edge.min() >= 0 and x_edge.max() <= 3 * EPS + 1e-6


def test_objective_runs_each_attack_with_the_fsr_losses():
    model = tiny_fsr_net()
    x, y = _batch(8)
    for attack in ('fgsm-rs', 'n-fgsm'):
        for name in ('at', 'mart'):
            obj = AdversarialObjective(model, ObjectiveConfig(name=name, attack=attack, steps=1, alpha=EPS))
            loss, stats = obj(x, obj.perturb(x, y), y)
            loss.backward()
            assert torch.isfinite(loss) and stats[1].item() == 8
            assert all(p.grad is not None for n, p in model.named_parameters() if '.aux.' in n)


@pytest.mark.parametrize('attack, objective, steps, random_start, message', [
    ('fgsm-rs', 'trades', None, True, 'TRADES starts its KL ascent'),
    ('n-fgsm', 'natural', None, True, 'natural training has no attack'),
    ('fgsm-rs', 'at', 5, True, 'takes one step; --steps 5 is for --attack pgd'),
    ('n-fgsm', 'at', None, False, '--no-random-start is for pgd'),
    ('fgsm', 'at', None, True, "Unknown attack 'fgsm'"),
])
def test_attack_combinations_that_mean_nothing_are_refused(attack, objective, steps, random_start, message):
    with pytest.raises(ValueError, match=message):
        check_attack(attack, objective, steps, random_start)


def test_fast_recipe_defaults():
    c = TrainConfig(device='cpu', attack='fgsm-rs', schedule='cyclic').resolved()
    assert (c.steps, c.alpha, c.lr, c.milestones) == (1, pytest.approx(1.25 * EPS), 0.2, ())
    n = TrainConfig(device='cpu', attack='n-fgsm').resolved()
    assert (n.steps, n.alpha, n.lr, n.schedule) == (1, pytest.approx(EPS), 0.1, 'piecewise')
    p = TrainConfig(device='cpu').resolved()
    assert (p.attack, p.steps, p.alpha, p.guard) == ('pgd', 10, pytest.approx(EPS / 4), True)
    assert TrainConfig(device='cpu', schedule='cyclic', lr=0.05).resolved().lr == 0.05
    assert not TrainConfig(device='cpu', objective='natural').resolved().guard
    with pytest.raises(ValueError, match='milestones are for the piecewise schedule'):
        TrainConfig(device='cpu', schedule='cyclic', milestones=(5,)).resolved()
    with pytest.raises(ValueError, match="Unknown schedule 'linear'"):
        TrainConfig(device='cpu', schedule='linear').resolved()


def test_cyclic_lr_at_fixed_iterations():
    assert cyclic_lr(0, 100, 0.2) == pytest.approx(0.002)
    assert cyclic_lr(24, 100, 0.2) == pytest.approx(0.098)
    assert cyclic_lr(49, 100, 0.2) == pytest.approx(0.198) == cyclic_lr(50, 100, 0.2)
    assert cyclic_lr(99, 100, 0.2) == pytest.approx(0.002)
    lrs = [cyclic_lr(i, 10, 1.0) for i in range(10)]
    assert lrs[:5] == sorted(lrs[:5]) and lrs[5:] == sorted(lrs[5:], reverse=True) and min(lrs) > 0
    for bad in ((100, 100), (-1, 100), (0, 0)):
        with pytest.raises(ValueError):
            cyclic_lr(bad[0], bad[1], 0.2)


def test_cyclic_run_sets_the_lr_per_iteration_and_records_attack_schedule_precision(tmp_path, monkeypatch):
    seen = []
    set_lr = TrainStep.set_lr
    monkeypatch.setattr(TrainStep, 'set_lr', lambda self, lr: (seen.append(lr), set_lr(self, lr)))
    cfg = tiny_config(tmp_path, attack='n-fgsm', schedule='cyclic', epochs=2)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(128))
    total = 2 * 3  # 96 training images, batch 32
    assert seen == pytest.approx([cyclic_lr(i, total, 0.2) for i in range(total)])
    assert res.history[0]['lr'] == pytest.approx(cyclic_lr(0, total, 0.2))
    assert res.history[1]['lr_end'] == pytest.approx(cyclic_lr(total - 1, total, 0.2))
    summary = json.loads((tmp_path / 'train_summary.json').read_text())
    assert summary['attack'] == {'name': 'n-fgsm', 'eps': EPS, 'alpha': EPS, 'steps': 1, 'random_start': True,
                                 'projected_to_eps_ball': False}
    assert summary['schedule']['name'] == 'cyclic' and summary['schedule']['iterations'] == total
    assert summary['precision']['train'] == 'float32' and summary['evaluation']['dtype'] == 'float32'
    assert summary['guard']['stopped'] is None and all('guard_pgd_acc' in h for h in summary['history'])


def test_guard_fires_on_a_drop_of_the_set_size_only():
    g = OverfitGuard(drop=20.0)
    assert not any(g.update(e, a) for e, a in enumerate([30.0, 45.0, 26.0, 44.0], start=1))  # 19 below: not yet
    assert g.update(5, 25.0) and g.fired == {'epoch': 5, 'accuracy': 25.0, 'best': 45.0, 'best_epoch': 2}
    resumed = OverfitGuard.from_history([{'epoch': 1, 'guard_pgd_acc': 50.0}, {'epoch': 2}])
    assert resumed.best == 50.0 and resumed.update(3, 30.0)
    with pytest.raises(ValueError, match='guard_drop'):
        OverfitGuard(drop=0)


def test_guard_accuracy_leaves_the_mode_and_the_generators_alone():
    model = tiny_fsr_net().train()
    x, y = _batch(8)
    state = torch.get_rng_state()
    acc = guard_accuracy(model, x, y, EPS, steps=2)
    assert 0.0 <= acc <= 100.0 and model.training and torch.equal(state, torch.get_rng_state())


def test_guard_stops_a_run_on_a_synthetic_collapse_and_keeps_the_best(tmp_path, monkeypatch, capsys):
    accuracies = iter([40.0, 50.0, 12.0, 60.0])  # epoch 3 collapses: 38 points below the best
    monkeypatch.setattr(guard_module, 'guard_accuracy', lambda *a, **k: next(accuracies))
    res = train(tiny_config(tmp_path, attack='fgsm-rs', epochs=4), model=tiny_fsr_net(), data=separable_data(128))
    assert [h['guard_pgd_acc'] for h in res.history] == [40.0, 50.0, 12.0]
    assert 'holdout_pgd_acc' not in res.history[2]  # the collapsed epoch is not a candidate for best
    guard = res.summary['guard']
    assert guard['stopped'] == {'epoch': 3, 'accuracy': 12.0, 'best': 50.0, 'best_epoch': 2}
    assert res.summary['best']['epoch'] in (1, 2) and (tmp_path / 'best.safetensors').is_file()
    err = capsys.readouterr().err
    assert 'catastrophic overfitting' in err and 'stopping' in err and 'best.safetensors' in err


@pytest.mark.parametrize('flags, isa, amp', [
    ('fpu sse avx2 avx512f avx512_bf16 avx512_vnni', 'avx512_bf16', True),
    ('fpu avx512_bf16 amx_bf16 amx_tile', 'amx_bf16', True),
    ('fpu sse avx2 fma', None, False),
])
def test_precision_follows_the_detected_instruction_set(monkeypatch, flags, isa, amp):
    monkeypatch.setattr(hardware, '_cpuinfo', lambda: f'model name\t: Test CPU\nflags\t\t: {flags}\n')
    assert hardware.cpu_bf16_isa() == isa and hardware.cpu_model() == 'Test CPU'
    c = TrainConfig(device='cpu').resolved()
    assert (c.amp, c.channels_last, c.eval_amp) == (amp, amp, amp)
    forced = TrainConfig(device='cpu', amp=not amp, channels_last=not amp, eval_amp=False).resolved()
    assert (forced.amp, forced.channels_last, forced.eval_amp) == (not amp, not amp, False)
    assert (isa or 'no bf16 instructions') in hardware.hardware_name(torch.device('cpu'))


def test_replan_epochs():
    # 10 s per epoch, 1 s evaluations and checkpoints, 3 epochs done
    assert replan_epochs(1e6, 3, 10, 10.0, 1.0, 1.0, eval_every=1) == (10, pytest.approx(7 * 11 + 7 * 2 + 1), True)
    # k more epochs cost k x (10 + 1) + k x (1 + 1) + 1: 2 -> 27 s, 3 -> 40 s
    assert replan_epochs(39.0, 3, 10, 10.0, 1.0, 1.0, eval_every=1) == (5, pytest.approx(27.0), True)
    assert replan_epochs(40.0, 3, 10, 10.0, 1.0, 1.0, eval_every=1)[0] == 6
    assert replan_epochs(1.0, 3, 10, 10.0, 1.0, 1.0)[::2] == (4, False)  # nothing fits: one more epoch, said so
    with pytest.raises(ValueError):
        replan_epochs(10.0, 10, 10, 1.0, 0.0, 0.0)


def test_a_slowed_budgeted_run_replans_and_completes_its_schedule(tmp_path, monkeypatch):
    # a fake clock: 1 s per step for three epochs, then 3 s per step (other work slows the machine 3x)
    clock = _fake_clock(monkeypatch)

    def tick(epoch, step):
        clock[0] += 1.0 if epoch < 3 else 3.0

    cfg = tiny_config(tmp_path, epochs=10, time_budget=1.0, steps=1)  # 60 s: 10 epochs of 3 s fit at first
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(128), step_callback=tick, clock_start=0.0)
    budget = res.summary['budget']
    (replan,) = budget['replans']
    assert replan['after_epoch'] == 4 and replan['from_epochs'] == 10 and replan['epochs'] == 8 and replan['fits']
    assert budget['epochs'] == 8 == res.summary['config']['epochs'] == len(res.history)
    assert budget['stopped_after_epoch'] is None and 're-planned after epoch 4' in budget['reproduce']
    m = lr_milestones(8)
    assert res.summary['config']['milestones'] == list(m)
    assert [h['lr'] for h in res.history] == pytest.approx([lr_at(e, 0.1, m, 0.1) for e in range(8)])
    assert res.history[-1]['lr'] == pytest.approx(0.001)  # the last lr decay was reached
    assert clock[0] <= 60.0


def test_a_slow_set_up_call_does_not_shrink_the_plan(tmp_path, monkeypatch):
    # the first step of the process costs 30 s more (a graph capture), then 1 s per step: the epochs after the
    # first cost 3 s, so all 10 planned epochs still fit and none is cut after epoch 1
    clock = _fake_clock(monkeypatch)

    def tick(epoch, step):
        clock[0] += 31.0 if (epoch, step) == (0, 0) else 1.0

    cfg = tiny_config(tmp_path, epochs=10, time_budget=2.0, steps=1)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(128), step_callback=tick, clock_start=0.0)
    budget = res.summary['budget']
    assert res.history[0]['epoch_seconds'] == pytest.approx(33.0)  # the record keeps what the epoch took
    assert 'replans' not in budget and budget['epochs'] == 10 == len(res.history)
    assert clock[0] <= 120.0


def test_a_budgeted_cyclic_run_follows_the_planned_schedule_once_planned(tmp_path, monkeypatch):
    # 1 s per step on a fake clock; 12 steps per epoch, so the plan is made inside the first epoch (after 11 steps)
    clock = _fake_clock(monkeypatch)
    lrs = _recorded_lrs(monkeypatch)

    def tick(epoch, step):
        clock[0] += 1.0

    cfg = tiny_config(tmp_path, epochs=10, time_budget=1.0, steps=1, attack='fgsm-rs', schedule='cyclic',
                      batch_size=8)
    res = train(cfg, model=tiny_fsr_net(), data=separable_data(128), step_callback=tick, clock_start=0.0)
    budget = res.summary['budget']
    epochs, per_epoch = budget['epochs'], budget['measured']['steps_per_epoch']
    probe = budget['measured']['setup_steps'] + train_budget.PROBE_STEPS
    assert per_epoch == 12 and 1 < epochs < 10 and len(lrs) == epochs * per_epoch
    total = epochs * per_epoch
    assert lrs[:probe] == pytest.approx([cyclic_lr(k, 10 * per_epoch, 0.2) for k in range(probe)])
    assert lrs[probe:] == pytest.approx([cyclic_lr(k, total, 0.2) for k in range(probe, total)])
    assert res.history[0]['lr_end'] == pytest.approx(cyclic_lr(per_epoch - 1, total, 0.2))
    assert f'except the lr of its first {probe} steps' in budget['reproduce']


def test_a_replanned_cyclic_run_records_its_lr_plan_and_replays_exactly(tmp_path, monkeypatch):
    # 1 s per step for two epochs, then 3 s: planned inside epoch 1, re-planned later; the recorded plan replays
    clock = _fake_clock(monkeypatch)
    lrs = _recorded_lrs(monkeypatch)

    def tick(epoch, step):
        clock[0] += 1.0 if epoch < 2 else 3.0

    kw = dict(steps=1, attack='fgsm-rs', schedule='cyclic', batch_size=8)
    budgeted = train(tiny_config(tmp_path / 'budget', epochs=10, time_budget=2.0, **kw), model=tiny_fsr_net(),
                     data=separable_data(128), step_callback=tick, clock_start=0.0)
    budget = budgeted.summary['budget']
    plan = budget['lr_plan']
    assert len(plan.split(',')) == 2 + len(budget['replans']) and budget['replans']
    assert f'--lr-plan {plan}' in budget['reproduce']
    recorded, lrs[:] = list(lrs), []
    replay = train(tiny_config(tmp_path / 'replay', epochs=budget['epochs'], lr_plan=plan, **kw),
                   model=tiny_fsr_net(), data=separable_data(128), step_callback=tick)
    assert lrs == pytest.approx(recorded) and len(replay.history) == budget['epochs']
    assert [h['lr_end'] for h in replay.history] == pytest.approx([h['lr_end'] for h in budgeted.history])


@pytest.mark.parametrize('kw, match', [
    (dict(lr_plan='10@0,8@5'), 'per-iteration'),
    (dict(lr_plan='10@0,8@5', schedule='cyclic', time_budget=5.0), 'not --time-budget'),
    (dict(lr_plan='10@0,7@5', schedule='cyclic'), 'ends with 7 epochs'),
    (dict(lr_plan='10@3,8@5', schedule='cyclic'), 'start at 0'),
    (dict(lr_plan='10@0,8', schedule='cyclic'), 'EPOCHS@STEP'),
    (dict(lr_plan='10@0,8@900', schedule='cyclic'), 'switches at step 900'),
])
def test_a_bad_lr_plan_is_refused_before_training(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(tiny_config(tmp_path, epochs=8, attack='fgsm-rs', steps=1, batch_size=8, **kw), model=tiny_fsr_net(),
              data=separable_data(128))
