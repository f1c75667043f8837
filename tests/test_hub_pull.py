"""Pull: ``pretrained=True`` through timm / torch.hub and huggingface_hub's own download code, without network.

The huggingface_hub cache is filled by ``hf_hub_download`` itself (its public ``cache_dir`` and ``endpoint``
arguments) from a loopback HTTP server speaking the hub's ``/<repo>/resolve/<revision>/<file>`` protocol.
huggingface_hub reads ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` once, at import, and offers no
public way to change them afterwards, so the pulls run in one fresh interpreter started offline with those
documented environment variables, and report what they got as JSON.

The release pulled here has random weights and no registry pin: timm's public ``pretrained_cfg_overlay`` names the
hub repo and the sha256 instead, as a user loading their own copy would (the registry's pins: test_registry.py).
"""
import json

import pytest

from fsr_hub.release import REQUIRED_FILES

from release_builders import (
    REPO_ID, REPO_ROOT, SMALL_ARGS, build_release, fill_hf_cache, json_result, start_python,
)

# Runs in the fresh interpreter: argv[1] holds the cases {id, how, cache_dir}; prints one JSON object.
PULL = r'''
import json, sys, torch, timm
import fsr_hub
from fsr_hub.weights import read_weights
spec = json.loads(sys.argv[1])
out = {}
for case in spec['cases']:
    file = read_weights(spec['plug_weights' if case['how'] == 'fsr_hub' else 'weights'])
    kw = dict(spec['model_args'], **({'cache_dir': case['cache_dir']} if case.get('cache_dir') else {}))
    overlay = dict(hf_hub_id=spec['repo'], sha256=spec['sha256'])
    try:
        if case['how'] == 'timm':
            model = timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=overlay, **kw)
        elif case['how'] == 'hf-hub':
            model = timm.create_model('hf-hub:' + spec['repo'], pretrained=True, cache_dir=case.get('cache_dir'))
        elif case['how'] == 'fsr_hub':  # a timm CNN + FSR release: fsr_hub's create builds what timm cannot
            model = fsr_hub.models.create('hf-hub:' + spec['plug_repo'], pretrained=True)
        else:
            model = torch.hub.load(spec['root'], 'fsr_resnet18', source='local', pretrained=True,
                                   pretrained_cfg_overlay=overlay, **kw)
    except Exception as e:  # reported to the test, which checks the type and message
        out[case['id']] = {'error': f'{type(e).__name__}: {e}'}
        continue
    state = model.state_dict()
    out[case['id']] = {
        'identical': state.keys() == file.keys() and all(
            state[k].to(v.dtype).numpy().tobytes() == v.numpy().tobytes() for k, v in file.items()),
        'sha256': model.pretrained_cfg.get('sha256'), 'hf_hub_id': model.pretrained_cfg.get('hf_hub_id'),
        'fsr_positions': list(model.fsr_positions)}
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def release(tmp_path_factory):
    """A random-weight fp16 fsr_resnet18 release with 1-block stages (its config.json records the model_args)."""
    return build_release(tmp_path_factory.mktemp('release'), seed=3)


@pytest.fixture(scope='module')
def plug_release(tmp_path_factory):
    """A random-weight release of timm's test_resnet with FSR added after layer4."""
    return build_release(tmp_path_factory.mktemp('plug'), architecture='test_resnet', seed=4,
                         model_args={'num_classes': 10, 'fsr_positions': ['layer4'], 'fsr_hidden': 8})


@pytest.fixture(scope='module')
def pulls(tmp_path_factory, release, plug_release):
    """A fresh interpreter with HF_HUB_OFFLINE=1 pulls through timm, hf-hub: and torch.hub from three caches filled
    by hf_hub_download from the loopback hub: complete (the HF_HUB_CACHE default), without the weights (given as
    a cache_dir argument), and with a tampered weights blob."""
    tmp = tmp_path_factory.mktemp('pulls')
    requests = []
    fill_hf_cache(tmp / 'full', REPO_ID, release.folder, log=requests)
    fill_hf_cache(tmp / 'full', plug_release.hub_id, plug_release.folder, files=['config.json', 'model.safetensors'])
    fill_hf_cache(tmp / 'partial', REPO_ID, release.folder, files=['config.json', 'README.md', 'results.json'])
    blob = fill_hf_cache(tmp / 'tampered', REPO_ID, release.folder)['model.safetensors'].resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last tensor element: still a readable safetensors file
    blob.write_bytes(bytes(data))
    cases = [dict(id=how, how=how) for how in ('timm', 'hf-hub', 'torch.hub')] + [
        dict(id='missing', how='timm', cache_dir=str(tmp / 'partial')),
        dict(id='tampered timm', how='timm', cache_dir=str(tmp / 'tampered')),
        dict(id='tampered hf-hub', how='hf-hub', cache_dir=str(tmp / 'tampered')), dict(id='fsr_hub', how='fsr_hub')]
    spec = dict(weights=str(release.folder / 'model.safetensors'), sha256=release.sha256, repo=REPO_ID,
                plug_repo=plug_release.hub_id, plug_weights=str(plug_release.folder / 'model.safetensors'),
                root=str(REPO_ROOT), model_args=SMALL_ARGS, cases=cases)
    proc = start_python(['-c', PULL, json.dumps(spec)], tmp, env={'HF_HUB_CACHE': str(tmp / 'full')})
    return json_result(proc), requests


def test_cache_filled_by_hf_hub_download_over_http(pulls):
    gets = [p for c, p in pulls[1] if c == 'GET']
    assert sorted(gets) == sorted(f'/{REPO_ID}/resolve/main/{f}' for f in REQUIRED_FILES)


def test_offline_pulls_are_byte_identical(pulls, release):
    got = pulls[0]
    for way in ('timm', 'hf-hub', 'torch.hub'):
        assert got[way].get('identical') is True, (way, got[way])
        assert got[way]['sha256'] == release.sha256, way
    # hf-hub: the architecture, its model_args and config.json's sha256 pin came from config.json
    assert got['hf-hub']['hf_hub_id'] == REPO_ID and got['hf-hub']['fsr_positions'] == ['layer4']
    # a timm CNN + FSR: built by fsr_hub.models.create from config.json, weights checked against its sha256
    assert got['fsr_hub'].get('identical') is True and got['fsr_hub']['fsr_positions'] == ['layer4'], got['fsr_hub']


def test_offline_tampered_blob_fails(pulls, release):
    got = pulls[0]
    assert got['tampered timm']['error'].startswith('WeightsError: sha256 mismatch')
    assert f'expected {release.sha256}' in got['tampered timm']['error']
    assert got['tampered hf-hub']['error'].startswith('WeightsError: sha256 mismatch')  # config.json's pin


def test_offline_cache_dir_is_honoured_and_a_missing_file_named(pulls):
    # the default cache (HF_HUB_CACHE) holds the weights; the cache_dir given does not, and wins
    error = pulls[0]['missing']['error']
    assert error.startswith('WeightsError: Could not get model.safetensors of fsr_resnet18') and REPO_ID in error
