"""Pull: ``pretrained=True`` through timm / torch.hub and huggingface_hub's own download code, offline.

Two ways of serving a release folder to huggingface_hub, both without network:

* its offline cache layout (``models--<org>--<name>/{blobs,snapshots,refs}``) with ``HF_HUB_OFFLINE``;
* a loopback HTTP server (Python's standard ``http.server``, no extra dependency) speaking the hub's
  ``/<repo>/resolve/<revision>/<file>`` protocol, with huggingface_hub's endpoint pointed at it.

huggingface_hub 2.4.0 reads ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` into
``huggingface_hub.constants`` at import, and ``hf_hub_download`` looks those module attributes up at call time,
so the tests monkeypatch the constants (setting the environment too, for anything that reads it later).
The registry has no release (no tag) until one lands; ``pretrained_cfg_overlay=dict(hf_hub_id=..., sha256=...)`` on the
architecture stands in.
"""
import dataclasses
import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants

import fsr_hub
from fsr_hub.release import seed_hf_cache
from fsr_hub.weights import WeightsError, read_weights

from test_release import build_release

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = 'fsr_resnet18.at_cifar10'
ARCH = 'fsr_resnet18'
REPO_ID = f'{fsr_hub.DEFAULT_ORG}/{NAME}'


@pytest.fixture(scope='module')
def full_release(tmp_path_factory):
    """A full-size fsr_resnet18 release (random fp16 weights): the registry name builds default args."""
    return build_release(tmp_path_factory.mktemp('release'), model_args={}, seed=3)


def assert_byte_identical(model: torch.nn.Module, path: Path) -> None:
    file = read_weights(path)
    state = model.state_dict()
    assert state.keys() == file.keys()
    for k, v in file.items():
        assert state[k].to(v.dtype).numpy().tobytes() == v.numpy().tobytes(), k


def _hub_env(monkeypatch, tmp_path, offline: bool, endpoint: str = 'http://127.0.0.1:9') -> Path:
    cache = tmp_path / 'hf_cache'
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf_home'))
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1' if offline else '0')
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', offline)
    # an endpoint nothing listens on (offline) or the loopback server: the real hub is never contacted
    monkeypatch.setenv('HF_ENDPOINT', endpoint)
    monkeypatch.setattr(hf_constants, 'ENDPOINT', endpoint)
    template = endpoint + '/{repo_id}/resolve/{revision}/{filename}'
    monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE', template)
    return cache


@pytest.fixture
def offline_cache(monkeypatch, tmp_path, full_release):
    cache = _hub_env(monkeypatch, tmp_path, offline=True)
    seed_hf_cache(full_release.folder, REPO_ID, cache)
    return cache


def _pull_all_ways(sha: str):
    overlay = dict(hf_hub_id=REPO_ID, sha256=sha)
    yield 'registry', timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=overlay)
    yield 'hf-hub', timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    yield 'torch.hub', torch.hub.load(str(REPO_ROOT), 'fsr_resnet18', source='local', pretrained=True,
                                      pretrained_cfg_overlay=overlay)


def test_offline_cache_layout(offline_cache, full_release):
    root = offline_cache / f"models--{REPO_ID.replace('/', '--')}"
    commit = (root / 'refs' / 'main').read_text()
    assert re.fullmatch(r'[0-9a-f]{40}', commit)
    link = root / 'snapshots' / commit / 'model.safetensors'
    assert link.is_symlink() and link.resolve() == (root / 'blobs' / full_release.sha256).resolve()


def test_offline_pull_byte_identical(offline_cache, full_release):
    weights = full_release.folder / 'model.safetensors'
    for way, model in _pull_all_ways(full_release.sha256):
        assert_byte_identical(model, weights)
        assert model.pretrained_cfg['sha256'] == full_release.sha256, way
    # hf-hub: config.json's sha256 pin came along with the architecture
    model = timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    assert model.pretrained_cfg['hf_hub_id'] == REPO_ID and model.fsr_positions == ('layer4',)


def test_offline_tampered_blob_fails(offline_cache, full_release):
    blob = offline_cache / f"models--{REPO_ID.replace('/', '--')}" / 'blobs' / full_release.sha256
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last tensor element: still a readable safetensors file
    blob.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r'sha256 mismatch .*model\.safetensors: expected ' + full_release.sha256):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, sha256=full_release.sha256))
    with pytest.raises(WeightsError, match='sha256 mismatch'):  # the pin from config.json is checked too
        timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)


