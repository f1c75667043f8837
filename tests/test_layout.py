"""The package's shape: no module over 450 lines, no function over 80, short module docstrings, no source line
over 120 characters, and the GPU-run plumbing outside the installed package."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'fsr_hub'
MODULES = sorted(PACKAGE.rglob('*.py'))
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_DOC_LINES, MAX_LINE_CHARS = 450, 80, 16, 120
SOURCES = sorted(p for folder in ('fsr_hub', 'tools', 'tests', 'jobs')
                 for p in PACKAGE.parent.joinpath(folder).rglob('*.py'))


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path: Path):
    source = path.read_text()
    assert source.count('\n') <= MAX_MODULE_LINES, f'{path.name}: {source.count(chr(10))} lines'
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    sizes = [(n.name, n.end_lineno - n.lineno + 1) for n in functions]
    long = [(name, size) for name, size in sizes if size > MAX_FUNCTION_LINES]
    assert not long, f'{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}'
    doc = ast.get_docstring(tree) or ''
    assert len(doc.splitlines()) <= MAX_DOC_LINES, f'{path.name}: module docstring of {len(doc.splitlines())} lines'


def test_source_lines_fit_120_characters():
    root = PACKAGE.parent
    long = [f'{p.relative_to(root)}:{i}' for p in SOURCES + [root / 'hubconf.py']
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > MAX_LINE_CHARS]
    assert len(SOURCES) > 50 and not long, f'lines over {MAX_LINE_CHARS} characters: {long}'


def test_no_device_job_in_the_package():
    assert not [p.name for p in MODULES if 'device' in p.stem]
    assert not [p.name for p in MODULES if '$OUT' in p.read_text()], 'device-call plumbing belongs in jobs/device/'


def test_ci_runs_the_readmes_two_set_up_commands():
    """The README's set-up is two commands (install + main job; tests), CI runs the same install and test command
    (then the slow tests), and the constraints file pins the torch and torchvision that lie on this machine's disk."""
    root = PACKAGE.parent
    block = root.joinpath('README.md').read_text().split('## Set-up (two commands)', 1)[1].split('```bash\n', 1)[1]
    commands = [line.split('#', 1)[0].strip() for line in block.split('```', 1)[0].splitlines()]
    install, tests = commands
    ci = root.joinpath('.ci', 'run').read_text().replace('python3 ', 'python ').splitlines()
    assert install == "pip install -c constraints/ci.txt -e '.[test]' && python -m fsr_hub"
    assert "python -m pip install -q -c constraints/ci.txt -e '.[test]'" in ci
    assert tests == 'python -m pytest -q' and ci[-2:] == [tests, f'{tests} -m slow']
    pins = root.joinpath('constraints', 'ci.txt').read_text().splitlines()
    assert {'torch==2.14.1', 'torchvision==0.29.1'} <= set(pins)
