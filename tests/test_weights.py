"""Safetensors save/load, sha256 pinning, pretrained loading through timm, and clear errors for every bad
weight file."""
import json
import os

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


def _unreleased_architecture() -> str:
    """A registered architecture without any released weights (the tests of 'nothing released' need one)."""
    bare = [a for a in timm.list_models(['fsr_*', 'cifar_*']) if not timm.list_pretrained(f'{a}.*')]
    if not bare:
        pytest.skip('every architecture has a release')
    return bare[0]


def test_unreleased_tag_says_so():
    with pytest.raises(WeightsError, match='No weights have been released for fsr_resnet18.at_cifar10 yet'):
        timm.create_model('fsr_resnet18.at_cifar10', pretrained=True)
    released = ', '.join(timm.list_pretrained('fsr_resnet18.*')) or 'none yet'
    with pytest.raises(ValueError, match=f"Unknown pretrained tag 'at_cifar11' for fsr_resnet18; released: {released}"):
        timm.create_model('fsr_resnet18.at_cifar11')
    bare = _unreleased_architecture()  # an architecture with no release names no weights
    with pytest.raises(WeightsError, match=rf'{bare} has no pretrained weights \(released tags: none yet\)'):
        timm.create_model(bare, pretrained=True)


def test_pretrained_through_timm_keeps_features_and_adapts_input_channels(resnet, saved):
    path, sha = saved
    overlay = dict(file=str(path), sha256=sha)
    feat = timm.create_model('fsr_resnet18', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = resnet.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(feat.eval()(x), expected))
    gray = timm.create_model('fsr_resnet18', pretrained=True, in_chans=1, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(gray.stem[0].weight, resnet.stem[0].weight.sum(1, keepdim=True))  # timm's adaptation
    assert torch.equal(gray.layer1[0].conv1.weight, resnet.layer1[0].conv1.weight)


def test_pretrained_from_a_local_folder(resnet, saved, tmp_path):
    """``local-dir:<folder>`` reads config.json (timm's format) and is held to the sha256 it pins."""
    path, sha = saved
    folder = tmp_path / 'release'
    folder.mkdir()
    (folder / 'model.safetensors').write_bytes(path.read_bytes())
    cfg = {k: v for k, v in resnet.pretrained_cfg.items() if k != 'architecture'}
    (folder / 'config.json').write_text(json.dumps(
        {'architecture': 'fsr_resnet18', 'num_classes': 10, 'pretrained_cfg': dict(cfg, tag='local', sha256=sha)}))
    m = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert torch.equal(m.fc.weight, resnet.fc.weight) and m.pretrained_cfg['sha256'] == sha
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    (folder / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f'sha256 mismatch for {folder}/model.safetensors'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_only_checked_safetensors_files_load(saved, tmp_path):
    path, _ = saved
    # a file of one's own, unpinned (sha256=None: without it the architecture's released default pin applies)
    own = lambda file: dict(file=str(file), sha256=None)  # noqa: E731
    pickle_name = tmp_path / 'model.pth'
    pickle_name.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match='model.pth: fsr_hub loads safetensors files only'):
        timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=own(pickle_name))
    truncated = tmp_path / 'cut.safetensors'
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match='cut.safetensors is not a readable safetensors file') as e:
        timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=own(truncated))
    assert '\n' not in str(e.value)
    with pytest.raises(WeightsError, match='Weight file not found: .*nothing.safetensors'):
        timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=own(tmp_path / 'nothing.safetensors'))
    # a hub download needs a pin (checked before anything is fetched); a released default is one, so an
    # architecture without a release shows it
    with pytest.raises(WeightsError, match=r'no sha256 pinned for the weights of someone/mirror'):
        timm.create_model(_unreleased_architecture(), pretrained=True,
                          pretrained_cfg_overlay=dict(hf_hub_id='someone/mirror'))
    if timm.list_pretrained('fsr_resnet18.*'):  # the released default's pin holds for a file without its own
        with pytest.raises(WeightsError, match='sha256 mismatch for .*cut.safetensors'):
            timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(truncated)))


def test_another_num_classes_is_still_strict_for_everything_else(resnet, tmp_path):
    state = dict(resnet.state_dict(), **{'bogus.weight': torch.zeros(1)})
    path = tmp_path / 'extra.safetensors'
    save_weights(state, path)
    with pytest.raises(WeightsError, match=r"extra.safetensors does not fit CifarResNet: 0 missing keys \[\], "
                                           r"1 unexpected keys \['bogus.weight'\]"):
        timm.create_model('fsr_resnet18', pretrained=True, num_classes=5,
                          pretrained_cfg_overlay=dict(file=str(path), sha256=None))


def test_equal_tensors_give_equal_bytes(resnet, tmp_path):
    """safetensors orders the metadata differently from call to call; save_weights writes sorted JSON."""
    meta = {'architecture': 'fsr_resnet18', 'epoch': '3', 'zeta': 'z', 'alpha': 'a', 'tag': 'at_cifar10'}
    shas = {save_weights(resnet, tmp_path / f'{i}.safetensors', metadata=meta) for i in range(6)}
    assert len(shas) == 1 and sha256_file(tmp_path / '0.safetensors') in shas
    with safe_open(str(tmp_path / '0.safetensors'), 'pt') as f:
        assert f.metadata() == {'format': 'pt', **meta}
    state, back = resnet.state_dict(), read_weights(tmp_path / '0.safetensors')
    assert back.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in back.items())


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o077, 0o600)])
def test_saved_file_mode_follows_the_umask(resnet, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        save_weights({'w': torch.zeros(2)}, tmp_path / 'w.safetensors')
    finally:
        os.umask(old)
    assert (tmp_path / 'w.safetensors').stat().st_mode & 0o777 == mode


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
    message = r"missing.safetensors does not fit CifarResNet: 1 missing keys \['fsr.layer4.aux.weight'\]"
    with pytest.raises(WeightsError, match=message):
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
