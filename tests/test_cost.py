"""Table 7 cost report: fvcore counts and the paper's 2x convention."""
import json

import pytest

from fsr_hub.cost import cost_table, format_markdown
from fsr_hub.paper import table7
from tools.cost_report import main as cost_main


@pytest.fixture(scope='module')
def rows():
    return cost_table(['fsr_resnet18', 'fsr_vgg16'], latency=True, batch_size=2, iters=1)


def test_counts_match_table7(rows):
    for r in rows:
        paper = table7(r['model'])
        # Table 7 rounds to 0.01 M (its VGG16 +FSR 16.52 M is 16,512,596 rounded up)
        assert r['params'] / 1e6 == pytest.approx(paper['vanilla']['params_m'], abs=0.01)
        assert r['params_fsr'] / 1e6 == pytest.approx(paper['fsr']['params_m'], abs=0.01)
        assert r['gflops_paper_convention'] == pytest.approx(2 * r['gflops_fvcore'])
        # the paper's FLOPs are 2x fvcore's (ResNet-18 to 1e-4 G; VGG16 is 0.0013-0.0014 G higher in the paper)
        assert r['gflops_paper_convention'] == pytest.approx(paper['vanilla']['gflops'], abs=2e-3)
        assert r['gflops_paper_convention_fsr'] == pytest.approx(paper['fsr']['gflops'], abs=2e-3)
    resnet = rows[0]
    assert resnet['gflops_paper_convention'] == pytest.approx(1.1133, abs=1e-4)
    assert resnet['gflops_fvcore'] == pytest.approx(0.5567, abs=1e-4)
    assert resnet['gflops_fvcore_fsr'] == pytest.approx(0.5767, abs=1e-4)
    assert 'aten::sigmoid' in resnet['uncounted_ops_fsr']


def test_markdown_and_latency(rows):
    text = format_markdown(rows)
    assert '| fsr_resnet18 | 11,173,962 | 12,432,980 |' in text
    assert 'paper convention' in text and 'aten::sigmoid' in text
    lat = rows[0]['latency']
    assert lat['ms_vanilla'] > 0 and lat['ms_fsr'] > 0
    assert lat['ratio'] == pytest.approx(lat['ms_fsr'] / lat['ms_vanilla'])


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / 'cost.json'
    assert cost_main(['--models', 'fsr_resnet18', '--no-latency', '--json', str(out)]) == 0
    assert json.loads(out.read_text())[0]['params_fsr'] == 12_432_980
    assert '| fsr_resnet18 |' in capsys.readouterr().out
    with pytest.raises(ValueError, match='Unknown FSR model'):
        cost_table(['resnet50'])
