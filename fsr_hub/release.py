"""Hub release folders: timm-format config.json, the model card, validation and upload.

A release folder ``model_cards/<arch>.<tag>/`` is exactly what is uploaded to the hub repo its config.json names:

* ``model.safetensors``: the weights that were verified (fp16 is fine; the card states the stored dtype),
* ``config.json``: timm's hub format (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``model_args``, ``pretrained_cfg`` with ``tag`` and ``sha256``) plus ``hub_id``
  (``<org>/<arch>.<tag>``, the repo the card is written for); ``timm.create_model('hf-hub:<hub_id>')`` reads it
  (``fsr_hub.models.create('hf-hub:<hub_id>')`` for a timm architecture with FSR added, which timm cannot build);
  ``fsr_hub.models.create(architecture, **model_args)`` rebuilds the model,
* ``results.json``: the verify report (:data:`fsr_hub.schemas.VERIFY_SCHEMA`) plus ``cost`` and
  ``paper_reference`` (added at card time), optionally the ``analysis`` of ``tools/analyze.py``, the ``twin``
  comparison with its vanilla (or FSR) twin release (:func:`attach_twin`) and, for a fine-tuned model,
  ``per_class_before``: the per-class numbers of the weights it started from (:func:`attach_before`),
* ``per_class.png``: the per-class accuracy the card tabulates (:func:`fsr_hub.card.write_per_class_plot`), written
  with the card when matplotlib is installed,
* ``README.md``: the model card, rendered from results.json, config.json and the plots present by
  :mod:`fsr_hub.card` (huggingface_hub's ModelCard and a Jinja template),
* ``robustbench.json``: RobustBench's ``model_info`` record of the release, rendered from the same files.

The card and the record are functions of these files; validation re-renders them and compares, so every number
they show comes from results.json. The verify report must describe the released file itself: its ``model.sha256``
must equal the sha256 of ``model.safetensors`` (cast to fp16 *before* verifying if you release fp16 weights).
"""
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import timm
import torch.nn as nn

from . import paper
from .autoattack import AA_KEYS, departures
from .card import PER_CLASS_METRICS, CardError, released_table, render_card, robustbench_record, write_per_class_plot
from .checkpoint import write_json
from .data import DATASETS, INPUT_SIZE
from .models import ALL_MODELS, FSRWrapper, create
from .models.registry import without_weights
from .releases import CHECKOUT_CARDS, RELEASED, hub_id as make_hub_id, local_release, release_name
from .schemas import VERIFY_SCHEMA
from .twins import twin_section
from .weights import WEIGHTS_NAME, WeightsError, load_weights, sha256_file

__all__ = [
    'ReleaseError', 'ReleaseInfo', 'REQUIRED_FILES', 'build_config', 'prepare_results', 'attach_before',
    'init_report', 'assemble_release', 'write_card', 'attach_twin', 'write_robustbench', 'validate_release', 'upload_plan',
    'push_release', 'README_MARKERS', 'readme_table', 'write_readme_table',
]

PathLike = Union[str, os.PathLike]
CONFIG_NAME, CARD_NAME, RESULTS_NAME, ROBUSTBENCH_NAME = 'config.json', 'README.md', 'results.json', 'robustbench.json'
REQUIRED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, RESULTS_NAME, ROBUSTBENCH_NAME)
# pretrained_cfg keys about other input sizes than the one verified (a timm backbone's ImageNet settings); pool_size
# stays when the verified size is the cfg's own
_OTHER_SIZE_KEYS = ('test_input_size', 'test_crop_pct', 'min_input_size', 'pool_size')


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


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ReleaseError(f'{path} is missing.')
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReleaseError(f'{path} is not valid JSON ({e}).') from e
    if not isinstance(data, dict):
        raise ReleaseError(f'{path} must hold a JSON object, not {type(data).__name__}.')
    return data


def _write(path: Path, data: Union[str, Mapping[str, Any]]) -> None:
    """Write text, or a JSON object, atomically (never a half-written file)."""
    if not isinstance(data, str):
        write_json(path, data)
        return
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(data)
    os.replace(tmp, path)


