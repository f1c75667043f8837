"""Checkpoints in the original FSR code's layout convert to ours and reproduce the original code's outputs.

``official_fsr_reference.json`` (copied from the project's shared fixtures; reference data, not ours) holds, for
each architecture, the original code's state_dict keys and shapes, a rule to fill them with values, and the
eval-mode logits and auxiliary logits the original code gives for them (float64). Nothing here is derived from our
own key mapping.
"""
import datetime
import importlib.util
import json
import math
import zlib
from pathlib import Path

import pytest
import torch

from fsr_hub.convert import ConversionError, convert_official_state_dict, load_official_checkpoint
from fsr_hub.models import create
from fsr_hub.sample import load_sample
from fsr_hub.weights import load_weights

from release_builders import load_tool

REFERENCE = json.loads((Path(__file__).parent / 'official_fsr_reference.json').read_text())
_spec = importlib.util.find_spec('pyautoattack')
PYAUTOATTACK_RESNET18 = (Path(_spec.submodule_search_locations[0]) / 'examples' / 'model_test.pt') if _spec else None


def official_state(arch: str) -> dict:
    """The original code's state dict of ``arch``, filled by the reference's ``value_rule``."""
    out = {}
    for key, shape, dtype in REFERENCE['models'][arch]['keys']:
        g = torch.Generator().manual_seed(zlib.crc32(key.encode('utf-8')))
        f64 = dict(generator=g, dtype=torch.float64)
        if key.endswith('num_batches_tracked'):
            value = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith('running_var'):
            value = 0.5 + torch.rand(shape, **f64)
        elif key.endswith('running_mean'):
            value = 0.1 * torch.randn(shape, **f64)
        elif len(shape) >= 2:
            value = torch.randn(shape, **f64) * (1 / math.prod(shape[1:])) ** 0.5
        elif key.endswith('weight'):
            value = 1 + 0.1 * torch.randn(shape, **f64)
        else:
            value = 0.1 * torch.randn(shape, **f64)
        assert str(value.dtype) == f'torch.{dtype}', key
        out[key] = value
    return out


def reference_input() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2023), dtype=torch.float64)


@pytest.mark.parametrize('arch', sorted(REFERENCE['models']))
def test_converted_models_reproduce_the_original_outputs(arch):
    ref = REFERENCE['models'][arch]
    model = create(arch).double().eval()
    model.load_state_dict(convert_official_state_dict(official_state(arch), arch), strict=True)
    with torch.no_grad():  # eval mode: deterministic mask; the plain forward is checked in the CLI test
        out = model.forward_train(reference_input())
    expected = torch.tensor(ref['logits'], dtype=torch.float64)
    tol = 1e-6 * expected.abs().max().item()  # the reference's tolerance: fsr_hub computes the mask in float32
    torch.testing.assert_close(out.logits, expected, atol=tol, rtol=0)
    (position, aux), = out.aux.items()  # one FSR position: the architecture's default
    assert position == model.fsr_positions[0]
    for got, key in ((aux.logits_pos, 'aux_logits_robust'), (aux.logits_neg, 'aux_logits_nonrobust'),
                     (aux.logits_rec, 'aux_logits_recalibrated')):
        torch.testing.assert_close(got, torch.tensor(ref[key][0], dtype=torch.float64), atol=tol, rtol=0)


