"""Every bad input tried on a model and on the evaluation entry point, and what it gets: the README's table is
rendered from CASES below, and each row is checked against what the code does."""
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple, Tuple

import pytest
import timm
import torch

import fsr_hub  # noqa: F401
from fsr_hub.evaluate import evaluate

README = Path(__file__).resolve().parents[1] / 'README.md'
Y = torch.tensor([1, 2])


def _x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _with(value: float) -> torch.Tensor:
    x = _x(2, 3, 32, 32)
    x[0, 0, 0, 0] = value
    return x


class Case(NamedTuple):
    what: str
    make: Callable[[], Any]
    forward: Tuple[str, str]   # (exception class, message fragment) or ('ok', outcome in words)
    evaluate: Tuple[str, str]


NOT_NCHW = ('ValueError', 'evaluate needs a non-empty NCHW batch and as many labels')
CASES = [
    Case('float32 (2, 3, 32, 32), values in [0, 1] (the valid input)', lambda: _x(2, 3, 32, 32),
         ('ok', 'logits (2, 10)'), ('ok', 'report')),
    Case('uint8 images, values 0-255', lambda: (_x(2, 3, 32, 32) * 255).to(torch.uint8),
         ('ValueError', 'integer images: convert with x.float() / 255'),
         ('ValueError', 'expected float pixels in [0, 1], got dtype torch.uint8')),
    Case('float32, values 0-255', lambda: _x(2, 3, 32, 32) * 255,
         ('ok', 'logits (2, 10), no error (forward reads no values)'), ('ValueError', '(0-255 images? divide by 255)')),
    Case('float32 normalised with ImageNet mean/std',
         lambda: (_x(2, 3, 32, 32) - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / 0.226,
         ('ok', 'logits (2, 10), no error (forward reads no values)'),
         ('ValueError', 'values must lie in [0, 1] (raw RGB pixels, no normalisation)')),
    Case('one NaN pixel in image 0', lambda: _with(float('nan')),
         ('ok', 'NaN logits for image 0, no error'), ('ValueError', 'contains NaN or infinite values')),
    Case('one inf pixel in image 0', lambda: _with(float('inf')),
         ('ok', 'NaN logits for image 0, no error'), ('ValueError', 'contains NaN or infinite values')),
    Case('float64', lambda: _x(2, 3, 32, 32, dtype=torch.float64),
         ('ValueError', 'got float64 (2, 3, 32, 32) (convert with x.to(torch.float32))'),
         ('ValueError', 'got float64 (2, 3, 32, 32) (convert with x.to(torch.float32))')),
    Case('float16, no autocast', lambda: _x(2, 3, 32, 32, dtype=torch.float16),
         ('ValueError', 'got float16 (2, 3, 32, 32) (convert with x.to(torch.float32))'),
         ('ValueError', 'got float16 (2, 3, 32, 32) (convert with x.to(torch.float32))')),
    Case('bfloat16, no autocast', lambda: _x(2, 3, 32, 32, dtype=torch.bfloat16),
         ('ValueError', 'got bfloat16 (2, 3, 32, 32) (convert with x.to(torch.float32))'),
         ('ValueError', 'got bfloat16 (2, 3, 32, 32) (convert with x.to(torch.float32))')),
    Case('channels last, (2, 32, 32, 3)', lambda: _x(2, 32, 32, 3),
         ('ValueError', 'channels last: use x.permute(0, 3, 1, 2)'),
         ('ValueError', 'channels last: use x.permute(0, 3, 1, 2)')),
    Case('one image, (3, 32, 32)', lambda: _x(3, 32, 32),
         ('ValueError', 'a single image: add the batch dimension with x.unsqueeze(0)'), NOT_NCHW),
    Case('grayscale, (2, 1, 32, 32)', lambda: _x(2, 1, 32, 32),
         ('ValueError', 'got float32 (2, 1, 32, 32).'), ('ValueError', 'got float32 (2, 1, 32, 32).')),
    Case('RGBA, (2, 4, 32, 32)', lambda: _x(2, 4, 32, 32),
         ('ValueError', 'got float32 (2, 4, 32, 32).'), ('ValueError', 'got float32 (2, 4, 32, 32).')),
    Case('64x64 images', lambda: _x(2, 3, 64, 64),
         ('ValueError', 'got float32 (2, 3, 64, 64) (resize the images, or build the model with img_size=...)'),
         ('ValueError', 'got float32 (2, 3, 64, 64) (resize the images, or build the model with img_size=...)')),
    Case('16x16 images', lambda: _x(2, 3, 16, 16),
         ('ValueError', 'got float32 (2, 3, 16, 16) (resize the images, or build the model with img_size=...)'),
         ('ValueError', 'got float32 (2, 3, 16, 16) (resize the images, or build the model with img_size=...)')),
    Case('an extra dimension, (2, 1, 3, 32, 32)', lambda: _x(2, 1, 3, 32, 32),
         ('ValueError', 'got float32 (2, 1, 3, 32, 32).'), NOT_NCHW),
    Case('an empty batch, (0, 3, 32, 32)', lambda: _x(0, 3, 32, 32), ('ok', 'logits (0, 10)'), NOT_NCHW),
    Case('a numpy array', lambda: _x(2, 3, 32, 32).numpy(),
         ('ValueError', 'CifarResNet expects a torch.Tensor'),
         ('ValueError', 'expected a torch.Tensor of float pixels in [0, 1], got ndarray')),
]
FULL_MESSAGE = ('CifarResNet expects float32 (or float16/bfloat16 under autocast), shape (B, 3, 32, 32), raw RGB '
                'values in [0, 1]; got uint8 (2, 3, 32, 32) (integer images: convert with x.float() / 255).')


def _cell(outcome: Tuple[str, str]) -> str:
    kind, text = outcome
    return text if kind == 'ok' else f'{kind} `{text}`'


def _row(case: Case) -> str:
    return f'| {case.what} | {_cell(case.forward)} | {_cell(case.evaluate)} |'


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('fsr_resnet18').eval()


def _check(call: Callable[[], Any], outcome: Tuple[str, str]) -> None:
    kind, text = outcome
    if kind != 'ok':
        with pytest.raises(Exception) as e:
            call()
        assert type(e.value).__name__ == kind and text in str(e.value) and '\n' not in str(e.value), str(e.value)
        return
    out = call()
    if text == 'report':
        assert out['results']['clean']['accuracy'] in (0.0, 50.0, 100.0)
        return
    if text.startswith('NaN logits for image 0'):
        assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
        return
    shape = tuple(int(n) for n in re.search(r'logits \((\d+), (\d+)\)', text).groups())
    assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize('case', CASES, ids=[c.what for c in CASES])
def test_bad_input(model, case):
    x = case.make()
    with torch.no_grad():
        _check(lambda: model(x), case.forward)
    y = Y[:len(x)] if isinstance(x, torch.Tensor) and x.ndim == 4 else Y
    _check(lambda: evaluate(model, x, y, attacks=('clean',), batch_size=2, masking_checks=False, progress=False),
           case.evaluate)


def test_the_readme_table_is_this_list():
    text = README.read_text()
    table = text[text.index('<!-- bad-inputs:begin -->'):text.index('<!-- bad-inputs:end -->')]
    rows = [line for line in table.splitlines() if line.startswith('| ') and not line.startswith(('| input ', '| ---'))]
    assert rows == [_row(c) for c in CASES]
    assert FULL_MESSAGE in text


def test_full_message_and_autocast(model):
    with pytest.raises(ValueError) as e:
        model((_x(2, 3, 32, 32) * 255).to(torch.uint8))
    assert str(e.value) == FULL_MESSAGE
    small = timm.create_model('fsr_resnet18', layers=(1, 1, 1, 1)).eval()  # CPU bf16 convolutions are slow
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):  # low-precision input under autocast: fine
        assert small(_x(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 10)
        assert small(_x(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match='got float64'), torch.autocast('cpu', dtype=torch.bfloat16):
        small(_x(2, 3, 32, 32, dtype=torch.float64))


def test_input_checks_compile_without_graph_breaks(model):
    """The checks read only metadata: torch.compile traces them in one graph (no .item(), no data-dependent branch)."""
    def check(x):
        model._check_input(x)
        return x * 2

    x = _x(2, 3, 32, 32)
    assert torch.equal(torch.compile(check, fullgraph=True, backend='eager')(x), x * 2)


@pytest.mark.cuda
@pytest.mark.slow  # inductor compilation on the GPU: left out of the device job's quick `-m 'cuda and not slow'`
def test_cuda_autocast_and_compile_take_the_same_checks():
    m = timm.create_model('fsr_resnet18').cuda().eval()
    x = _x(2, 3, 32, 32).cuda()
    with torch.no_grad():
        with torch.autocast('cuda', dtype=torch.float16):
            assert m(x.half()).shape == (2, 10) and m(x).shape == (2, 10)
        with pytest.raises(ValueError, match='got float16'):
            m(x.half())
        compiled = torch.compile(m, fullgraph=True)
        torch.testing.assert_close(compiled(x), m(x), atol=1e-3, rtol=1e-3)
