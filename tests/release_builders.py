"""Builders shared by the release, hub-pull and main-job tests (a helper module, not a test module).

* :func:`make_results` / :func:`build_release`: verify reports and random-weight release folders (the ``rel``
  fixture of conftest.py is a copy of one); :func:`card_body`: a folder's card text;
* :func:`serve_folders`: a loopback HTTP server (Python's ``http.server``) speaking the two requests of the hub's
  ``/<repo>/resolve/<revision>/<file>`` protocol that ``hf_hub_download`` makes;
* :func:`fill_hf_cache`: fills a huggingface_hub cache through ``hf_hub_download`` itself (public ``cache_dir``
  and ``endpoint`` arguments) from such a server;
* :func:`start_python`: a fresh interpreter with huggingface_hub's documented environment variables, which it
  reads once at import (so offline mode and the endpoint are set before the process starts, never patched).
"""
import contextlib
import hashlib
import http.server
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from huggingface_hub import ModelCard

from fsr_hub.autoattack import AA_KEYS, ORIGINAL
from fsr_hub.models import create
from fsr_hub.release import REQUIRED_FILES, assemble_release
from fsr_hub.catalog import hub_id
from fsr_hub.schemas import VERIFY_SCHEMA
from fsr_hub.weights import save_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = 'fsr_resnet18.at_cifar10'
REPO_ID = hub_id(NAME)
SMALL_ARGS = {'layers': [1, 1, 1, 1]}  # a 4-block ResNet: same code paths, half the cost
DEAD_ENDPOINT = 'http://127.0.0.1:9'  # nothing listens there: the real hub is never contacted


def make_results(sha256: str, weights: str, architecture: str = 'fsr_resnet18', tag: Optional[str] = 'at_cifar10',
                 attacks: Sequence[str] = ('clean', 'fgsm', 'pgd20'), seed: int = 0) -> Dict[str, Any]:
    """A verify report with random accuracies for ``attacks``."""
    rng = random.Random(seed)
    acc = lambda: round(rng.uniform(1, 99), 2)  # noqa: E731
    eps = 8 / 255
    params = {'fgsm': {'eps': eps, 'steps': 1},
              'pgd20': {'eps': eps, 'alpha': eps / 10, 'steps': 20, 'random_start': False},
              'pgd100': {'eps': eps, 'alpha': eps / 10, 'steps': 100, 'random_start': False},
              'cw': {'eps': eps, 'alpha': eps / 10, 'steps': 30, 'kappa': 50}}
    results = {}
    for a in attacks:
        entry = {'accuracy': acc(), 'per_class': [acc() for _ in range(10)], 'seconds': round(rng.uniform(1, 9), 1)}
        if a in params:
            entry['params'] = params[a]
        if a == 'ensemble':
            entry['attacks'] = [x for x in ('clean', 'fgsm', 'pgd20', 'pgd100', 'cw') if x in attacks]
        if a in AA_KEYS:
            version = AA_KEYS[a]
            entry['implementation'] = 'pyautoattack 0.2.0 (original fra31/auto-attack code)'
            entry['params'] = {'implementation': entry['implementation'], 'version': version, 'norm': 'Linf',
                               'eps': eps, 'seed': 0, **ORIGINAL[version]}
        results[a] = entry
    return {
        'schema': VERIFY_SCHEMA,
        'model': {'architecture': architecture, 'tag': tag, 'weights': weights, 'sha256': sha256, 'num_params': 1},
        'data': {'dataset': 'cifar10', 'split': 'test', 'n': 200, 'subset': 'first n', 'seed': 0},
        'eps': eps, 'batch_size': 100,
        'hardware': {'device': 'cpu', 'torch': torch.__version__, 'dtype': 'float32'},
        'results': results,
        'masking_checks': {
            'n': 100,
            'eps_sweep': {'eps_255': [8, 16, 32, 64], 'accuracy': [acc(), acc(), acc(), 0.0]},
            'unbounded_accuracy': 0.0,
            'unbounded_attack': {'eps': 1.0, 'alpha': 0.01, 'steps': 100, 'random_start': False},
            'steps_sweep': {'steps': [10, 20, 50], 'accuracy': [acc(), acc(), acc()], 'n': 200},
            'checks': {'falls_to_zero_at_64': True, 'unbounded_zero': True, 'more_steps_never_raise': True,
                       'transfer_ge_whitebox': None, 'rand_within_1pt': None},
            'passed': True,
        },
        'timing': {'total_seconds': round(rng.uniform(10, 99), 1)},
        'command': f'python tools/verify.py {weights} --n 200 --attacks {" ".join(attacks)}',
        'training': {'config': {'objective': 'at', 'fsr_loss': True, 'lambda_sep': 1.0, 'lambda_rec': 1.0,
                                'eps': eps, 'alpha': eps / 4, 'steps': 10, 'random_start': True, 'epochs': 100,
                                'batch_size': 128, 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4,
                                'milestones': [75, 90], 'lr_gamma': 0.1, 'amp': False},
                     'command': 'python tools/train.py --method at --epochs 100', 'epochs': 100,
                     'wall_clock_seconds': round(rng.uniform(1000, 9999), 1), 'hardware': {'device': 'NVIDIA H100'}},
    }