def test_cli_converts_an_original_checkpoint(tmp_path, capsys):
    """DataParallel prefix and a {'state_dict': ...} wrapper, through the command line, fp16 on the way."""
    state = official_state('fsr_resnet18')
    ckpt = tmp_path / 'official.pth'
    torch.save({'state_dict': {'module.' + k: v.float() if v.is_floating_point() else v for k, v in state.items()}},
               ckpt)
    out = tmp_path / 'converted.safetensors'
    assert load_tool('convert_official').main([str(ckpt), '--arch', 'fsr_resnet18', '--out', str(out), '--fp16']) == 0
    assert 'loads strictly into fsr_resnet18' in capsys.readouterr().out
    model = create('fsr_resnet18')
    load_weights(model, out)
    expected = torch.tensor(REFERENCE['models']['fsr_resnet18']['logits'])
    with torch.no_grad():
        got = model.eval()(reference_input().float())
    assert (got - expected).abs().max() < 5e-3 * expected.abs().max()  # fp16 weights: measured 7e-4 of 1.26
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.skipif(PYAUTOATTACK_RESNET18 is None or not PYAUTOATTACK_RESNET18.is_file(),
                    reason='pyautoattack/examples/model_test.pt is not installed (pyautoattack wheel without examples)')
def test_vanilla_twin_from_pyautoattacks_naturally_trained_resnet18(tmp_path):
    """Real weights: pyautoattack's example, a naturally trained CIFAR-10 ResNet-18 in the common CIFAR ResNet
    layout, converts to cifar_resnet18 and classifies the shipped sample well (measured: 189 of 200 = 94.5 %)."""
    out = tmp_path / 'nat.safetensors'
    assert load_tool('convert_official').main([str(PYAUTOATTACK_RESNET18), '--arch', 'cifar_resnet18',
                                               '--out', str(out)]) == 0
    model = create('cifar_resnet18')
    load_weights(model, out)
    x, y = load_sample()
    with torch.no_grad():
        accuracy = 100 * (model.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 90, accuracy
    with pytest.raises(ConversionError, match='not in the original cifar_vgg16 layout'):
        convert_official_state_dict(load_official_checkpoint(PYAUTOATTACK_RESNET18), 'cifar_vgg16')


def test_unknown_keys_are_reported():
    with pytest.raises(ConversionError, match=r"1 keys are not in the original fsr_resnet18 layout, e\.g\. \['foo"):
        convert_official_state_dict({'foo.bar': torch.zeros(1)}, 'fsr_resnet18')
    with pytest.raises(ConversionError, match='No conversion rules'):
        convert_official_state_dict({}, 'resnet50')
    # an FSR checkpoint is not a vanilla twin: its FSR keys have no place there
    with pytest.raises(ConversionError, match=r'28 keys are not in the original cifar_resnet18 layout, e\.g\. '
                                              r"\['separation\.sep_net\.0\.weight'"):
        convert_official_state_dict(official_state('fsr_resnet18'), 'cifar_resnet18')


def test_bad_checkpoint_files(tmp_path, capsys):
    with pytest.raises(ConversionError, match='not found'):
        load_official_checkpoint(tmp_path / 'none.pth')
    junk = tmp_path / 'junk.pth'
    for data in (b'not a checkpoint', b'hello world\n', b''):  # 'h' (104): an unknown pickle opcode, a KeyError
        junk.write_bytes(data)
        with pytest.raises(ConversionError, match='junk.pth is not a PyTorch checkpoint that torch.load'):
            load_official_checkpoint(junk)
    torch.save({'w': torch.ones(1), 'when': datetime.date(2026, 12, 4)}, junk)  # an object torch refuses to unpickle
    with pytest.raises(ConversionError, match='GLOBAL datetime.date was not an allowed global') as info:
        load_official_checkpoint(junk)
    assert '\n' not in str(info.value) and 'False' not in str(info.value)  # one line, no advice to load unsafely
    tool = load_tool('convert_official')
    assert tool.main([str(junk), '--arch', 'fsr_vgg16', '--out', str(tmp_path / 'o.safetensors')]) == 2
    assert 'junk.pth' in capsys.readouterr().err
    wrong = tmp_path / 'vgg_as_resnet.pth'
    torch.save(official_state('fsr_vgg16'), wrong)
    assert tool.main([str(wrong), '--arch', 'fsr_resnet18', '--out', str(tmp_path / 'o.safetensors')]) == 2
    assert 'not in the original fsr_resnet18 layout' in capsys.readouterr().err
