"""Safetensors save/load, sha256 pinning, and clear errors for every bad weight file."""
import pytest
import timm
import torch
from safetensors import safe_open

import fsr_hub  # noqa: F401
from fsr_hub.weights import WeightsError, load_weights, read_weights, save_weights, sha256_file


@pytest.fixture(scope='module')
def resnet():
    torch.manual_seed(0)
    return timm.create_model('fsr_resnet18').eval()


@pytest.fixture(scope='module')
def saved(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp('w') / 'model.safetensors'
    sha = save_weights(resnet, path, metadata={'architecture': 'fsr_resnet18'})
    return path, sha


def test_round_trip_is_exact(resnet, saved):
    path, sha = saved
    assert sha == sha256_file(path)
    m = timm.create_model('fsr_resnet18')
    load_weights(m, path, sha)
    for (k, a), b in zip(resnet.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m.eval()(x), resnet(x))


def test_fp16_file_is_half_and_loads(resnet, tmp_path):
    path = tmp_path / 'half.safetensors'
    save_weights(resnet, path, dtype=torch.float16)
    with safe_open(str(path), 'pt') as f:
        assert f.get_tensor('fc.weight').dtype == torch.float16
        assert f.get_tensor('stem.1.num_batches_tracked').dtype == torch.int64
    m = timm.create_model('fsr_resnet18')
    load_weights(m, path)
    torch.testing.assert_close(m.fc.weight, resnet.fc.weight, atol=1e-3, rtol=1e-3)


def test_create_model_pretrained_from_local_file(resnet, saved):
    path, sha = saved
    m = timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(path), sha256=sha))
    assert torch.equal(m.fc.weight, resnet.fc.weight)
    # another num_classes: every head is re-initialised, everything else is loaded
    m5 = timm.create_model('fsr_resnet18', pretrained=True, num_classes=5,
                           pretrained_cfg_overlay=dict(file=str(path), sha256=sha))
    assert m5.fc.out_features == 5 and m5.fsr['layer4'].aux.out_features == 5
    assert torch.equal(m5.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(m5.fsr['layer4'].separation[0].weight, resnet.fsr['layer4'].separation[0].weight)


def test_unreleased_tag_says_so():
    with pytest.raises(WeightsError, match='No weights have been released for fsr_resnet18.at_cifar10'):
        timm.create_model('fsr_resnet18.at_cifar10', pretrained=True)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match='not found.*nope.safetensors'):
        read_weights(tmp_path / 'nope.safetensors')


def test_truncated_file_names_the_file(saved, tmp_path):
    path, sha = saved
    bad = tmp_path / 'truncated.safetensors'
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match='sha256 mismatch for .*truncated.safetensors'):
        read_weights(bad, sha)
    with pytest.raises(WeightsError, match='truncated.safetensors is not a readable safetensors file'):
        read_weights(bad)


def test_tampered_file_fails_sha_check(saved, tmp_path):
    path, sha = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the last tensor: still a valid safetensors file
    bad = tmp_path / 'tampered.safetensors'
    bad.write_bytes(bytes(data))
    read_weights(bad)  # parses fine without a pin ...
    with pytest.raises(WeightsError, match='sha256 mismatch for .*tampered.safetensors'):
        read_weights(bad, sha)  # ... and is caught with one
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad), sha256=sha))


def test_missing_key_names_file_and_key(resnet, tmp_path):
    state = dict(resnet.state_dict())
    del state['fsr.layer4.aux.weight']
    path = tmp_path / 'missing.safetensors'
    save_weights(state, path)
    with pytest.raises(WeightsError, match=r"missing.safetensors does not fit CifarResNet: 1 missing keys \['fsr.layer4.aux.weight'\]"):
        load_weights(timm.create_model('fsr_resnet18'), path)


def test_wrong_architecture(saved):
    path, _ = saved
    with pytest.raises(WeightsError, match='model.safetensors does not fit CifarVGG'):
        load_weights(timm.create_model('fsr_vgg16'), path)
    with pytest.raises(WeightsError, match='unexpected keys'):  # vanilla twin has no FSR keys
        load_weights(timm.create_model('cifar_resnet18'), path)


def test_shape_mismatch(saved):
    path, _ = saved
    with pytest.raises(WeightsError, match='shape mismatch'):
        load_weights(timm.create_model('fsr_resnet18', fsr_hidden=32), path)


def test_save_is_atomic_and_leaves_no_temp(resnet, tmp_path):
    path = tmp_path / 'a' / 'model.safetensors'
    save_weights(resnet, path)
    assert [p.name for p in path.parent.iterdir()] == ['model.safetensors']
