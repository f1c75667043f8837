"""torch.hub entry points from a local checkout."""
from pathlib import Path

import pytest
import torch

import hubconf

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('entry', ['fsr_resnet18', 'cifar_resnet18'])
def test_torch_hub_local_load(entry):
    m = torch.hub.load(str(ROOT), entry, source='local', pretrained=False)
    assert m.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert m.pretrained_cfg['architecture'] == entry


def test_hubconf_is_thin():
    public = sorted(n for n in vars(hubconf) if not n.startswith('_'))
    assert public == sorted(['dependencies', 'fsr_resnet18', 'fsr_vgg16', 'fsr_wrn34_10',
                             'cifar_resnet18', 'cifar_vgg16', 'cifar_wrn34_10'])
    assert set(hubconf.dependencies) >= {'torch', 'timm', 'safetensors', 'huggingface_hub'}


def test_torch_hub_unknown_entry_is_clear():
    with pytest.raises(RuntimeError, match='Cannot find callable fsr_resnet50'):
        torch.hub.load(str(ROOT), 'fsr_resnet50', source='local')