def build_release(root: Path, architecture: str = 'fsr_resnet18', model_args: Optional[dict] = None,
                  attacks: Sequence[str] = ('clean', 'fgsm', 'pgd20'), seed: int = 0, org: Optional[str] = None):
    """A random-weight fp16 release folder under ``root / 'model_cards'``; returns its ReleaseInfo."""
    model_args = SMALL_ARGS if model_args is None else model_args
    torch.manual_seed(seed)
    model = create(architecture, **model_args)
    weights = Path(root) / 'ckpt' / 'model_fp16.safetensors'
    sha = save_weights(model, weights, dtype=torch.float16)
    results = make_results(sha, str(weights), architecture, attacks=attacks, seed=seed)
    return assemble_release(Path(root) / 'model_cards', weights, results, model_args=model_args, org=org)


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (the tools are thin command lines over fsr_hub)."""
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data, indent=2))


def card_body(folder: Path) -> str:
    """The text of a release folder's card (README.md) without its YAML metadata."""
    return ModelCard.load(folder / 'README.md').text


def tiny_png(path: Path, rgb=(200, 30, 30)) -> Path:
    """A valid 8x8 PNG (PIL), standing in for a plot."""
    from PIL import Image

    Image.new('RGB', (8, 8), rgb).save(path, format='PNG')
    return path


# ---------------------------------------------------------------------------------------------------------------
# A loopback hub and huggingface_hub's own cache


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """HEAD (metadata: commit, etag, size) then GET of ``/<repo>/resolve/<revision>/<file>``."""
    repos: Mapping[str, Path]
    requests: List[tuple]

    def log_message(self, *args) -> None:
        pass

    def _file(self) -> Optional[bytes]:
        self.requests.append((self.command, self.path))
        m = re.fullmatch(r'/([^/]+/[^/]+)/resolve/([^/]+)/([^?]+)(\?.*)?', self.path)
        folder = self.repos.get(m.group(1)) if m else None
        if folder is None or not (folder / m.group(3)).is_file():
            self.send_response(404)
            self.send_header('X-Error-Code', 'EntryNotFound' if folder is not None else 'RepoNotFound')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return None
        data = (folder / m.group(3)).read_bytes()
        self.send_response(200)
        self.send_header('X-Repo-Commit', hashlib.sha1(m.group(1).encode()).hexdigest())
        self.send_header('ETag', f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._file()

    def do_GET(self) -> None:
        data = self._file()
        if data is not None:
            self.wfile.write(data)


@contextlib.contextmanager
def serve_folders(repos: Mapping[str, Path]) -> Iterator[tuple]:
    """Serve ``{repo_id: folder}`` on 127.0.0.1; yields (endpoint URL, request log)."""
    handler = type('Handler', (_HubHandler,), {'repos': dict(repos), 'requests': []})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', handler.requests
    finally:
        server.shutdown()
        server.server_close()


def fill_hf_cache(cache: Path, repo_id: str, folder: Path, files: Sequence[str] = REQUIRED_FILES,
                  log: Optional[list] = None) -> Dict[str, Path]:
    """Download ``files`` of ``folder`` (served as ``repo_id``) into the huggingface_hub cache ``cache`` with
    ``hf_hub_download`` itself; returns the cached path of each file (``log`` collects the HTTP requests)."""
    from huggingface_hub import hf_hub_download

    with serve_folders({repo_id: folder}) as (endpoint, requests):
        paths = {f: Path(hf_hub_download(repo_id, f, cache_dir=cache, endpoint=endpoint)) for f in files}
    if log is not None:
        log.extend(requests)
    return paths


def start_python(argv: Sequence[str], tmp: Path, env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    """Start ``python *argv`` (e.g. ``['-c', code, ...]`` or ``['-m', 'fsr_hub']``) in a fresh interpreter in
    ``tmp``, this checkout's fsr_hub first on the path, with huggingface_hub's environment variables ``env`` over
    the defaults: offline, an unreachable endpoint, an HF_HOME inside ``tmp``."""
    path = os.pathsep.join([str(REPO_ROOT)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else []))
    full = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_ENDPOINT': DEAD_ENDPOINT, 'HF_HOME': str(Path(tmp) / 'hf_home'),
            'PYTHONPATH': path, **(env or {})}
    return subprocess.Popen([sys.executable, *argv], cwd=tmp, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def json_result(proc: subprocess.Popen, timeout: int = 300) -> Any:
    """Wait for a process started by :func:`start_python`; the last line it printed, parsed as JSON."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])
