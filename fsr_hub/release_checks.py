"""Checks of hub release folders (:mod:`fsr_hub.release`): :func:`validate_release` end to end, the checks of a
verify report that a release holds (:func:`check_results`), and the folder I/O and model building that building
and checking share. The card and the RobustBench record are functions of results.json and config.json, so
validation re-renders them and compares; the weights' sha256 must equal the verify report's ``model.sha256``.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import timm
import torch.nn as nn

from .autoattack import AA_KEYS, departures
from .card import CardError, render_card, robustbench_record
from .checkpoint import write_json
from .models import ALL_MODELS, create
from .catalog import RELEASED, release_name
from .schemas import VERIFY_SCHEMA
from .weights import WEIGHTS_NAME, WeightsError, load_weights, sha256_file

__all__ = [
    'PathLike', 'CONFIG_NAME', 'CARD_NAME', 'RESULTS_NAME', 'ROBUSTBENCH_NAME', 'REQUIRED_FILES', 'ReleaseError',
    'ReleaseInfo', 'read_json', 'write_atomic', 'render_release_card', 'check_architecture', 'create_args',
    'create_model', 'check_results', 'init_sha256', 'validate_release',
]

PathLike = Union[str, os.PathLike]
CONFIG_NAME, CARD_NAME, RESULTS_NAME, ROBUSTBENCH_NAME = 'config.json', 'README.md', 'results.json', 'robustbench.json'
REQUIRED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, RESULTS_NAME, ROBUSTBENCH_NAME)


class ReleaseError(RuntimeError):
    """A release folder is incomplete or inconsistent (one-line message naming the file)."""


@dataclass
class ReleaseInfo:
    """A validated release folder."""
    folder: Path
    name: str
    architecture: str
    tag: str
    sha256: str
    hub_id: str  # the hub repo the card was rendered for (config.json)
    config: Dict[str, Any]
    results: Dict[str, Any]
    model_args: Dict[str, Any] = field(default_factory=dict)
    model: Optional[nn.Module] = None


def read_json(path: Path) -> Dict[str, Any]:
    """The JSON object in ``path``; :class:`ReleaseError` when it is missing, not JSON or not an object."""
    if not path.is_file():
        raise ReleaseError(f'{path} is missing.')
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseError(f'{path} is not valid JSON ({e}).') from e
    if not isinstance(data, dict):
        raise ReleaseError(f'{path} must hold a JSON object, not {type(data).__name__}.')
    return data


def write_atomic(path: Path, data: Union[str, Mapping[str, Any]]) -> None:
    """Write text, or a JSON object, atomically (never a half-written file)."""
    if not isinstance(data, str):
        write_json(path, data)
        return
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(data)
    os.replace(tmp, path)


def render_release_card(results: Mapping[str, Any], config: Mapping[str, Any], folder: Path) -> str:
    """The model card of ``folder`` (:func:`fsr_hub.card.render_card`), its errors as :class:`ReleaseError`."""
    try:
        return render_card(results, config, folder)
    except CardError as e:
        raise ReleaseError(str(e)) from e


def check_architecture(architecture: Any, where: str) -> str:
    """An fsr_hub architecture, or any timm architecture (its model_args, e.g. FSR positions, must then build the
    released weights' model, which every caller checks by building it)."""
    if architecture not in ALL_MODELS and not (isinstance(architecture, str) and timm.models.is_model(architecture)):
        raise ReleaseError(f'{where}: architecture {architecture!r} is neither an fsr_hub model '
                           f'({", ".join(ALL_MODELS)}) nor a timm model.')
    return architecture


def create_args(config: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The ``create`` arguments config.json records: ``num_classes`` and ``model_args``."""
    model_args = config.get('model_args') or {}
    if not isinstance(model_args, dict):
        raise ReleaseError(f'{where}: model_args must be a JSON object.')
    return {**({'num_classes': config['num_classes']} if 'num_classes' in config else {}), **model_args}


def create_model(architecture: str, model_args: Mapping[str, Any], where: str, weights: Optional[Path] = None,
            sha256: Optional[str] = None) -> nn.Module:
    """Build ``architecture``; with ``weights``, load them strictly (checking ``sha256``) and set eval mode."""
    try:
        model = create(architecture, **model_args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ReleaseError(f'{where}: cannot build {architecture} with model_args {dict(model_args)} ({e}).') from e
    if weights is not None:
        try:
            load_weights(model, weights, sha256)
        except WeightsError as e:
            raise ReleaseError(str(e)) from e
        model.eval()
    return model


def check_results(results: Mapping[str, Any], where: str) -> None:
    """:class:`ReleaseError` unless ``results`` is a verify report a release can hold: its schema and sections,
    accuracies as percentages, AutoAttack in its original versions, analyses and ``per_class_before`` measured on
    the right weights."""
    if results.get('schema') != VERIFY_SCHEMA:
        raise ReleaseError(f'{where}: schema is {results.get("schema")!r}, expected {VERIFY_SCHEMA!r}.')
    for key in ('model', 'data', 'results'):
        if not isinstance(results.get(key), dict):
            raise ReleaseError(f'{where}: missing or malformed "{key}" section.')
    for key in ('architecture', 'sha256'):
        if not results['model'].get(key):
            raise ReleaseError(f'{where}: model.{key} is missing.')
    for metric, entry in results['results'].items():
        acc = entry.get('accuracy') if isinstance(entry, dict) else None
        if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not 0 <= acc <= 100:
            raise ReleaseError(f'{where}: results.{metric}.accuracy must be a percentage in [0, 100], got {acc!r}.')
    eps = results.get('eps')
    for metric, version in AA_KEYS.items():
        entry = results['results'].get(metric)
        off = departures(entry.get('params'), version, eps) if isinstance(entry, dict) else []
        if off:
            raise ReleaseError(f'{where}: results.{metric} is not the original AutoAttack {version} version '
                               f'({"; ".join(off)}): measure it again with tools/verify.py.')
    for key, entry in (results.get('analysis') or {}).items():
        sha = (entry.get('model') or {}).get('sha256') if isinstance(entry, dict) else None
        if sha not in (None, results['model']['sha256']):
            raise ReleaseError(f'{where}: analysis.{key} was measured on other weights (sha256 {sha}).')
    if 'per_class_before' in results:
        before = results['per_class_before']
        sha = (before.get('model') or {}).get('sha256') if isinstance(before, dict) else None
        if sha is None or sha != init_sha256(results):
            raise ReleaseError(f'{where}: per_class_before (sha256 {sha}) is not the report of the weights the '
                               f'training section says this model started from ({init_sha256(results)}).')


def init_sha256(results: Mapping[str, Any]) -> Optional[str]:
    """The sha256 of the weights a fine-tuned model started from (``training.init_from``), None if not recorded."""
    training = results.get('training') if isinstance(results.get('training'), dict) else {}
    init = training.get('init_from') if isinstance(training.get('init_from'), dict) else {}
    return init.get('sha256')


def validate_release(folder: PathLike, name: Optional[str] = None, pin: Optional[str] = None,
                     load_model: bool = True, check_card: bool = True) -> ReleaseInfo:
    """Check a release folder end to end, or raise :class:`ReleaseError` with a one-line message.

    Required files present; config.json names an fsr_hub (or any timm) architecture matching results.json and the
    release ``name`` (default: the folder's name); its ``hub_id`` is ``<org>/<name>``; the sha256 of the weights equals
    config.json's, results.json's and ``pin`` (default: :data:`fsr_hub.catalog.RELEASED`'s pin for the name,
    if any); the weights load strictly (a pruned release's recorded zeros are theirs); the card is byte for byte
    the one these files render to.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f'release folder not found: {folder}')
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ReleaseError(f'{folder}: missing {", ".join(missing)} (a release needs {", ".join(REQUIRED_FILES)}).')
    config_path, results_path, weights = folder / CONFIG_NAME, folder / RESULTS_NAME, folder / WEIGHTS_NAME
    config, results = read_json(config_path), read_json(results_path)
    arch = check_architecture(config.get('architecture'), str(config_path))
    pcfg = config.get('pretrained_cfg')
    if not isinstance(pcfg, dict) or not pcfg.get('tag') or not pcfg.get('sha256'):
        raise ReleaseError(f'{config_path}: pretrained_cfg must hold the release tag and sha256.')
    tag = pcfg['tag']
    own = release_name(arch, tag)
    if name is None and folder.name != own:
        raise ReleaseError(f'{folder}: folder name must be the release name {own} (it becomes the hub repo name).')
    if name is not None and name != own:
        raise ReleaseError(f'{config_path}: holds the release {own}, not {name}.')
    repo = config.get('hub_id')
    if not isinstance(repo, str) or repo.partition('/')[2] != own:
        raise ReleaseError(f'{config_path}: hub_id must be "<org>/{own}", got {repo!r}.')
    check_results(results, str(results_path))
    if results['model']['architecture'] != arch:
        raise ReleaseError(f'{results_path}: model.architecture {results["model"]["architecture"]!r} differs '
                           f'from config.json architecture {arch!r}.')
    if results['model'].get('tag') not in (None, tag):
        raise ReleaseError(f'{results_path}: model.tag {results["model"]["tag"]!r} differs from config.json tag '
                           f'{tag!r}.')
    sha = sha256_file(weights)
    pin = pin if pin is not None else RELEASED.get(own)
    for what, expected in (('config.json pretrained_cfg.sha256', pcfg['sha256']),
                           ('results.json model.sha256', results['model']['sha256']), ('the pin', pin)):
        if expected is not None and sha != expected:
            raise ReleaseError(f'{weights}: sha256 {sha} differs from {what} {expected} of {own}.')
    args = create_args(config, str(config_path))
    model_args = config.get('model_args') or {}
    model = create_model(arch, args, str(config_path), weights, sha) if load_model else None
    if model is not None and config.get('num_classes') != model.num_classes:
        raise ReleaseError(f'{config_path}: num_classes {config.get("num_classes")} but the model has '
                           f'{model.num_classes}.')
    if model is not None and isinstance(results.get('pruning'), dict):
        from .pruning.record import check_pruning  # a pruned release: its recorded zeros are those of the file

        try:
            check_pruning(results['pruning'], model, str(results_path))
        except ValueError as e:
            raise ReleaseError(str(e)) from None
    if check_card and (folder / CARD_NAME).read_text() != render_release_card(results, config, folder):
        raise ReleaseError(f'{folder / CARD_NAME} differs from the card rendered from results.json and config.json; '
                           f're-render it with: python tools/make_card.py --folder {folder}')
    if check_card and read_json(folder / ROBUSTBENCH_NAME) != robustbench_record(results, config):
        raise ReleaseError(f'{folder / ROBUSTBENCH_NAME} differs from the record results.json and config.json give; '
                           f're-render it with: python tools/make_card.py --folder {folder}')
    return ReleaseInfo(folder=folder, name=own, architecture=arch, tag=tag, sha256=sha, hub_id=repo, config=config,
                       results=results, model_args=dict(model_args), model=model)