def _render(results: Mapping[str, Any], config: Mapping[str, Any], folder: Path) -> str:
    try:
        return render_card(results, config, folder)
    except CardError as e:
        raise ReleaseError(str(e)) from e


def _check_arch(architecture: Any, where: str) -> str:
    """An fsr_hub architecture, or any timm architecture (its model_args, e.g. FSR positions, must then build the
    released weights' model, which every caller checks by building it)."""
    if architecture not in ALL_MODELS and not (isinstance(architecture, str) and timm.models.is_model(architecture)):
        raise ReleaseError(f'{where}: architecture {architecture!r} is neither an fsr_hub model '
                           f'({", ".join(ALL_MODELS)}) nor a timm model.')
    return architecture


def _build_args(config: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The ``create`` arguments config.json records: ``num_classes`` and ``model_args``."""
    model_args = config.get('model_args') or {}
    if not isinstance(model_args, dict):
        raise ReleaseError(f'{where}: model_args must be a JSON object.')
    return {**({'num_classes': config['num_classes']} if 'num_classes' in config else {}), **model_args}


def _create(architecture: str, model_args: Mapping[str, Any], where: str, weights: Optional[Path] = None,
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


def build_config(model: nn.Module, architecture: str, tag: str, sha256: str,
                 model_args: Optional[Mapping[str, Any]] = None, org: Optional[str] = None,
                 input_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """timm hub config.json for ``model`` (an ``architecture`` built with ``model_args``) released as ``tag``
    to the hub organisation ``org`` (default :data:`fsr_hub.releases.DEFAULT_ORG`).

    ``model_args`` get the FSR arguments the model was built with (a timm architecture's also ``num_classes``,
    whose timm default is not this model's), so ``create(architecture, **model_args)`` rebuilds it.
    ``input_size`` (C, H, W), the images it was verified on, makes the data config raw [0, 1] pixels of that
    size (no normalisation, no crop), as the trainer and verify feed them.

    Not timm's ``save_config_for_hf``: it writes the file itself, records the factory's arguments (``in_chans``,
    ``img_size``, ``global_pool``, ...) as ``model_args`` where a release records the FSR arguments that
    ``create`` needs, and resolves a data config from the model where a release states the pixels it was verified
    on. The pretrained cfg is filtered with timm's ``filter_pretrained_cfg`` (:func:`without_weights`).
    """
    cfg = without_weights(model.pretrained_cfg)
    cfg.pop('architecture', None)
    cfg.update(tag=tag, sha256=sha256, num_classes=model.num_classes, custom_load=False)
    if input_size is not None:
        same_size = tuple(input_size) == tuple(cfg.get('input_size') or ())
        for k in _OTHER_SIZE_KEYS:
            if not (k == 'pool_size' and same_size):
                cfg.pop(k, None)
        cfg.update(input_size=tuple(input_size), crop_pct=1.0, mean=(0.0,) * input_size[0], std=(1.0,) * input_size[0])
    if cfg.get('label_names') is not None and len(cfg['label_names']) != model.num_classes:
        cfg.pop('label_names')
    args = {k: v for k, v in (model_args or {}).items() if k not in ('pretrained', 'num_classes')}
    if isinstance(model, FSRWrapper):
        args.update(model.fsr_args)
    if architecture in ALL_MODELS:
        args['fsr_positions'] = list(getattr(model, 'fsr_positions', ()))
    else:
        args = {'num_classes': model.num_classes, **args}
    config: Dict[str, Any] = dict(
        architecture=architecture, num_classes=model.num_classes, num_features=model.num_features,
        global_pool=getattr(getattr(model, 'global_pool', None), 'pool_type', 'avg') or 'avg')
    if cfg.get('label_names') is not None:
        config['label_names'] = list(cfg['label_names'])
    config['model_args'] = args
    config['pretrained_cfg'] = cfg
    config['hub_id'] = make_hub_id(release_name(architecture, tag), org)
    return json.loads(json.dumps(config))  # tuples -> lists, as read back


def _check_results(results: Mapping[str, Any], where: str) -> None:
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
        if sha is None or sha != _init_sha256(results):
            raise ReleaseError(f'{where}: per_class_before (sha256 {sha}) is not the report of the weights the '
                               f'training section says this model started from ({_init_sha256(results)}).')


def _init_sha256(results: Mapping[str, Any]) -> Optional[str]:
    """The sha256 of the weights a fine-tuned model started from (``training.init_from``), None if not recorded."""
    training = results.get('training') if isinstance(results.get('training'), dict) else {}
    init = training.get('init_from') if isinstance(training.get('init_from'), dict) else {}
    return init.get('sha256')


def attach_before(results: Mapping[str, Any], before: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Copy of ``results`` with ``per_class_before``: the per-class numbers (:data:`fsr_hub.card.PER_CLASS_METRICS`)
    of ``before``, the verify report of the weights this fine-tuned model started from (``where`` names it in
    errors). ``before`` must be a verify report of exactly those weights (``training.init_from.sha256``), on the
    same dataset and split."""
    _check_results(before, where)
    init = _init_sha256(results)
    if init is None:
        raise ReleaseError(f'{where}: a start model\'s report is for a fine-tuned model, and results.json records '
                           f'no training.init_from (verify it with --train-summary of the fine-tuning run).')
    if before['model']['sha256'] != init:
        raise ReleaseError(f"{where}: describes weights with sha256 {before['model']['sha256']}, but this model "
                           f"was fine-tuned from {init}.")
    for key in ('dataset', 'split'):
        if before['data'].get(key) != results['data'].get(key):
            raise ReleaseError(f"{where}: measured on {key} {before['data'].get(key)!r}, this model on "
                               f"{results['data'].get(key)!r}.")
    kept = ('accuracy', 'per_class', 'n', 'subset')
    metrics = {m: {k: e[k] for k in kept if k in e} for m, e in before['results'].items()
               if m in PER_CLASS_METRICS and isinstance(e, dict) and isinstance(e.get('per_class'), list)}
    if not metrics:
        raise ReleaseError(f'{where}: has no per-class numbers for {", ".join(PER_CLASS_METRICS)}.')
    model = {k: before['model'].get(k) for k in ('architecture', 'tag', 'sha256')}
    return {**results, 'per_class_before': {'model': model, 'data': dict(before['data']), 'results': metrics}}


def init_report(results: Mapping[str, Any]) -> Optional[Path]:
    """The results.json of the release a fine-tuned model started from, when its folder is at hand (the folder
    the train summary recorded, or the checkout's folder of the release name) and it describes exactly those
    weights; else None."""
    training = results.get('training') if isinstance(results.get('training'), dict) else {}
    init = training.get('init_from') if isinstance(training.get('init_from'), dict) else {}
    folders = [Path(init['release_folder'])] if init.get('release_folder') else []
    if init.get('release') and local_release(init['release']) is not None:
        folders.append(local_release(init['release']))
    for folder in folders:
        path = folder / RESULTS_NAME
        try:
            model = _read_json(path).get('model')
        except ReleaseError:
            continue
        if isinstance(model, dict) and model.get('sha256') is not None and model['sha256'] == init.get('sha256'):
            return path
    return None


def _attach_start_report(folder: Path, results: Dict[str, Any], before: Optional[PathLike]) -> Dict[str, Any]:
    """``results`` with the start model's per-class numbers from ``before`` (a results.json), or, when none is
    given and none is attached yet, from :func:`init_report`; results.json is rewritten when they are attached."""
    if before is None and 'per_class_before' not in results:
        before = init_report(results)
    if before is None:
        return results
    results = attach_before(results, _read_json(Path(before)), str(before))
    _write(folder / RESULTS_NAME, results)
    return results


def prepare_results(results: Mapping[str, Any], model: nn.Module, architecture: str, tag: str,
                    input_size: Sequence[int] = (3, 32, 32)) -> Dict[str, Any]:
    """Copy of a verify report with ``cost`` (counted on ``model`` and one image of ``input_size``, unless
    present) and ``paper_reference``."""
    from .cost import count_cost  # fvcore: only needed here

    out = json.loads(json.dumps(results))
    if 'cost' not in out:
        c = count_cost(model, input_size)
        out['cost'] = dict(
            params=c['params'], params_millions=round(c['params'] / 1e6, 2), gflops_fvcore=round(c['gflops_fvcore'], 4),
            gflops_paper_convention=round(2 * c['gflops_fvcore'], 4),
            counter=f'fvcore FlopCountAnalysis, one 1x{"x".join(map(str, input_size))} image, eval mode; paper '
                    f'convention = 2 x fvcore (a multiply-add counted as two FLOPs, as in the paper\'s Table 7)')
    ref = paper.paper_reference(architecture, tag)
    return {**out, 'paper_reference': ref.to_dict() if ref is not None else None}


# ----------------------------------------------------------------------------------------------------------------
# Assemble, validate, push


def assemble_release(out_dir: PathLike, weights: PathLike, results: Mapping[str, Any],
                     model_args: Optional[Mapping[str, Any]] = None, tag: Optional[str] = None,
                     org: Optional[str] = None, overwrite: bool = False,
                     before: Optional[PathLike] = None) -> ReleaseInfo:
    """Build a release folder from a verified weight file and its verify report; returns the validated info.

    ``out_dir`` is the parent (``model_cards``): the folder ``<arch>.<tag>`` is created inside it. ``model_args``
    (the constructor arguments besides ``num_classes``, which the report's dataset gives) default to those the
    report records (``model.model_args``); given beside them, they must be equal. ``before``: the results.json of
    the weights a fine-tuned model started from (see :func:`write_card`).
    """
    _check_results(results, 'results')
    arch = _check_arch(results['model']['architecture'], 'results model.architecture')
    tag = tag or results['model'].get('tag')
    if not tag:
        raise ReleaseError('results model.tag is null: pass the release tag (e.g. --tag at_cifar10).')
    weights = Path(weights)
    if not weights.is_file():
        raise ReleaseError(f'weights file not found: {weights}')
    sha = sha256_file(weights)
    if sha != results['model']['sha256']:
        raise ReleaseError(f'{weights}: sha256 {sha} differs from results model.sha256 {results["model"]["sha256"]}: '
                           f'the report does not describe this file.')
    recorded = results['model'].get('model_args')
    if model_args and recorded is not None and json.loads(json.dumps(dict(model_args))) != recorded:
        raise ReleaseError(f'model_args {dict(model_args)} differ from those the verify report records ({recorded}).')
    model_args = dict(model_args or recorded or {})
    dataset = results['data'].get('dataset')
    classes = {'num_classes': DATASETS[dataset][0]} if dataset in DATASETS else {}
    model = _create(arch, {**classes, **model_args}, str(weights), weights, sha)
    folder = Path(out_dir) / release_name(arch, tag)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ReleaseError(f'{folder} exists and is not empty (pass overwrite=True; tools/make_card.py: --overwrite).')
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHTS_NAME)
    config = build_config(model, arch, tag, sha, model_args, org, input_size=INPUT_SIZE.get(dataset))
    _write(folder / CONFIG_NAME, config)
    _write(folder / RESULTS_NAME, prepare_results(results, model, arch, tag, config['pretrained_cfg']['input_size']))
    write_card(folder, before=before)
    return validate_release(folder, pin=sha)


def write_card(folder: PathLike, org: Optional[str] = None, before: Optional[PathLike] = None) -> Path:
    """(Re)render ``README.md`` of a release folder from its results.json and config.json, with ``per_class.png``.

    ``org`` moves the release to another hub organisation (config.json ``hub_id``) first. results.json lacking
    ``cost``/``paper_reference`` is completed first (the model is built to count cost). For a fine-tuned model,
    the per-class numbers of the weights it started from are attached to results.json (:func:`attach_before`)
    from ``before`` (their results.json), else from the start release's folder when it is at hand
    (:func:`init_report`).
    """
    folder = Path(folder)
    config, results = _read_json(folder / CONFIG_NAME), _read_json(folder / RESULTS_NAME)
    _check_results(results, str(folder / RESULTS_NAME))
    arch = _check_arch(config.get('architecture'), str(folder / CONFIG_NAME))
    tag = (config.get('pretrained_cfg') or {}).get('tag')
    if org is not None or 'hub_id' not in config:
        config['hub_id'] = make_hub_id(release_name(arch, tag), org)
        _write(folder / CONFIG_NAME, config)
    if 'cost' not in results or 'paper_reference' not in results:
        model = _create(arch, _build_args(config, str(folder / CONFIG_NAME)), str(folder / CONFIG_NAME))
        size = (config.get('pretrained_cfg') or {}).get('input_size') or (3, 32, 32)
        results = prepare_results(results, model, arch, tag, size)
        _write(folder / RESULTS_NAME, results)
    results = _attach_start_report(folder, results, before)
    write_per_class_plot(results, config, folder)
    path = folder / CARD_NAME
    _write(path, _render(results, config, folder))
    write_robustbench(folder)
    return path


def attach_twin(folder: PathLike, twin_folder: PathLike) -> Dict[str, Any]:
    """Compare two twin releases (FSR and vanilla, same recipe) on the same images: store the ``twin`` section
    (:func:`fsr_hub.twins.twin_section`) in both results.json files and re-render both cards."""
    folders = [Path(folder), Path(twin_folder)]
    pairs = []
    for f in folders:
        config, results = _read_json(f / CONFIG_NAME), _read_json(f / RESULTS_NAME)
        _check_results(results, str(f / RESULTS_NAME))
        arch = _check_arch(config.get('architecture'), str(f / CONFIG_NAME))
        pairs.append((release_name(arch, (config.get('pretrained_cfg') or {}).get('tag')), results))
    try:
        section = twin_section(*pairs)
    except ValueError as e:
        raise ReleaseError(f'{folders[0]} and {folders[1]}: {e}') from None
    for f, (_, results) in zip(folders, pairs):
        _write(f / RESULTS_NAME, {**results, 'twin': section})
        write_card(f)
    return section


def write_robustbench(folder: PathLike) -> Path:
    """(Re)write ``robustbench.json`` of a release folder from its results.json and config.json (a derived file,
    like the card)."""
    folder = Path(folder)
    config, results = _read_json(folder / CONFIG_NAME), _read_json(folder / RESULTS_NAME)
    _check_results(results, str(folder / RESULTS_NAME))
    path = folder / ROBUSTBENCH_NAME
    _write(path, robustbench_record(results, config))
    return path


def validate_release(folder: PathLike, name: Optional[str] = None, pin: Optional[str] = None,
                     load_model: bool = True, check_card: bool = True) -> ReleaseInfo:
    """Check a release folder end to end, or raise :class:`ReleaseError` with a one-line message.

    Required files present; config.json names an fsr_hub (or any timm) architecture matching results.json and the
    release ``name`` (default: the folder's name); its ``hub_id`` is ``<org>/<name>``; the sha256 of the weights equals
    config.json's, results.json's and ``pin`` (default: :data:`fsr_hub.releases.RELEASED`'s pin for the name,
    if any); the weights load strictly; the card is byte for byte the one these files render to.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f'release folder not found: {folder}')
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ReleaseError(f'{folder}: missing {", ".join(missing)} (a release needs {", ".join(REQUIRED_FILES)}).')
    config_path, results_path, weights = folder / CONFIG_NAME, folder / RESULTS_NAME, folder / WEIGHTS_NAME
    config, results = _read_json(config_path), _read_json(results_path)
    arch = _check_arch(config.get('architecture'), str(config_path))
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
    _check_results(results, str(results_path))
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
    args = _build_args(config, str(config_path))
    model_args = config.get('model_args') or {}
    model = _create(arch, args, str(config_path), weights, sha) if load_model else None
    if model is not None and config.get('num_classes') != model.num_classes:
        raise ReleaseError(f'{config_path}: num_classes {config.get("num_classes")} but the model has '
                           f'{model.num_classes}.')
    if check_card and (folder / CARD_NAME).read_text() != _render(results, config, folder):
        raise ReleaseError(f'{folder / CARD_NAME} differs from the card rendered from results.json and config.json; '
                           f're-render it with: python tools/make_card.py --folder {folder}')
    if check_card and _read_json(folder / ROBUSTBENCH_NAME) != robustbench_record(results, config):
        raise ReleaseError(f'{folder / ROBUSTBENCH_NAME} differs from the record results.json and config.json give; '
                           f're-render it with: python tools/make_card.py --folder {folder}')
    return ReleaseInfo(folder=folder, name=own, architecture=arch, tag=tag, sha256=sha, hub_id=repo, config=config,
                       results=results, model_args=dict(model_args), model=model)


def upload_plan(folder: PathLike) -> List[Dict[str, Any]]:
    """Every file that would be uploaded: ``{'path', 'size', 'sha256'}`` (hidden files are skipped)."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob('*'))
             if p.is_file() and not any(s.startswith('.') for s in p.relative_to(folder).parts)]
    return [{'path': p.relative_to(folder).as_posix(), 'size': p.stat().st_size, 'sha256': sha256_file(p)}
            for p in files]


