"""The package's shape: no module over 450 lines, no function over 80, short module docstrings, and the
GPU-run plumbing outside the installed package."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'fsr_hub'
MODULES = sorted(PACKAGE.rglob('*.py'))
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_DOC_LINES = 450, 80, 16


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: Path):
    source = path.read_text()
    assert source.count('\n') <= MAX_MODULE_LINES, f'{path.name}: {source.count(chr(10))} lines'
    tree = ast.parse(source)
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f'{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}'
    doc = ast.get_docstring(tree) or ''
    assert len(doc.splitlines()) <= MAX_DOC_LINES, f'{path.name}: module docstring of {len(doc.splitlines())} lines'


def test_no_device_job_in_the_package():
    assert not [p.name for p in MODULES if 'device' in p.stem]
    assert not [p.name for p in MODULES if '$OUT' in p.read_text()], 'device-call plumbing belongs in jobs/device/'
