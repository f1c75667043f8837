"""Checkpoints in the original FSR code's layout convert to ours and give identical logits."""
import pytest
import timm
import torch

import fsr_hub  # noqa: F401
from fsr_hub.convert import ConversionError, convert_official_state_dict, load_official_checkpoint
from tools.convert_official import main as convert_main


def _official_resnet18(ours):
    """Original ResNet-18 key names, written out from the original code's module names."""
    out = {}
    for k, v in ours.items():
        k = (k.replace('stem.0.', 'conv1.').replace('stem.1.', 'bn1.').replace('.downsample.', '.shortcut.')
             .replace('fc.', 'linear.').replace('fsr.layer4.separation.', 'separation.sep_net.')
             .replace('fsr.layer4.recalibration.', 'recalibration.rec_net.').replace('fsr.layer4.aux.', 'aux.0.'))
        out[k] = v
    return out


def _official_vgg16(ours):
    out = {}
    for k, v in ours.items():
        k = (k.replace('pre_logits.0.', 'classifier.0.').replace('pre_logits.2.', 'classifier.2.')
             .replace('fc.', 'classifier.4.').replace('fsr.block3.separation.', 'separation.sep_net.')
             .replace('fsr.block3.recalibration.', 'recalibration.rec_net.').replace('fsr.block3.aux.', 'aux.0.'))
        out[k] = v
    return out


def _official_wrn(ours):
    out = {}
    for k, v in ours.items():
        parts = k.split('.')
        if parts[0] in ('block1', 'block2', 'block3'):
            k = '.'.join([parts[0], 'layer', parts[1]] + parts[2:]).replace('.shortcut.', '.convShortcut.')
        k = (k.replace('stem.0.', 'conv1.').replace('final_norm.0.', 'bn1.')
             .replace('fsr.final_norm.separation.', 'separation.sep_net.')
             .replace('fsr.final_norm.recalibration.', 'recalibration.rec_net.')
             .replace('fsr.final_norm.aux.', 'aux.0.'))
        out[k] = v
    # the original WRN-34-10 also carries an unused sub_block1 (2,102,112 parameters)
    out['sub_block1.layer.0.conv1.weight'] = torch.zeros(160, 16, 3, 3)
    return out


CASES = {'fsr_resnet18': _official_resnet18, 'fsr_vgg16': _official_vgg16, 'fsr_wrn34_10': _official_wrn}


@pytest.mark.parametrize('arch', sorted(CASES))
def test_converted_weights_give_identical_logits(arch, tmp_path):
    torch.manual_seed(0)
    src = timm.create_model(arch)
    with torch.no_grad():  # non-trivial BN statistics so a wrong mapping cannot hide
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    official = CASES[arch](src.state_dict())
    assert not any(k.startswith(('stem.', 'fsr.', 'final_norm.', 'pre_logits.')) for k in official)
    ckpt = tmp_path / 'official.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in official.items()}}, ckpt)
    out = tmp_path / 'converted.safetensors'
    assert convert_main([str(ckpt), '--arch', arch, '--out', str(out)]) == 0
    dst = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


def test_unknown_keys_are_reported():
    with pytest.raises(ConversionError, match=r"1 keys are not in the original fsr_resnet18 layout, e.g. \['foo.bar'\]"):
        convert_official_state_dict({'foo.bar': torch.zeros(1)}, 'fsr_resnet18')
    with pytest.raises(ConversionError, match='No conversion rules'):
        convert_official_state_dict({}, 'resnet50')


def test_bad_checkpoint_files(tmp_path, capsys):
    with pytest.raises(ConversionError, match='not found'):
        load_official_checkpoint(tmp_path / 'none.pth')
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ConversionError, match='junk.pth cannot be loaded with torch.load'):
        load_official_checkpoint(junk)
    assert convert_main([str(junk), '--arch', 'fsr_vgg16', '--out', str(tmp_path / 'o.safetensors')]) == 2
    assert 'junk.pth' in capsys.readouterr().err
    wrong = tmp_path / 'vgg_as_resnet.pth'
    torch.save(_official_vgg16(timm.create_model('fsr_vgg16').state_dict()), wrong)
    assert convert_main([str(wrong), '--arch', 'fsr_resnet18', '--out', str(tmp_path / 'o.safetensors')]) == 2
