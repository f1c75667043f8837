"""CUDA paths of the engine: bf16 autocast, the on-device loader, exact resume of a CUDA run, and the fast steps
(cuda-graph, compile) against the eager one. Run on a GPU machine with ``pytest -m cuda`` (the compile test is
also marked slow: ``-m "cuda and not slow"`` leaves out its compilation); skipped where no CUDA device exists."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fsr_hub.benchmark import benchmark_train_step
from fsr_hub.data import DeviceLoader
from fsr_hub.engine import TrainConfig, load_checkpoint, train
from fsr_hub.losses import fsr_aux_loss
from fsr_hub.models import create
from fsr_hub.objectives import AdversarialObjective, ObjectiveConfig, forward_train
from fsr_hub.step import TrainStep, build_optimizer

from conftest import separable_data, tiny_fsr_net

pytestmark = pytest.mark.cuda
CUDA = torch.device('cuda')


def test_forward_backward_under_bf16_autocast():
    model = create('fsr_resnet18', num_classes=10).to(CUDA).to(memory_format=torch.channels_last).train()
    x = torch.rand(8, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device=CUDA)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = forward_train(model, x)
        loss = F.cross_entropy(out.logits.float(), y) + fsr_aux_loss(out.aux, out.logits.float(), y)
    assert out.logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            low = model(x).float()
    assert ((low - ref).norm() / ref.norm()).item() < 0.1  # bf16 rounding, not another function


def test_device_loader_on_cuda():
    x, y = separable_data(40)
    cpu = list(DeviceLoader(x, y, 16, device='cpu', channels_last=True))
    gpu = list(DeviceLoader(x, y, 16, device='cuda', channels_last=True))
    assert len(cpu) == len(gpu) == 3
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)  # CUDA divides by 255 as x * (1/255)
        assert torch.equal(yg.cpu(), yc)
    aug = DeviceLoader(x, y, 16, device='cuda', shuffle=True, augment=True, drop_last=True, seed=3)
    aug.set_epoch(2)
    first = [(xb.clone(), yb.clone()) for xb, yb in aug]
    again = list(aug)
    assert len(first) == 2
    for (xa, ya), (xb, yb) in zip(first, again):  # an epoch's batches depend only on (seed, epoch)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (16, 3, 32, 32) and 0 <= xa.min().item() and xa.max().item() <= 1


def _tiny_cuda_config(out, **kw) -> TrainConfig:
    base = dict(out=str(out), epochs=2, batch_size=32, holdout=32, eval_batch_size=32, eval_steps=3, steps=3,
                device='cuda', progress=False, deterministic=True)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize('step', ['eager', 'cuda-graph'])
def test_resume_of_a_cuda_run(tmp_path, step):
    data = separable_data(160)  # 128 training images: 4 steps per epoch
    cfg = _tiny_cuda_config(tmp_path / 'ref', step=step)
    ref = train(cfg, model=tiny_fsr_net(), data=data)
    assert ref.summary['hardware']['step'] == step and ref.summary['hardware']['step_fallback'] is None
    assert ref.summary['complete']

    def kill(epoch, i):
        if epoch == 1 and i == 1:
            raise KeyboardInterrupt  # killed in the middle of epoch 2

    run = replace(cfg, out=str(tmp_path / 'run'))
    with pytest.raises(KeyboardInterrupt):
        train(run, model=tiny_fsr_net(), data=data, step_callback=kill)
    assert load_checkpoint(tmp_path / 'run' / 'last.pt')['epoch'] == 1
    res = train(replace(run, resume=True), model=tiny_fsr_net(), data=data)
    a, b = ref.model.state_dict(), res.model.state_dict()
    if step == 'eager':  # deterministic cuDNN: bit-exact
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:  # the resumed process runs its first steps eagerly before capturing: the same kernels and random numbers
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    assert [h['train_loss'] for h in res.history] == pytest.approx([h['train_loss'] for h in ref.history], rel=1e-4)


def _steps(mode: str, batches, fsr_positions, random_start: bool):
    model = tiny_fsr_net(fsr_positions=fsr_positions).to(CUDA)
    obj = AdversarialObjective(model, ObjectiveConfig(steps=3, random_start=random_start))
    step = TrainStep(obj, build_optimizer(model, 0.05, 0.9, 5e-4, mode, CUDA), mode=mode)
    torch.manual_seed(7)  # random start and Gumbel noise
    losses = [(step(x, y)[0] / len(y)).item() for x, y in batches]
    return losses, model, step


def _batches(n: int, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(size, 3, 32, 32, generator=g).to(CUDA), torch.randint(0, 10, (size,), generator=g).to(CUDA))
            for _ in range(n)]


def _agree(mode: str, fsr_positions, random_start: bool):
    batches = _batches(6)  # cuda-graph: 3 eager warm-up steps, the capture, then replays on new batches
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions: the paths then differ by rounding only
    try:
        ref, m_ref, _ = _steps('eager', batches, fsr_positions, random_start)
        fast, m_fast, step = _steps(mode, batches, fsr_positions, random_start)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert len({round(v, 6) for v in ref}) == len(ref)  # distinct batches, distinct losses: a stale replay shows
    assert fast == pytest.approx(ref, rel=1e-3)
    for p, q in zip(m_ref.parameters(), m_fast.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)
    return step, batches


def test_cuda_graph_step_agrees_with_eager_and_replays_new_batches():
    step, batches = _agree('cuda-graph', (), random_start=False)
    assert step.fallback is None and step.calls == 6 and step.setup_calls == 4  # captured, not run eagerly
    x, y = batches[0]
    with pytest.raises(ValueError, match='static shapes'):
        step(x[:8], y[:8])


def test_cuda_graph_step_draws_the_random_numbers_of_eager():
    # random start and FSR Gumbel noise from the global generator: the graph replays draw what eager draws
    step, _ = _agree('cuda-graph', ('s2',), random_start=True)
    assert step.fallback is None


@pytest.mark.slow
def test_compiled_step_agrees_with_eager():
    # inductor draws its own random numbers: compared without random start and FSR noise
    _agree('compile', (), random_start=False)


def test_cuda_graph_training_run_under_a_budget(tmp_path):
    assert TrainConfig(device='cuda').resolved().step == 'cuda-graph'  # the default on one CUDA device
    res = train(_tiny_cuda_config(tmp_path, deterministic=False, time_budget=5.0, fp16=True), model=tiny_fsr_net(),
                data=separable_data(160))
    plan = res.summary['budget']
    assert plan['epochs'] == 2 and plan['measured']['seconds_per_step'] > 0 and res.summary['complete']
    assert res.summary['hardware']['step'] == 'cuda-graph' and res.summary['hardware']['step_fallback'] is None
    assert (tmp_path / 'best.safetensors').is_file()


def test_benchmark_runs_the_cuda_paths():
    for mode in ('eager', 'cuda-graph'):
        r = benchmark_train_step(tiny_fsr_net(), batch_size=16, batches=3, device='cuda', amp=True,
                                 channels_last=True, step=mode, steps=2)
        assert r['images_per_second'] > 0 and not r['includes_setup'] and r['timed_steps'] == 3


def test_evaluation_on_cuda_is_strict_float32_and_agrees_with_the_cpu():
    import copy

    from fsr_hub.evaluate import evaluate

    model = tiny_fsr_net().eval()
    x, y = separable_data(64)
    x = x.permute(0, 3, 1, 2).float() / 255
    flags = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    kw = dict(attacks=('clean', 'fgsm', 'pgd20'), batch_size=32, masking_checks=False, progress=False)
    cpu = evaluate(copy.deepcopy(model), x, y, device='cpu', **kw)
    gpu = evaluate(copy.deepcopy(model), x, y, device='cuda', **kw)
    assert gpu['precision']['tf32'] is False  # TF32 was off while attacking ...
    # ... and is restored
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == flags
    # float32 on both devices; kernels differ in rounding, which can flip an example at a tie (more often after
    # a sign-gradient step): one example for clean, three for the attacks, of 64
    for name, flips in (('clean', 1), ('fgsm', 3), ('pgd20', 3)):
        assert abs(cpu['results'][name]['accuracy'] - gpu['results'][name]['accuracy']) <= 100 * flips / 64 + 1e-9, name
