"""Pull: ``pretrained=True`` through timm / torch.hub and huggingface_hub's own download code, without network.

The huggingface_hub cache is filled by ``hf_hub_download`` itself (its public ``cache_dir`` and ``endpoint``
arguments) from a loopback HTTP server speaking the hub's ``/<repo>/resolve/<revision>/<file>`` protocol.
huggingface_hub reads ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` once, at import, and offers no
public way to change them afterwards, so each scenario runs in a fresh interpreter started with those documented
environment variables, and reports what it got as JSON.

No tag is released yet, so there is no registry pin: timm's public ``pretrained_cfg_overlay`` names the hub repo
and the sha256 instead, as a user loading their own copy would.
"""
import json
import shutil
from pathlib import Path

import pytest

from release_builders import (
    NAME, REPO_ID, REPO_ROOT, build_release, fill_hf_cache, json_result, serve_folders, start_python,
)

# Runs in the fresh interpreter: argv[1] is a JSON list of cases {id, how, cache_dir, hub}; prints one JSON object.
PULL = r'''
import json, sys, torch, timm
import fsr_hub
from fsr_hub.weights import read_weights
spec = json.loads(sys.argv[1])
file = read_weights(spec['weights'])
out = {}
for case in spec['cases']:
    kw = {'cache_dir': case['cache_dir']} if case.get('cache_dir') else {}
    overlay = dict(hf_hub_id=case.get('hub', spec['repo']), sha256=spec['sha256'])
    try:
        if case['how'] == 'timm':
            model = timm.create_model('fsr_resnet18', pretrained=True, pretrained_cfg_overlay=overlay, **kw)
        elif case['how'] == 'hf-hub':
            model = timm.create_model('hf-hub:' + case.get('hub', spec['repo']), pretrained=True, **kw)
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
        'sha256': model.pretrained_cfg.get('sha256'), 'source': model.pretrained_cfg.get('source'),
        'fsr_positions': list(model.fsr_positions)}
print(json.dumps(out))
'''


def _start(tmp: Path, release, cases, env):
    spec = dict(weights=str(release.folder / 'model.safetensors'), sha256=release.sha256, repo=REPO_ID,
                root=str(REPO_ROOT), cases=cases)
    return start_python(['-c', PULL, json.dumps(spec)], tmp, env=env)


@pytest.fixture(scope='module')
def full_release(tmp_path_factory):
    """A full-size fsr_resnet18 release (random fp16 weights): the registry architecture builds default args."""
    return build_release(tmp_path_factory.mktemp('release'), model_args={}, seed=3)


@pytest.fixture(scope='module')
def pulls(tmp_path_factory, full_release):
    """Two fresh interpreters, run side by side:

    * offline (HF_HUB_OFFLINE=1): pulls from three caches filled by hf_hub_download, complete (the HF_HUB_CACHE
      default), without the weights (a cache_dir argument), and with a tampered weights blob;
    * online: pulls over HTTP from the loopback hub serving the release, a copy with tampered weights and a copy
      without them.
    """
    tmp = tmp_path_factory.mktemp('pulls')
    fill_hf_cache(tmp / 'full', REPO_ID, full_release.folder)
    fill_hf_cache(tmp / 'partial', REPO_ID, full_release.folder, files=['config.json', 'README.md', 'results.json'])
    blob = fill_hf_cache(tmp / 'tampered', REPO_ID, full_release.folder)['model.safetensors'].resolve()
    _flip_last_byte(blob)  # still a readable safetensors file: only the sha256 tells
    offline_cases = [dict(id=how, how=how) for how in ('timm', 'hf-hub', 'torch.hub')] + [
        dict(id='missing', how='timm', cache_dir=str(tmp / 'partial')),
        dict(id='tampered timm', how='timm', cache_dir=str(tmp / 'tampered')),
        dict(id='tampered hf-hub', how='hf-hub', cache_dir=str(tmp / 'tampered'))]
    served_tampered, served_missing = tmp / 'served_tampered', tmp / 'served_missing'
    shutil.copytree(full_release.folder, served_tampered)
    _flip_last_byte(served_tampered / 'model.safetensors')
    shutil.copytree(full_release.folder, served_missing)
    (served_missing / 'model.safetensors').unlink()
    repos = {REPO_ID: full_release.folder, f'tampered/{NAME}': served_tampered, f'missing/{NAME}': served_missing}
    online_cases = [dict(id=how, how=how) for how in ('timm', 'hf-hub', 'torch.hub')] + [
        dict(id='tampered', how='hf-hub', hub=f'tampered/{NAME}'),
        dict(id='missing', how='timm', hub=f'missing/{NAME}')]
    with serve_folders(repos) as (endpoint, requests):
        offline = _start(tmp, full_release, offline_cases, env={'HF_HUB_CACHE': str(tmp / 'full')})
        online = _start(tmp, full_release, online_cases,
                        env={'HF_HUB_OFFLINE': '0', 'HF_ENDPOINT': endpoint, 'HF_HUB_CACHE': str(tmp / 'online')})
        results = {'offline': json_result(offline), 'online': json_result(online)}
    return results, list(requests)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_hf_hub_download_fills_a_cache_that_serves_offline(pulls, full_release):
    offline = pulls[0]['offline']
    for way in ('timm', 'hf-hub', 'torch.hub'):
        assert offline[way].get('identical') is True, (way, offline[way])
        assert offline[way]['sha256'] == full_release.sha256, way
    # hf-hub: config.json's sha256 pin and FSR positions came along with the architecture
    assert offline['hf-hub']['source'] == 'hf-hub' and offline['hf-hub']['fsr_positions'] == ['layer4']


def test_offline_tampered_blob_fails(pulls, full_release):
    offline = pulls[0]['offline']
    assert offline['tampered timm']['error'].startswith('WeightsError: sha256 mismatch')
    assert f'expected {full_release.sha256}' in offline['tampered timm']['error']
    assert offline['tampered hf-hub']['error'].startswith('WeightsError: sha256 mismatch')  # config.json's pin


def test_offline_cache_dir_is_honoured_and_a_missing_file_named(pulls):
    offline = pulls[0]['offline']
    # the default cache (HF_HUB_CACHE) holds the weights; the cache_dir given does not, and wins
    assert offline['missing']['error'].startswith(f'WeightsError: Could not get model.safetensors of {NAME}')
    assert REPO_ID in offline['missing']['error']


def test_http_endpoint_pull_byte_identical(pulls, full_release):
    got, requests = pulls[0]['online'], pulls[1]
    for way in ('timm', 'hf-hub', 'torch.hub'):
        assert got[way].get('identical') is True, (way, got[way])
    gets = [p for c, p in requests if c == 'GET']
    assert f'/{REPO_ID}/resolve/main/model.safetensors' in gets and f'/{REPO_ID}/resolve/main/config.json' in gets


def test_http_endpoint_tampered_and_missing(pulls):
    got = pulls[0]['online']
    assert got['tampered']['error'].startswith('WeightsError: sha256 mismatch')
    assert got['missing']['error'].startswith('WeightsError: Could not get model.safetensors')
    assert 'EntryNotFoundError' in got['missing']['error']
