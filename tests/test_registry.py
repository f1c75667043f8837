"""Registry honesty: timm lists exactly the released weights (fsr_hub.catalog.RELEASED), planned names are not
registered, and every release also goes by its RobustBench name."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import fsr_hub  # noqa: F401
from fsr_hub.models import ALIASES, ALL_MODELS, CifarResNet, register_robustbench_alias
from fsr_hub.catalog import (
    DEFAULT_ORDER, DEFAULT_ORG, PLANNED, RELEASED, default_release, hub_id, local_release, robustbench_name,
    split_name,
)
from fsr_hub.weights import WeightsError, read_weights, resolve_pretrained_file, save_weights

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_timm_lists_exactly_the_released_weights():
    ours = [m for arch in ALL_MODELS for m in timm.list_pretrained(f'{arch}.*')]
    assert sorted(ours) == sorted(RELEASED)
    assert timm.list_pretrained('fsr*') == sorted(n for n in RELEASED if n.startswith('fsr'))  # [] until a release
    for name in set(PLANNED) - set(RELEASED):
        assert not timm.models.is_model_pretrained(name)
        with pytest.raises(WeightsError, match=f'No weights have been released for {name} yet'):
            timm.create_model(name)
    for arch in ALL_MODELS:  # an architecture without a release names no weights
        if not any(n.startswith(arch + '.') for n in RELEASED):
            cfg = timm.models.get_pretrained_cfg(arch)
            assert cfg.hf_hub_id is None and cfg.sha256 is None and cfg.file is None and cfg.tag is None


@pytest.mark.parametrize('name', sorted(RELEASED) or [pytest.param(None, marks=pytest.mark.skip(
    reason='nothing released yet'))])
def test_a_released_name_has_its_release_folder(name):
    """A pin in RELEASED goes with model_cards/<name>/: config.json pinning the same sha256, results.json, the card;
    the weights themselves may be moved out of the checkout (during device calls), so only their pin is read."""
    folder = REPO_ROOT / 'model_cards' / name
    assert all((folder / f).is_file() for f in ('config.json', 'results.json', 'README.md')), folder
    config = json.loads((folder / 'config.json').read_text())
    assert config['pretrained_cfg']['sha256'] == RELEASED[name] == json.loads(
        (folder / 'results.json').read_text())['model']['sha256']
    assert config['hub_id'] == hub_id(name)


#: the pretrained-cfg fields timm's tooling reads (data config, feature and head helpers)
TIMM_CFG_FIELDS = ('input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std', 'num_classes', 'first_conv',
                   'classifier')


def test_every_registered_cfg_has_timms_fields():
    names = list(ALL_MODELS) + sorted(ALIASES) + timm.list_pretrained([f'{a}.*' for a in ALL_MODELS])
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        missing = [f for f in TIMM_CFG_FIELDS if getattr(cfg, f) is None]
        assert not missing, f'{name}: {missing}'
        assert len(cfg.input_size) == 3 and len(cfg.pool_size) == 2 and len(cfg.mean) == len(cfg.std) == 3


def test_hub_org_is_not_read_from_the_environment():
    assert DEFAULT_ORG == 'fsr-hub' and hub_id('fsr_resnet18.at_cifar10') == 'fsr-hub/fsr_resnet18.at_cifar10'
    assert hub_id('fsr_resnet18.at_cifar10', org='me') == 'me/fsr_resnet18.at_cifar10'
    assert fsr_hub.hub_id is hub_id and not hasattr(fsr_hub, 'HF_ORG')


@pytest.mark.parametrize('name, model_name, dataset, alias', [
    ('fsr_resnet18.at_cifar10', 'Kim2023FSR_RN18', 'cifar10', 'kim2023fsr_rn18_cifar10_linf'),
    ('cifar_resnet18.at_cifar10', 'Kim2023FSR_RN18_noFSR', 'cifar10', 'kim2023fsr_rn18_nofsr_cifar10_linf'),
    ('fsr_wrn34_10.at_cifar10', 'Kim2023FSR_WRN-34-10', 'cifar10', 'kim2023fsr_wrn_34_10_cifar10_linf'),
    ('fsr_vgg16.trades_svhn', 'Kim2023FSR_VGG16_TRADES', 'svhn', 'kim2023fsr_vgg16_trades_svhn_linf'),
    ('fsr_resnet18.fgsmrs_cifar10', 'Kim2023FSR_RN18_FGSMRS', 'cifar10', 'kim2023fsr_rn18_fgsmrs_cifar10_linf'),
])
def test_robustbench_names(name, model_name, dataset, alias):
    assert robustbench_name(name) == alias
    # what RobustBench's load_model(model_name, dataset, 'Linf') asks timm for first
    assert f"{model_name.lower().replace('-', '_')}_{dataset}_linf" == alias


@pytest.mark.parametrize('bad', ['fsr_resnet18', 'resnet50.at_cifar10', 'fsr_resnet18.cifar10'])
def test_robustbench_name_refuses_non_release_names(bad):
    with pytest.raises(ValueError):
        robustbench_name(bad)


def test_robustbench_alias_builds_the_release_through_timm(tmp_path):
    """The registry registers an alias for every RELEASED name; here for a test-only name (timm cannot unregister,
    so the name is one no release will take)."""
    torch.manual_seed(0)
    src = timm.create_model('cifar_resnet18').eval()
    path = tmp_path / 'model.safetensors'
    sha = save_weights(src, path)
    name = 'cifar_resnet18.registrytest_cifar10'
    alias = register_robustbench_alias(name, sha)
    assert alias == 'kim2023fsr_rn18_nofsr_registrytest_cifar10_linf' and ALIASES[alias] == name
    assert timm.is_model(alias) and alias in timm.list_pretrained('kim2023fsr_*')
    cfg = timm.models.get_pretrained_cfg(alias)
    assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.sha256) == (hub_id(name), 'model.safetensors', sha)
    # RobustBench's own call, with the weight file at hand instead of on the hub
    m = timm.create_model(alias, num_classes=10, pretrained=True, checkpoint_path='',
                          pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert type(m) is CifarResNet and m.fsr_positions == ()
    assert (m.pretrained_cfg['architecture'], m.pretrained_cfg['tag'], m.pretrained_cfg['sha256']) == (
        'cifar_resnet18', 'registrytest_cifar10', sha)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / 'other.safetensors').write_bytes(bytes(data))
    with pytest.raises(WeightsError, match='sha256 mismatch for .*other.safetensors'):  # the alias's pin holds
        timm.create_model(alias, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'other.safetensors')))
    with pytest.raises(ValueError, match='already registered'):
        register_robustbench_alias(name, sha)


_FIRST_RELEASE = r'''
import json, sys
import timm, torch
import fsr_hub
name, sha, good, bad = sys.argv[1:]
assert list(fsr_hub.catalog.RELEASED)[0] == name and fsr_hub.catalog.RELEASED[name] == sha
from fsr_hub.weights import WeightsError, expected_sha256

out = {'listed': timm.list_pretrained('fsr*'), 'aliases': timm.list_pretrained('kim2023fsr*'),
       'default_tag': timm.models.get_pretrained_cfg('fsr_resnet18').tag}
x = torch.rand(1, 3, 32, 32)
a = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=good)).eval()
b = timm.create_model('kim2023fsr_rn18_cifar10_linf', pretrained=True, pretrained_cfg_overlay=dict(file=good)).eval()
out['alias_equal'] = bool(torch.equal(a(x), b(x)))
for key, call in [
        ('tampered', lambda: timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=bad))),
        ('config_json', lambda: expected_sha256(dict(architecture='fsr_resnet18', tag='at_cifar10',
                                                     hf_hub_id=fsr_hub.hub_id(name), sha256='0' * 64)))]:
    try:
        call()
        out[key] = None
    except WeightsError as e:
        out[key] = str(e)
out['mirror'] = timm.models.resolve_pretrained_cfg('fsr_resnet18', 'at_cifar10', dict(hf_hub_id='me/mirror')).sha256
print(json.dumps(out))
'''


def test_a_released_name_is_registered_pinned_and_aliased(tmp_path):
    """What a release changes: a copy of the package whose RELEASED table holds it first, in a fresh interpreter
    (registration happens at import)."""
    torch.manual_seed(0)
    good, bad = tmp_path / 'good.safetensors', tmp_path / 'bad.safetensors'
    sha = save_weights(timm.create_model('fsr_resnet18', layers=(1, 1, 1, 1)).state_dict(), good)
    data = bytearray(good.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    name = 'fsr_resnet18.at_cifar10'
    package = tmp_path / 'pkg' / 'fsr_hub'
    shutil.copytree(REPO_ROOT / 'fsr_hub', package, ignore=shutil.ignore_patterns('__pycache__'))
    catalog = package / 'catalog.py'
    table = 'RELEASED: Dict[str, str] = {'
    assert catalog.read_text().count(table) == 1 and name not in fsr_hub.catalog.RELEASED
    catalog.write_text(catalog.read_text().replace(table, f'{table}{name!r}: {sha!r}, '))
    # the first release's weights would be the full ResNet-18; a 1-block file checks the same path in less time
    script = _FIRST_RELEASE.replace("pretrained=True,", "pretrained=True, layers=(1, 1, 1, 1),")
    proc = subprocess.run([sys.executable, '-c', script, name, sha, str(good), str(bad)], cwd=tmp_path / 'pkg',
                          env=dict(os.environ, PYTHONPATH=str(tmp_path / 'pkg')), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    others = [n for n in RELEASED if n.startswith('fsr')]
    assert out['listed'] == sorted([name] + others)
    # every release has a RobustBench alias, the vanilla twins (cifar_*) included
    assert out['aliases'] == sorted(['kim2023fsr_rn18_cifar10_linf'] + [robustbench_name(n) for n in RELEASED])
    assert out['default_tag'] == 'at_cifar10'  # timm's default weights of the architecture
    assert out['alias_equal']
    assert out['tampered'].startswith('sha256 mismatch for ') and f'expected {sha}' in out['tampered']
    assert out['config_json'] == (f"fsr-hub/{name}: config.json pins sha256 {'0' * 64} but fsr_hub's registry pins "
                                  f"{sha}.")
    assert out['mirror'] == sha  # a mirror of the release is held to the same pin


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_a_release_in_this_checkout_loads_offline(name):
    """In a source checkout the registry points a released name at its release folder's file (sha256-checked), so
    ``pretrained=True`` needs no network; an installed wheel has no folder and goes to the hub."""
    weights = REPO_ROOT / 'model_cards' / name / 'model.safetensors'
    if not weights.is_file():
        pytest.skip(f'{weights} moved out of the checkout')
    assert local_release(name) == weights.parent
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert resolve_pretrained_file(cfg) == weights  # the registry's own hub repo, from the checkout
    other = resolve_pretrained_file({**cfg, 'file': str(weights.parent)})  # a file given wins, as timm's local-dir:
    assert other == weights
    model = timm.create_model(name, pretrained=True)
    state = read_weights(weights)
    assert all(torch.equal(v, state[k].to(v.dtype)) for k, v in model.state_dict().items())
    assert local_release('fsr_resnet18.no_such_tag') is None


def test_the_default_release_is_the_best_released():
    assert default_release({}) == DEFAULT_ORDER[0]  # nothing released: the first planned (the main job says so)
    assert default_release({'fsr_resnet18.fgsmrs_cifar10': '0' * 64}) == 'fsr_resnet18.fgsmrs_cifar10'
    both = {'fsr_resnet18.fgsmrs_cifar10': '0' * 64, 'fsr_resnet18.at_cifar10': '1' * 64}
    assert default_release(both) == 'fsr_resnet18.at_cifar10'  # the paper's recipe, once released
    assert default_release() in RELEASED


def test_timm_and_torch_hub_default_to_the_main_jobs_release():
    """``pretrained=True`` without a tag gives the release ``python -m fsr_hub`` shows (not the first released)."""
    arch, tag = split_name(default_release())
    assert timm.models.get_pretrained_cfg(arch).tag == tag
    if local_release(default_release()) is None:
        pytest.skip('the released weights are not in this checkout')
    model = torch.hub.load(str(REPO_ROOT), arch, source='local', pretrained=True)
    assert model.pretrained_cfg['tag'] == tag