def test_offline_missing_file_fails(monkeypatch, tmp_path, full_release):
    cache = _hub_env(monkeypatch, tmp_path, offline=True)
    seed_hf_cache(full_release.folder, REPO_ID, cache, files=['config.json', 'README.md', 'results.json'])
    with pytest.raises(WeightsError, match=rf'Could not get model\.safetensors of {ARCH} from .* {REPO_ID}'):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, sha256=full_release.sha256))


def test_offline_pull_honours_cache_dir(monkeypatch, tmp_path, full_release):
    _hub_env(monkeypatch, tmp_path, offline=True)  # the default cache stays empty
    other = tmp_path / 'elsewhere'
    seed_hf_cache(full_release.folder, REPO_ID, other)
    model = timm.create_model(ARCH, pretrained=True, cache_dir=other,
                              pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, sha256=full_release.sha256))
    assert_byte_identical(model, full_release.folder / 'model.safetensors')
    with pytest.raises(WeightsError, match='Could not get model.safetensors'):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, sha256=full_release.sha256))


def test_unreleased_tag_says_so(offline_cache):
    with pytest.raises(WeightsError, match=f'No weights have been released for {re.escape(NAME)} yet'):
        timm.create_model(NAME, pretrained=True)


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """The two requests hf_hub_download makes: HEAD (metadata: commit, etag, size) then GET of the file."""
    folder: Path
    requests: list

    def log_message(self, *args) -> None:
        pass

    def _file(self):
        self.requests.append((self.command, self.path))
        m = re.fullmatch(r'/([^/]+/[^/]+)/resolve/([^/]+)/([^?]+)(\?.*)?', self.path)
        if not m or m.group(1) != REPO_ID or not (self.folder / m.group(3)).is_file():
            self.send_response(404)
            self.send_header('X-Error-Code', 'EntryNotFound' if m else 'RepoNotFound')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return None
        data = (self.folder / m.group(3)).read_bytes()
        self.send_response(200)
        self.send_header('X-Repo-Commit', hashlib.sha1(b'fsr-hub test').hexdigest())
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


@pytest.fixture
def loopback_hub(monkeypatch, tmp_path, full_release):
    """Serve a copy of the release folder over 127.0.0.1; yields (folder served, request log)."""
    import shutil

    served = tmp_path / 'served'
    shutil.copytree(full_release.folder, served)
    handler = type('Handler', (_HubHandler,), {'folder': served, 'requests': []})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _hub_env(monkeypatch, tmp_path, offline=False, endpoint=f'http://127.0.0.1:{server.server_address[1]}')
    try:
        yield served, handler.requests
    finally:
        server.shutdown()
        server.server_close()


def test_http_endpoint_pull_byte_identical(loopback_hub, full_release):
    served, requests = loopback_hub
    for way, model in _pull_all_ways(full_release.sha256):
        assert_byte_identical(model, full_release.folder / 'model.safetensors')
    gets = [p for c, p in requests if c == 'GET' and '/resolve/' in p]
    assert f'/{REPO_ID}/resolve/main/model.safetensors' in gets and f'/{REPO_ID}/resolve/main/config.json' in gets


def test_http_endpoint_tampered_and_missing(loopback_hub, full_release):
    served, _ = loopback_hub
    data = bytearray((served / 'model.safetensors').read_bytes())
    data[-1] ^= 0xFF
    (served / 'model.safetensors').write_bytes(bytes(data))
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    (served / 'model.safetensors').unlink()
    with pytest.raises(WeightsError, match=r'Could not get model\.safetensors .*EntryNotFoundError'):
        timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=REPO_ID, sha256=full_release.sha256),
                          cache_dir=None)


def test_registry_pin_beats_a_replaced_hub_repo(monkeypatch, tmp_path, full_release):
    """Someone replaces the hub repo consistently (other weights + a config.json pinning them): the registry's
    pin for our own repo still decides."""
    other = build_release(tmp_path / 'other', model_args={}, seed=11)
    assert other.sha256 != full_release.sha256
    cache = _hub_env(monkeypatch, tmp_path, offline=True)
    seed_hf_cache(other.folder, REPO_ID, cache)
    real = timm.models.get_pretrained_cfg

    def pinned(name, *a, **k):
        if name == NAME:  # as if released: the architecture's cfg plus the repo and the pin
            return dataclasses.replace(real(ARCH), tag='at_cifar10', hf_hub_id=REPO_ID, sha256=full_release.sha256)
        return real(name, *a, **k)
    monkeypatch.setattr(timm.models, 'get_pretrained_cfg', pinned)
    monkeypatch.setattr(timm.models._builder, 'get_pretrained_cfg', pinned, raising=False)  # create_model's lookup
    with pytest.raises(WeightsError, match=f"config.json pins sha256 {other.sha256} but fsr_hub's registry pins"):
        timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True)
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        timm.create_model(NAME, pretrained=True)
