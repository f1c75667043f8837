"""The independent re-measure (tools/remeasure.py) of each released model on the shipped sample images: timm's own
loader, torchattack's PGD, compared image by image with the per-example results of its results.json."""
import json

import pytest
import timm
import torch

from fsr_hub.catalog import RELEASED, local_release
from fsr_hub.sample import read_sample

from release_builders import load_tool

tool = load_tool('remeasure')


@pytest.mark.slow  # each: torchattack's PGD-20 on 12 images through a released model, 10-30 s measured on 2 cores
@pytest.mark.parametrize('name', sorted(RELEASED))
def test_release_agrees_with_an_independent_remeasure(name):
    pytest.importorskip('torchattack', reason="the 'analysis' extra is not installed")
    folder = local_release(name)
    if folder is None:
        pytest.skip(f'the weights of {name} are not in this checkout')
    results = json.loads((folder / 'results.json').read_text())
    images, labels, meta = read_sample()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y, idx = torch.from_numpy(labels), meta['indices']  # sample images are test images 0..254
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    got = tool.remeasure(model, x[:40], y[:40], idx[:40], results, metrics=('clean',))
    got.update(tool.remeasure(model, x[:12], y[:12], idx[:12], results, metrics=('pgd20',)))
    # the same images, another implementation: the same verdict on (nearly) every image
    assert got['clean']['images_agreeing'] == 100.0, got
    assert got['pgd20']['images_agreeing'] >= 90.0, got


def test_remeasure_refuses_what_it_cannot_compare(tmp_path, capsys):
    assert tool.main([str(tmp_path), '--data', str(tmp_path)]) == 2
    assert capsys.readouterr().err == f'error: {tmp_path} is not a release folder: results.json is missing.\n'
    with pytest.raises(ValueError, match='no per-example pgd20'):
        tool.card_flags({'results': {}, 'per_example': {}}, 'pgd20')