def push_release(folder: PathLike, org: Optional[str] = None, private: bool = False, dry_run: bool = False,
                 api: Any = None, print_fn: Callable[[str], Any] = print) -> str:
    """Validate ``folder`` and upload it to the hub repo of its config.json; with ``dry_run`` only print the plan.

    ``org``, when given, must be the organisation the card was rendered for. ``api`` is a
    :class:`huggingface_hub.HfApi` (default: one with huggingface_hub's usual HF_TOKEN / login lookup).
    Returns the repo id.
    """
    info = validate_release(folder)
    repo_id = info.hub_id
    rendered_for = repo_id.partition('/')[0]
    if org and org != rendered_for:
        raise ReleaseError(f'{info.folder / CARD_NAME} was rendered for the hub organisation {rendered_for}, not '
                           f'{org}; re-render it with: python tools/make_card.py --folder {info.folder} --org {org}')
    plan = upload_plan(info.folder)
    print_fn(f'{"[dry-run] would upload" if dry_run else "uploading"} {info.folder} -> '
             f'https://huggingface.co/{repo_id} ({"private" if private else "public"})')
    for f in plan:
        print_fn(f"  {f['path']}  {f['size']} bytes  sha256 {f['sha256']}")
    if dry_run:
        return repo_id
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
    api.upload_folder(repo_id=repo_id, folder_path=str(info.folder), repo_type='model',
                      commit_message=f'Release {info.name} (sha256 {info.sha256[:12]})',
                      allow_patterns=[f['path'] for f in plan])
    print_fn(f'uploaded {len(plan)} files to https://huggingface.co/{repo_id}')
    return repo_id


#: the block of the project README that :func:`write_readme_table` owns
README_MARKERS = ('<!-- released:begin -->', '<!-- released:end -->')


def readme_table(cards: PathLike = CHECKOUT_CARDS, names: Sequence[str] = tuple(RELEASED)) -> str:
    """The table of released weights (:func:`fsr_hub.card.released_table`) from the release folders of ``names``
    under ``cards``."""
    folders = {n: Path(cards) / n for n in names}
    return released_table({n: (_read_json(f / RESULTS_NAME), _read_json(f / CONFIG_NAME)) for n, f in folders.items()})


def write_readme_table(readme: PathLike, cards: PathLike = CHECKOUT_CARDS, names: Sequence[str] = tuple(RELEASED)) -> Path:
    """Rewrite the block between :data:`README_MARKERS` of ``readme`` with :func:`readme_table`."""
    path = Path(readme)
    text = path.read_text()
    begin, end = README_MARKERS
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReleaseError(f'{path} must hold the markers {begin} and {end} once each, in that order.')
    head, rest = text.split(begin)
    _write(path, f'{head}{begin}\n{readme_table(cards, names)}\n{end}{rest.split(end, 1)[1]}')
    return path
