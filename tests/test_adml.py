"""ADML fine-tuning (issue 30): the debiasing loss on hand-computed cases, the in-order halves, the lr triangle,
the paper's defaults and the "reduced" label, --init-from (resolution, pins, wrong architectures) and a short
run of tools/train.py --objective adml from a safetensors file."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub.engine import TrainConfig
from fsr_hub.init_from import InitError, load_init, resolve_init
from fsr_hub.losses import fsr_aux_loss
from fsr_hub.models import create
from fsr_hub.objectives import (
    AdversarialObjective, ObjectiveConfig, adml_debias_loss, adml_split, forward_train, trades_loss,
)
from fsr_hub.paper import adml_recipe
from fsr_hub.catalog import RELEASED, local_release
from fsr_hub.schedule import adml_lr, step_lr
from fsr_hub.weights import save_weights, sha256_file
from tools.train import main as train_main

from conftest import tiny_fsr_net, write_cifar_batches

EPS = 8 / 255
TINY = 'test_resnet'  # timm's 374k-parameter ResNet; with FSR after layer4 for the FSR losses
TINY_FSR = {'fsr_positions': ['layer4'], 'fsr_hidden': 8}


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _term(row, y):
    """w * (log(p_y^ + 1e-3) - log(p_y + 1e-3)) with w = 1 / p_y^ - 1, by hand."""
    p = _softmax(row)
    p_hat = max(p)
    return (1 / p_hat - 1) * (math.log(p_hat + 1e-3) - math.log(p[y] + 1e-3))


def test_debias_loss_on_two_examples_hand_computed():
    adv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    nat = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([1, 1])  # the attack wins both: predictions 0 and 2
    ce = -(math.log(_softmax([1, 0, 0])[1]) + math.log(_softmax([0, 2, 0])[1])) / 2
    expected = (_term([2, 0, 0], 1) + _term([0, 0, 3], 1)) / 2 + ce
    loss = adml_debias_loss(adv, nat, y)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # one of the two won by the attack: the mean over S is that example's term alone
    y_one = torch.tensor([1, 2])
    ce_one = -(math.log(_softmax([1, 0, 0])[1]) + math.log(_softmax([0, 2, 0])[2])) / 2
    assert adml_debias_loss(adv, nat, y_one).item() == pytest.approx(_term([2, 0, 0], 1) + ce_one, rel=1e-6)
    # w is detached: the gradient is that of the same terms with w a constant
    loss.backward()
    ref_adv = adv.detach().clone().requires_grad_(True)
    w = torch.tensor([1 / max(_softmax([2, 0, 0])) - 1, 1 / max(_softmax([0, 0, 3])) - 1])
    p = F.softmax(ref_adv, dim=1)
    ref = (w * (torch.log(p[[0, 1], [0, 2]] + 1e-3) - torch.log(p[:, 1] + 1e-3))).mean()
    ref.backward()
    assert torch.allclose(adv.grad, ref_adv.grad, atol=1e-7)


def test_empty_misclassified_set_leaves_the_clean_cross_entropy():
    adv = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    nat = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])  # the attack wins neither
    loss = adml_debias_loss(adv, nat, y)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(F.cross_entropy(nat, y).item(), abs=1e-7)
    loss.backward()
    assert torch.count_nonzero(adv.grad) == 0  # the debiasing part is exactly 0, not 0 * NaN


def test_halves_are_split_in_order_the_odd_example_going_second():
    assert [adml_split(n) for n in (2, 5, 128)] == [1, 2, 64]
    with pytest.raises(ValueError, match='at least 2 examples'):
        adml_split(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))  # no batch statistics: each example on its own
    x, x_adv, y = torch.rand(5, 3, 2, 2), torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        la, ln = model(x_adv), model(x)
        at = F.cross_entropy(la[:2], y[:2]) + adml_debias_loss(la[2:], ln[2:], y[2:])
        trades = trades_loss(ln[:2], la[:2], y[:2], 2.0) + adml_debias_loss(la[2:], ln[2:], y[2:])
        swapped = F.cross_entropy(la[3:], y[3:]) + adml_debias_loss(la[:3], ln[:3], y[:3])
        loss, stats = AdversarialObjective(model, ObjectiveConfig(name='adml', fsr=False))(x, x_adv, y)
        assert loss.item() == pytest.approx(at.item(), rel=1e-6) and loss.item() != pytest.approx(swapped.item())
        assert stats[1].item() == 5 and stats[3].item() == -1  # the AT base has no clean forward of the first half
        cfg = ObjectiveConfig(name='adml', fsr=False, adml_base='trades', beta=2.0)
        loss, stats = AdversarialObjective(model, cfg)(x, x_adv, y)
        assert loss.item() == pytest.approx(trades.item(), rel=1e-6)
        assert stats[3].item() == (ln.argmax(1) == y).sum().item()
    with pytest.raises(ValueError, match="Unknown ADML base 'free'"):
        ObjectiveConfig(name='adml', adml_base='free')


@pytest.mark.parametrize('base', ['at', 'trades', 'mart'])
def test_fsr_losses_come_from_the_adversarial_forward_of_the_whole_batch(base):
    model = tiny_fsr_net().train()
    x = torch.rand(6, 3, 32, 32)
    x_adv = (x + 0.01).clamp(0, 1)
    y = torch.randint(0, 10, (6,))

    def run(fsr):
        torch.manual_seed(3)  # the same Gumbel noise in each forward
        return AdversarialObjective(model, ObjectiveConfig(name='adml', adml_base=base, beta=2.0, fsr=fsr))(
            x, x_adv, y)

    (with_fsr, _), (without, _) = run(True), run(False)
    torch.manual_seed(3)
    out = forward_train(model, x_adv)
    expected = fsr_aux_loss(out.aux, out.logits, y, 1.0, 1.0)
    assert (with_fsr - without).item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize('attack', ['pgd', 'fgsm-rs', 'n-fgsm'])
def test_each_training_attack_feeds_adml_and_the_fsr_heads_learn(attack):
    model = tiny_fsr_net()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    steps, alpha = (2, EPS / 4) if attack == 'pgd' else (1, EPS)
    obj = AdversarialObjective(model, ObjectiveConfig(name='adml', attack=attack, steps=steps, alpha=alpha))
    loss, stats = obj(x, obj.perturb(x, y), y)
    loss.backward()
    assert torch.isfinite(loss) and stats[1].item() == 8
    assert all(p.grad is not None for n, p in model.named_parameters() if '.aux.' in n)


def test_adml_lr_triangle_at_fixed_iterations():
    assert adml_lr(0, 100, 1e-3) == pytest.approx(1e-3 * 0.005 / 0.2)
    assert adml_lr(19, 100, 1e-3) == pytest.approx(1e-3 * 0.195 / 0.2)
    assert adml_lr(20, 100, 1e-3) == pytest.approx(1e-3 * 0.795 / 0.8)
    assert adml_lr(59, 100, 1e-3) == pytest.approx(1e-3 * 0.405 / 0.8)
    assert adml_lr(99, 100, 1e-3) == pytest.approx(1e-3 * 0.005 / 0.8)
    lrs = [adml_lr(i, 100, 1e-3) for i in range(100)]
    assert lrs[:20] == sorted(lrs[:20]) and lrs[20:] == sorted(lrs[20:], reverse=True) and min(lrs) > 0
    # the trainer's lr per step: 10 epochs of 10 steps peak between epoch 2's last step and epoch 3's first; 5 epochs
    # keep the 20 % / 80 % split (the peak after the first epoch)
    cfg = TrainConfig(device='cpu', objective='adml').resolved()
    assert step_lr(cfg, 1, 9, 10) == pytest.approx(adml_lr(19, 100, 1e-3))
    assert step_lr(cfg, 2, 0, 10) == pytest.approx(1e-3 * 0.795 / 0.8)
    short = TrainConfig(device='cpu', objective='adml', epochs=5).resolved()
    assert step_lr(short, 0, 9, 10) == pytest.approx(1e-3 * 0.95 / 1.0) and step_lr(short, 1, 0, 10) < 1e-3


def test_adml_defaults_are_the_papers_unless_flags_say_otherwise():
    c = TrainConfig(device='cpu', objective='adml').resolved()
    assert (c.epochs, c.schedule, c.lr, c.momentum, c.weight_decay, c.batch_size) == (10, 'adml', 1e-3, 0.9, 5e-4, 128)
    assert (c.attack, c.steps, c.alpha, c.beta, c.adml_base, c.milestones) == ('pgd', 10, 0.00722, 2.0, 'at', ())
    o = TrainConfig(device='cpu', objective='adml', epochs=2, lr=0.01, schedule='cyclic', attack='fgsm-rs',
                    adml_base='mart').resolved()
    assert (o.epochs, o.lr, o.schedule, o.steps, o.alpha, o.adml_base) == (2, 0.01, 'cyclic', 1, 1.25 * EPS, 'mart')
    at = TrainConfig(device='cpu').resolved()
    assert (at.epochs, at.schedule, at.lr, at.beta, at.adml_base) == (100, 'piecewise', 0.1, 6.0, None)
    with pytest.raises(ValueError, match='--adml-base trades is for --objective adml, not at'):
        TrainConfig(device='cpu', adml_base='trades').resolved()
    with pytest.raises(ValueError, match='at least 2 examples'):
        TrainConfig(device='cpu', objective='adml', batch_size=1).resolved()
    with pytest.raises(ValueError, match='milestones are for the piecewise schedule, not --schedule adml'):
        TrainConfig(device='cpu', objective='adml', milestones=(5,)).resolved()


def test_a_run_that_departs_from_the_papers_recipe_is_labelled_reduced():
    paper = TrainConfig(device='cpu', objective='adml', init_from='x.safetensors').resolved()
    rec = adml_recipe(vars(paper))
    assert rec['label'] == 'paper' and rec['departures'] == [] and 'Lee et al.' in rec['paper']
    cpu = TrainConfig(device='cpu', objective='adml', init_from='x.safetensors', attack='fgsm-rs', epochs=2,
                      max_train_images=2048).resolved()
    rec = adml_recipe(vars(cpu))
    assert rec['label'] == 'reduced'
    assert rec['departures'] == ['FGSM-RS instead of PGD-10', '2 epochs instead of 10',
                                 'the first 2048 training images only']
    scratch = adml_recipe(vars(TrainConfig(device='cpu', objective='adml').resolved()))
    assert scratch['label'] == 'reduced' and scratch['departures'][0].startswith('no --init-from')


def test_card_recipe_line_and_verify_report_carry_the_label_and_the_start_weights():
    from fsr_hub.card import describe_recipe
    from fsr_hub.evaluate import training_section
    from fsr_hub.schemas import TRAIN_SCHEMA

    cpu = vars(TrainConfig(device='cpu', objective='adml', init_from='x.safetensors', attack='fgsm-rs', epochs=2,
                           max_train_images=2048, amp=False).resolved())
    line = describe_recipe(cpu)
    assert 'ADML fine-tuning objective (AT on the first half of each batch + FSR losses' in line
    assert 'adml lr triangle peaking at 0.001 after 20% of the iterations' in line
    assert line.endswith('a reduced ADML recipe (FGSM-RS instead of PGD-10; 2 epochs instead of 10; the first 2048 '
                         'training images only)')
    paper = vars(TrainConfig(device='cpu', objective='adml', init_from='x.safetensors').resolved())
    assert describe_recipe(paper).endswith('the official ADML recipe (Lee et al., Adversarial Double Machine '
                                           'Learning, ICCV 2023)')
    init = {'source': 'x.safetensors', 'sha256': 'a' * 64}
    summary = {'schema': TRAIN_SCHEMA, 'weights': {'final': {'sha256': 'b' * 64}}, 'init_from': init}
    assert training_section(summary, 'b' * 64)['init_from'] == init
    assert 'init_from' not in training_section({**summary, 'init_from': None}, 'b' * 64)


# ---------------------------------------------------------------------------------------------------------------
# --init-from


def _tiny(fsr: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return create(TINY, num_classes=10, **(TINY_FSR if fsr else {}))


def _release_folder(root: Path, arch: str, weights: Path, tag: str = 'at_cifar10', sha=None) -> Path:
    folder = root / f'{arch}.{tag}'
    folder.mkdir(parents=True)
    (folder / 'model.safetensors').write_bytes(weights.read_bytes())
    config = {'architecture': arch, 'num_classes': 10, 'model_args': {},
              'pretrained_cfg': {'tag': tag, 'sha256': sha or sha256_file(weights)}}
    (folder / 'config.json').write_text(json.dumps(config))
    return folder


def test_init_from_a_file_loads_strictly_and_records_its_sha256(tmp_path):
    path = tmp_path / 'w.safetensors'
    sha = save_weights(_tiny(), path, metadata={'architecture': TINY})
    model = _tiny()
    for p in model.parameters():
        p.data.zero_()
    init = load_init(model, str(path), TINY)
    assert init.kind == 'file' and init.sha256 == sha and init.pin is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), _tiny().state_dict().values()))
    assert init.record()['sha256'] == sha and init.record()['pinned'] is False


def test_init_from_refuses_a_wrong_architecture_clearly(tmp_path):
    plain = tmp_path / 'plain.safetensors'
    save_weights(_tiny(fsr=False), plain)  # no metadata: the strict load finds the mismatch
    with pytest.raises(InitError, match=r'--init-from .*plain\.safetensors: .* does not fit .*missing keys') as e:
        load_init(_tiny(), str(plain), TINY)
    assert '\n' not in str(e.value)
    named = tmp_path / 'named.safetensors'
    save_weights(_tiny(fsr=False), named, metadata={'architecture': 'cifar_resnet18'})
    with pytest.raises(InitError, match="metadata names architecture 'cifar_resnet18', not the run's 'fsr_resnet18'"):
        resolve_init(str(named), 'fsr_resnet18')
    folder = _release_folder(tmp_path, 'cifar_resnet18', plain)
    with pytest.raises(InitError, match="config.json names architecture 'cifar_resnet18', not the run's "
                                        "'fsr_resnet18' \\(--model\\)"):
        resolve_init(str(folder), 'fsr_resnet18')
    with pytest.raises(InitError, match="weights of a fsr_resnet18, not of the run's cifar_resnet18"):
        resolve_init('fsr_resnet18.fgsmrs_cifar10', 'cifar_resnet18')
    with pytest.raises(InitError, match='not a released name'):
        resolve_init('fsr_resnet18.nothing_cifar10', 'fsr_resnet18')
    with pytest.raises(InitError, match='Weight file not found'):
        resolve_init(str(tmp_path / 'missing.safetensors'), TINY)


def test_init_from_a_release_folder_holds_the_weights_to_the_pin(tmp_path):
    path = tmp_path / 'w.safetensors'
    sha = save_weights(_tiny(), path)
    good = _release_folder(tmp_path / 'good', TINY, path)
    init = resolve_init(str(good), TINY)
    assert (init.kind, init.sha256, init.pin, init.release) == ('release-folder', sha, sha, f'{TINY}.at_cifar10')
    bad = _release_folder(tmp_path / 'bad', TINY, path, sha='f' * 64)
    with pytest.raises(InitError, match=f'--init-from {bad}: sha256 mismatch for .*expected f{{64}}, got {sha}'):
        resolve_init(str(bad), TINY)
    name = next(iter(sorted(RELEASED)))
    arch, tag = name.split('.')
    other = _release_folder(tmp_path / 'other', arch, path, tag=tag)  # config.json pins another sha than the registry
    with pytest.raises(InitError, match=f"config.json pins sha256 {sha} but fsr_hub's registry pins {RELEASED[name]}"):
        resolve_init(str(other), arch)


@pytest.mark.skipif(not RELEASED or local_release(sorted(RELEASED)[0]) is None,
                    reason='no released weights in this checkout')
def test_init_from_a_released_name_resolves_through_the_package_and_its_pin():
    name = sorted(RELEASED)[0]
    init = resolve_init(name, name.split('.')[0])
    assert (init.kind, init.sha256, init.pin, init.release) == ('release-name', RELEASED[name], RELEASED[name], name)
    assert init.folder == local_release(name) and sha256_file(init.path) == RELEASED[name]


# ---------------------------------------------------------------------------------------------------------------
# tools/train.py --objective adml


def test_train_cli_adml_from_a_safetensors_file(tmp_path, capsys):
    data = write_cifar_batches(tmp_path / 'data', n_train=40, n_test=10)
    init = tmp_path / 'start.safetensors'
    start = _tiny()
    sha = save_weights(start, init, metadata={'architecture': TINY})
    out = tmp_path / 'run'

    def argv(weights: Path, folder: Path):
        return ['--model', TINY, '--fsr-positions', 'layer4', '--fsr-hidden', '8', '--objective', 'adml',
                '--init-from', str(weights), '--attack', 'fgsm-rs', '--epochs', '1', '--batch-size', '8',
                '--max-train-images', '16', '--holdout', '8', '--eval-batch-size', '8', '--eval-steps', '1',
                '--data', str(data), '--out', str(folder), '--device', 'cpu', '--no-amp', '--no-channels-last',
                '--no-progress']

    assert train_main(argv(init, out)) == 0, capsys.readouterr().err
    summary = json.loads((out / 'train_summary.json').read_text())
    cfg = summary['config']
    assert (cfg['objective'], cfg['adml_base'], cfg['init_from'], cfg['schedule'], cfg['lr']) == (
        'adml', 'at', str(init), 'adml', 1e-3)
    assert summary['init_from']['sha256'] == sha and summary['init_from']['kind'] == 'file'
    assert summary['recipe']['label'] == 'reduced'
    assert summary['recipe']['departures'][:2] == ['FGSM-RS instead of PGD-10', '1 epochs instead of 10']
    assert summary['schedule']['name'] == 'adml' and summary['schedule']['iterations'] == 2
    assert summary['complete'] and summary['history'][0]['lr'] == pytest.approx(adml_lr(0, 2, 1e-3))
    # a wrong architecture: one line on stderr, exit 2, no traceback
    plain = tmp_path / 'plain.safetensors'
    save_weights(_tiny(fsr=False), plain)
    capsys.readouterr()
    assert train_main(argv(plain, tmp_path / 'x')) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: --init-from {plain}: ') and 'does not fit' in err and err.count('\n') == 1
