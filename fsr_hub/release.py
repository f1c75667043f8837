"""Hub release folders: timm-format config.json, generated model cards, validation, push, and an offline
huggingface_hub cache seeded from a folder.

A release folder ``model_cards/<arch>.<tag>/`` is exactly what is uploaded to the hub repo ``<org>/<arch>.<tag>``:

* ``model.safetensors``: the weights that were verified (fp16 is fine; the card states the stored dtype),
* ``config.json``: timm's hub format (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``model_args`` with our FSR arguments, ``pretrained_cfg`` with the file's ``sha256``),
  so ``timm.create_model('hf-hub:<org>/<arch>.<tag>', pretrained=True)`` works after ``import fsr_hub``,
* ``results.json``: the verify report (schema ``fsr-hub/verify/v1``) plus two keys added at card time,
  ``cost`` (params and FLOPs counted on the released model) and ``paper_reference`` (the paper's numbers for
  the same setting, :mod:`fsr_hub.paper`), so that every number printed in the card is in results.json,
* ``README.md``: the card, rendered from results.json and config.json by :func:`render_card`.

The verify report must describe the released file itself: its ``model.sha256`` must equal the sha256 of
``model.safetensors`` (cast to fp16 *before* verifying if you release fp16 weights).
"""
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import timm
import torch.nn as nn
import yaml
from safetensors import safe_open

from . import paper
from .models import ALL_MODELS
from .releases import DEFAULT_ORG as HF_ORG
from .weights import WEIGHTS_NAME, WeightsError, load_weights, registry_sha256, sha256_file

__all__ = [
    'ReleaseError', 'ReleaseInfo', 'REQUIRED_FILES', 'VERIFY_SCHEMA', 'release_name', 'repo_id_for',
    'build_config', 'prepare_results', 'render_card', 'parse_card', 'card_metrics', 'check_card', 'assemble_release',
    'write_card', 'validate_release', 'upload_plan', 'push_release', 'seed_hf_cache',
]

PathLike = Union[str, os.PathLike]
VERIFY_SCHEMA = 'fsr-hub/verify/v1'
CONFIG_NAME, CARD_NAME, RESULTS_NAME = 'config.json', 'README.md', 'results.json'
REQUIRED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, RESULTS_NAME)
# Extra attacks of the verify schema shown after the paper's suite when present.
_EXTRA_METRICS = {'autoattack_rand': 'AutoAttack (rand)', 'transfer': 'Transfer'}
# pretrained_cfg keys that describe where weights come from; timm fills them in when it loads from the hub.
_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source')


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
    config: Dict[str, Any]
    results: Dict[str, Any]
    model_args: Dict[str, Any] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    org: str = HF_ORG  # the hub organisation the card was rendered for


def release_name(architecture: str, tag: str) -> str:
    return f'{architecture}.{tag}'


def repo_id_for(name: str, org: Optional[str] = None) -> str:
    """Hub repo id ``<org>/<arch>.<tag>`` (org defaults to :data:`fsr_hub.HF_ORG`)."""
    return f'{org or HF_ORG}/{name}'


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


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + '\n')


def _jsonable(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _check_arch(architecture: Any, where: str) -> str:
    if architecture not in ALL_MODELS:
        raise ReleaseError(f'{where}: architecture {architecture!r} is not an fsr_hub model ({", ".join(ALL_MODELS)}).')
    return architecture


def _create(architecture: str, model_args: Mapping[str, Any], where: str) -> nn.Module:
    try:
        return timm.create_model(architecture, pretrained=False, **model_args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ReleaseError(f'{where}: cannot build {architecture} with model_args {dict(model_args)} ({e}).') from e


# ----------------------------------------------------------------------------------------------------------------
# config.json


def build_config(model: nn.Module, architecture: str, tag: str, sha256: str,
                 model_args: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """timm hub config.json for ``model`` (an ``architecture`` built with ``model_args``) released as ``tag``."""
    name = release_name(architecture, tag)
    try:
        base = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(architecture)
    except (RuntimeError, KeyError, ValueError):
        base = None
    cfg = dataclasses.asdict(base) if base is not None else dict(model.pretrained_cfg)
    cfg = {k: v for k, v in cfg.items() if v is not None and k not in _SOURCE_KEYS}
    cfg.update(tag=tag, sha256=sha256, num_classes=model.num_classes, custom_load=False)
    cfg.pop('architecture', None)
    label_names = cfg.get('label_names')
    if label_names is not None and len(label_names) != model.num_classes:
        cfg.pop('label_names')
        label_names = None
    args = {k: v for k, v in (model_args or {}).items() if k not in ('pretrained', 'num_classes')}
    args['fsr_positions'] = list(getattr(model, 'fsr_positions', ()))
    config: Dict[str, Any] = {
        'architecture': architecture,
        'num_classes': model.num_classes,
        'num_features': model.num_features,
        'global_pool': getattr(getattr(model, 'global_pool', None), 'pool_type', 'avg') or 'avg',
    }
    if label_names is not None:
        config['label_names'] = list(label_names)
    config['model_args'] = _jsonable(args)
    config['pretrained_cfg'] = _jsonable(cfg)
    return config


# ----------------------------------------------------------------------------------------------------------------
# results.json


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


def prepare_results(results: Mapping[str, Any], model: nn.Module, architecture: str, tag: str) -> Dict[str, Any]:
    """Copy of a verify report with ``cost`` (counted on ``model`` unless present) and ``paper_reference``.

    Cost is counted here, once, and stored in results.json so the card prints only numbers found there.
    """
    from .cost import count_cost

    out = json.loads(json.dumps(results))
    if 'cost' not in out:
        c = count_cost(model)
        out['cost'] = {
            'params': c['params'],
            'params_millions': round(c['params'] / 1e6, 2),
            'gflops_fvcore': round(c['gflops_fvcore'], 4),
            'gflops_paper_convention': round(2 * c['gflops_fvcore'], 4),
            'counter': 'fvcore FlopCountAnalysis, one 1x3x32x32 image, eval mode; paper convention = 2 x fvcore '
                       '(a multiply-add counted as two FLOPs, as in the paper\'s Table 7)',
        }
    ref = paper.paper_reference(architecture, tag)
    out['paper_reference'] = ref.to_dict() if ref is not None else None
    return out


# ----------------------------------------------------------------------------------------------------------------
# The card


def _metric_keys(results: Mapping[str, Any]) -> List[str]:
    measured = results.get('results', {})
    return list(paper.METRICS) + [k for k in _EXTRA_METRICS if k in measured]


def _metric_name(key: str) -> str:
    return paper.METRIC_NAMES.get(key) or _EXTRA_METRICS.get(key) or key


_DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'tiny_imagenet': 'Tiny ImageNet'}


def _dataset_name(dataset: str) -> str:
    return _DATASET_NAMES.get(dataset, dataset)


def _eps_255(eps: Any) -> str:
    return f'{round(eps * 255)}/255' if isinstance(eps, (int, float)) else 'unknown'


def _front_matter(results: Mapping[str, Any], config: Mapping[str, Any], name: str) -> Dict[str, Any]:
    data = results.get('data', {})
    dataset = data.get('dataset', 'cifar10')
    eps = _eps_255(results.get('eps'))
    metrics = []
    for key in _metric_keys(results):
        entry = results['results'].get(key)
        if entry is None:
            continue
        label = 'clean accuracy' if key == 'clean' else f'robust accuracy, {_metric_name(key)}, Linf {eps}'
        metrics.append({'type': 'accuracy', 'name': label, 'config': key, 'value': entry['accuracy'],
                        'verified': False})
    return {
        'library_name': 'timm',
        'license': config.get('pretrained_cfg', {}).get('license', 'mit'),
        'pipeline_tag': 'image-classification',
        'tags': ['image-classification', 'timm', 'fsr-hub', 'adversarial-robustness', 'adversarial-training',
                 'feature-separation-and-recalibration', 'safetensors'],
        'datasets': [dataset],
        'metrics': ['accuracy'],
        'model-index': [{
            'name': name,
            'results': [{
                'task': {'type': 'image-classification', 'name': 'Image Classification'},
                'dataset': {'type': dataset, 'name': _dataset_name(dataset), 'split': data.get('split', 'test')},
                'metrics': metrics,
            }],
        }],
    }


def _fmt(v: Any, nd: int = 2) -> str:
    return f'{v:.{nd}f}' if isinstance(v, (int, float)) and not isinstance(v, bool) else 'not measured'


def _attack_protocol(key: str, entry: Mapping[str, Any]) -> str:
    p = entry.get('params') or {}
    if key == 'ensemble':
        attacks = entry.get('attacks') or []
        return f"per example: correct under all of {', '.join(attacks)}" if attacks else ''
    if key.startswith('autoattack'):
        return str(entry.get('implementation', ''))
    if key == 'transfer':
        return f"source: {entry.get('source', 'unknown')}"
    bits = []
    if 'steps' in p:
        bits.append(f"{p['steps']} step{'s' if p['steps'] != 1 else ''}")
    if 'alpha' in p and isinstance(p['alpha'], (int, float)) and isinstance(p.get('eps'), (int, float)) and p['eps']:
        bits.append(f"step eps/{round(p['eps'] / p['alpha'])}")
    if 'random_start' in p:
        bits.append('random start' if p['random_start'] else 'no random start')
    if 'kappa' in p:
        bits.append(f"kappa {p['kappa']}")
    return ', '.join(bits)


def _weights_dtype(folder: Optional[Path]) -> str:
    if folder is None or not (folder / WEIGHTS_NAME).is_file():
        return 'unknown'
    try:
        with safe_open(str(folder / WEIGHTS_NAME), framework='pt') as f:
            dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()})
    except (OSError, ValueError) as e:
        raise ReleaseError(f'{folder / WEIGHTS_NAME} is not a readable safetensors file ({e}).') from e
    return ', '.join(dtypes)


def render_card(results: Mapping[str, Any], config: Mapping[str, Any], org: Optional[str] = None,
                folder: Optional[Path] = None) -> str:
    """The model card (README.md) of a release: hub YAML front matter + a short human card.

    Every decimal number printed comes from ``results`` (see :func:`prepare_results`).
    """
    arch = config['architecture']
    tag = config['pretrained_cfg'].get('tag')
    name = release_name(arch, tag)
    repo = repo_id_for(name, org)
    model_info, data = results.get('model', {}), results.get('data', {})
    measured = results.get('results', {})
    ref = results.get('paper_reference') or {}
    eps = _eps_255(results.get('eps'))
    n = data.get('n', 'unknown')
    front = yaml.safe_dump(_front_matter(results, config, name), sort_keys=False, allow_unicode=True)
    fsr = config.get('model_args', {}).get('fsr_positions') or []
    what = f"with Feature Separation and Recalibration (FSR) after `{', '.join(fsr)}`" if fsr else \
        'without FSR (vanilla twin)'
    dataset = _dataset_name(data.get('dataset', 'cifar10'))
    lines = [
        '---', front.rstrip(), '---', '',
        f'# {name}', '',
        f'`{arch}` trained with `{tag}` on {dataset}: an adversarially trained CNN {what}'
        ' (Kim et al., CVPR 2023, arXiv:2303.13846). Inputs are raw RGB pixels in [0, 1], 32x32, no normalisation; '
        f"{config.get('num_classes')} classes.",
        '',
        '## How to load', '',
        '```python',
        'import timm, torch, fsr_hub  # importing fsr_hub registers the architectures with timm',
        f"model = timm.create_model('{name}', pretrained=True).eval()",
        f"model = timm.create_model('hf-hub:{repo}', pretrained=True).eval()",
        f"model = torch.hub.load('<fsr-hub checkout or github repo>', '{arch}', pretrained=True)",
        '```', '',
        'Weights are checked against the sha256 below on every load.', '',
        '## Training', '',
    ]
    training = results.get('training')
    if isinstance(training, dict):
        if training.get('command'):
            lines += ['Command:', '', '```bash', str(training['command']), '```', '']
        if isinstance(training.get('config'), dict):
            lines += ['Recipe (trainer config):', '', '```yaml',
                      yaml.safe_dump(training['config'], sort_keys=True).rstrip(), '```', '']
    else:
        lines += ['The training recipe and command were not recorded in results.json.', '']
    lines += [
        '## Evaluation', '',
        f"{_dataset_name(data.get('dataset', 'cifar10'))} {data.get('split', 'test')} set, {n} images "
        f"({data.get('subset', 'unknown subset')}), Linf eps = {eps}, model in eval mode. "
        f"Paper: {ref.get('setting', 'no reference for this setting')}.", '',
        '| metric | this model (%) | paper (%) | paper source | protocol |',
        '| --- | ---: | ---: | --- | --- |',
    ]
    pm, ps = ref.get('metrics') or {}, ref.get('sources') or {}
    for key in _metric_keys(results):
        entry = measured.get(key) or {}
        ours = _fmt(entry.get('accuracy'))
        theirs = _fmt(pm[key]) if key in pm else '-'
        protocol = _attack_protocol(key, entry) if entry else ''
        lines.append(f"| {_metric_name(key)} | {ours} | {theirs} | {ps.get(key, '-')} | {protocol} |")
    lines += ['', 'Command:', '', '```bash', str(results.get('command', 'not recorded')), '```', '']
    lines += ['## Gradient-masking checks', '']
    mc = results.get('masking_checks')
    if isinstance(mc, dict):
        sweep = mc.get('eps_sweep') or {}
        if sweep.get('eps_255'):
            lines += ['PGD accuracy (%) as eps grows:', '',
                      '| eps | ' + ' | '.join(f'{e}/255' for e in sweep['eps_255']) + ' |',
                      '| --- |' + ' ---: |' * len(sweep['eps_255']),
                      '| accuracy | ' + ' | '.join(_fmt(a) for a in sweep.get('accuracy', [])) + ' |', '']
        steps = mc.get('steps_sweep') or {}
        if steps.get('steps'):
            lines += ['PGD accuracy (%) as steps grow:', '',
                      '| steps | ' + ' | '.join(str(s) for s in steps['steps']) + ' |',
                      '| --- |' + ' ---: |' * len(steps['steps']),
                      '| accuracy | ' + ' | '.join(_fmt(a) for a in steps.get('accuracy', [])) + ' |', '']
        if mc.get('unbounded_accuracy') is not None:
            lines += [f"Unbounded attack accuracy: {_fmt(mc['unbounded_accuracy'])} %.", '']
        for check, ok in (mc.get('checks') or {}).items():
            lines.append(f"- {check}: {'n/a' if ok is None else ('pass' if ok else 'FAIL')}")
        overall = {True: 'passed', False: 'NOT passed', None: 'not run'}[mc.get('passed')]
        lines += ['', f'Overall: {overall}.', '']
    else:
        lines += ['Not run.', '']
    cost = results.get('cost') or {}
    pc = ref.get('cost') or {}
    lines += [
        '## Cost', '',
        '| | params | params (M) | GFLOPs (fvcore, multiply-add = 1) | GFLOPs (paper convention, = 2 x fvcore) |',
        '| --- | ---: | ---: | ---: | ---: |',
        f"| this model | {cost.get('params', 'not measured'):,} | {_fmt(cost.get('params_millions'))} | "
        f"{_fmt(cost.get('gflops_fvcore'), 4)} | {_fmt(cost.get('gflops_paper_convention'), 4)} |"
        if isinstance(cost.get('params'), int) else '| this model | not measured | | | |',
    ]
    if pc:
        lines.append(f"| paper, {ref.get('cost_source', '')} | | {_fmt(pc.get('params_m'))} | | "
                     f"{_fmt(pc.get('gflops'), 4)} |")
    lines += ['', f"Counted with: {cost.get('counter', 'not recorded')}.", '']
    hw, timing = results.get('hardware') or {}, results.get('timing') or {}
    lines += ['## Hardware and wall-clock', '',
              f"- Evaluation: {hw.get('device', 'unknown device')}, torch {hw.get('torch', '?')}, "
              f"{hw.get('dtype', '?')}; "
              f"total {_fmt(timing.get('total_seconds'), 1)} s."]
    if isinstance(training, dict):
        thw = training.get('hardware')
        thw = thw.get('device', thw) if isinstance(thw, dict) else thw
        lines.append(f"- Training: {thw or 'unknown hardware'}, {training.get('epochs', '?')} epochs, "
                     f"{_fmt(training.get('wall_clock_seconds'), 1)} s wall-clock.")
    else:
        lines.append('- Training: not recorded.')
    lines += [
        '', '## Weights', '',
        f"- `{WEIGHTS_NAME}`, stored as {_weights_dtype(folder)} (fp16 halves the download; the model computes in "
        'float32 after loading, and the numbers above were measured on this exact file).',
        f"- sha256: `{model_info.get('sha256')}`",
        '',
        '## Limitations', '',
        f'- Robustness is measured only against Linf attacks with eps = {eps} on {dataset};'
        ' other threat models (L2, larger eps, corruptions) are not covered.',
        '- Empirical robustness is an upper bound on true robustness: a stronger, adaptive attack may lower it.',
        '- Attacks must be run with the model in eval mode; FSR in train mode samples a stochastic mask that weakens '
        'gradient attacks and overstates robustness.',
        '- Metrics marked "not measured" were not run for this release.',
    ]
    if data.get('subset') not in (None, 'all'):
        lines.append(f'- Numbers were measured on a subset ({n} images, {data.get("subset")}), not the full test set.')
    lines += [
        '', '## Citation', '', '```bibtex',
        '@inproceedings{kim2023fsr,',
        '  title={Feature Separation and Recalibration for Adversarial Robustness},',
        '  author={Kim, Woo Jae and Cho, Yoonki and Jung, Junsik and Yoon, Sung-Eui},',
        '  booktitle={CVPR}, year={2023}}',
        '```', '',
    ]
    return '\n'.join(lines)


def parse_card(text: str, where: str = CARD_NAME) -> Tuple[Dict[str, Any], str]:
    """Split a card into (YAML front matter as a dict, markdown body)."""
    m = re.match(r'---\n(.*?)\n---\n(.*)\Z', text, re.S)
    if not m:
        raise ReleaseError(f'{where}: no YAML front matter (the card must start with a --- block).')
    try:
        front = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ReleaseError(f'{where}: front matter is not valid YAML ({str(e).splitlines()[0]}).') from e
    if not isinstance(front, dict):
        raise ReleaseError(f'{where}: front matter must be a YAML mapping.')
    return front, m.group(2)


def card_metrics(front: Mapping[str, Any], where: str = CARD_NAME) -> Dict[str, float]:
    """``{results key: value}`` of the model-index metrics in a card's front matter."""
    out = {}
    try:
        for entry in front['model-index']:
            for res in entry['results']:
                for m in res['metrics']:
                    out[m['config']] = m['value']
    except (KeyError, TypeError) as e:
        raise ReleaseError(f'{where}: malformed model-index in the front matter ({type(e).__name__}: {e}).') from e
    return out


# A decimal number on its own: not part of a version string (2.14.1), an id (arXiv:2303.13846), a word or a digest.
_DECIMAL = re.compile(r'(?<![\w.:/-])\d+\.(\d+)(?![\w.])')


def _numbers(obj: Any) -> Iterable[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, str):  # e.g. the numbers of a recorded command line
        for m in _DECIMAL.finditer(obj):
            yield float(m.group(0))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)


def check_card(text: str, results: Mapping[str, Any], where: str = CARD_NAME) -> None:
    """Raise :class:`ReleaseError` unless the card's model-index equals ``results`` and every decimal number in
    its body is (after rounding to the printed digits) a number of ``results``."""
    front, body = parse_card(text, where)
    metrics = card_metrics(front, where)
    measured = {k: v['accuracy'] for k, v in results['results'].items() if isinstance(v, dict) and 'accuracy' in v}
    for key in sorted(set(metrics) | set(measured)):
        if key not in metrics:
            raise ReleaseError(f'{where}: results.json has {key} = {measured[key]} but the card model-index lacks it.')
        if key not in measured:
            raise ReleaseError(f'{where}: card model-index has {key} = {metrics[key]} but results.json has no {key}.')
        if not isinstance(metrics[key], (int, float)) or not math.isclose(metrics[key], measured[key], abs_tol=1e-9):
            raise ReleaseError(f'{where}: model-index {key} = {metrics[key]} but results.json says {measured[key]}.')
    known = list(_numbers(results))
    for m in _DECIMAL.finditer(body):
        nd, value = len(m.group(1)), float(m.group(0))
        if not any(abs(round(v, nd) - value) < 10 ** -(nd + 3) for v in known):
            line = body[:m.start()].count('\n') + 1
            raise ReleaseError(f'{where}: number {m.group(0)} (body line {line}) is not in results.json.')


# ----------------------------------------------------------------------------------------------------------------
# Assemble, render, validate


def assemble_release(out_dir: PathLike, weights: PathLike, results: Mapping[str, Any],
                     model_args: Optional[Mapping[str, Any]] = None, tag: Optional[str] = None,
                     org: Optional[str] = None, overwrite: bool = False) -> ReleaseInfo:
    """Build a release folder from a verified weight file and its verify report; returns the validated info.

    ``out_dir`` is the parent (``model_cards``): the folder ``<arch>.<tag>`` is created inside it.
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
    model_args = dict(model_args or {})
    model = _create(arch, model_args, str(weights))
    try:
        load_weights(model, weights, sha)
    except WeightsError as e:
        raise ReleaseError(str(e)) from e
    folder = Path(out_dir) / release_name(arch, tag)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ReleaseError(f'{folder} exists and is not empty (use overwrite).')
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHTS_NAME)
    config = build_config(model, arch, tag, sha, model_args)
    _write_json(folder / CONFIG_NAME, config)
    _write_json(folder / RESULTS_NAME, prepare_results(results, model, arch, tag))
    write_card(folder, org=org)
    return validate_release(folder)


def write_card(folder: PathLike, org: Optional[str] = None) -> Path:
    """(Re)render ``README.md`` of a release folder from its results.json and config.json.

    results.json lacking ``cost``/``paper_reference`` is completed first (the model is built to count cost).
    """
    folder = Path(folder)
    config, results = _read_json(folder / CONFIG_NAME), _read_json(folder / RESULTS_NAME)
    _check_results(results, str(folder / RESULTS_NAME))
    arch = _check_arch(config.get('architecture'), str(folder / CONFIG_NAME))
    tag = (config.get('pretrained_cfg') or {}).get('tag')
    if 'cost' not in results or 'paper_reference' not in results:
        model = _create(arch, config.get('model_args') or {}, str(folder / CONFIG_NAME))
        results = prepare_results(results, model, arch, tag)
        _write_json(folder / RESULTS_NAME, results)
    path = folder / CARD_NAME
    path.write_text(render_card(results, config, org=org, folder=folder))
    return path


def validate_release(folder: PathLike, check_registry: bool = True, load_model: bool = True) -> ReleaseInfo:
    """Check a release folder end to end, or raise :class:`ReleaseError` with a one-line message.

    Required files present; config.json names a registered fsr_hub architecture matching results.json and the
    folder name; sha256 of the weights equals config.json's pin, results.json's and (if pinned) the registry's;
    the weights load strictly; the card's model-index equals results.json, every decimal number in the card
    body is in results.json, and the card is byte for byte the one those files render to.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f'release folder not found: {folder}')
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ReleaseError(f'{folder}: missing {", ".join(missing)} (a release needs {", ".join(REQUIRED_FILES)}).')
    config_path, results_path = folder / CONFIG_NAME, folder / RESULTS_NAME
    config, results = _read_json(config_path), _read_json(results_path)
    arch = _check_arch(config.get('architecture'), str(config_path))
    pcfg = config.get('pretrained_cfg')
    if not isinstance(pcfg, dict) or not pcfg.get('tag') or not pcfg.get('sha256'):
        raise ReleaseError(f'{config_path}: pretrained_cfg must hold the release tag and sha256.')
    tag = pcfg['tag']
    name = release_name(arch, tag)
    if folder.name != name:
        raise ReleaseError(f'{folder}: folder name must be the release name {name} (it becomes the hub repo name).')
    _check_results(results, str(results_path))
    if results['model']['architecture'] != arch:
        raise ReleaseError(f'{results_path}: model.architecture {results["model"]["architecture"]!r} differs '
                           f'from config.json architecture {arch!r}.')
    if results['model'].get('tag') not in (None, tag):
        raise ReleaseError(
            f'{results_path}: model.tag {results["model"]["tag"]!r} differs from config.json tag {tag!r}.')
    weights = folder / WEIGHTS_NAME
    sha = sha256_file(weights)
    if sha != pcfg['sha256']:
        raise ReleaseError(f'{weights}: sha256 {sha} differs from config.json pretrained_cfg.sha256 {pcfg["sha256"]}.')
    if sha != results['model']['sha256']:
        raise ReleaseError(
            f'{weights}: sha256 {sha} differs from results.json model.sha256 {results["model"]["sha256"]}.')
    pin = registry_sha256(arch, tag) if check_registry else None
    if pin is not None and pin != sha:
        raise ReleaseError(f'{weights}: sha256 {sha} differs from the registry pin {pin} of {name}.')
    model_args = config.get('model_args') or {}
    if not isinstance(model_args, dict):
        raise ReleaseError(f'{config_path}: model_args must be a JSON object.')
    model = None
    if load_model:
        model = _create(arch, model_args, str(config_path))
        if config.get('num_classes') != model.num_classes:
            raise ReleaseError(
                f'{config_path}: num_classes {config.get("num_classes")} but the model has {model.num_classes}.')
        try:
            load_weights(model, weights, sha)
        except WeightsError as e:
            raise ReleaseError(str(e)) from e
        model.eval()
    card = (folder / CARD_NAME).read_text()
    check_card(card, results, str(folder / CARD_NAME))
    # the card must be exactly what results.json and config.json render to: no edited, swapped or added number
    found = re.search(rf"hf-hub:([^/\s'\"]+)/{re.escape(name)}", card)
    org = found.group(1) if found else HF_ORG
    if card != render_card(results, config, org=org, folder=folder):
        raise ReleaseError(f'{folder / CARD_NAME} differs from the card rendered from results.json and config.json; '
                           f're-render it with: python tools/make_card.py --folder {folder}')
    return ReleaseInfo(folder=folder, name=name, architecture=arch, tag=tag, sha256=sha, config=config,
                       results=results, model_args=dict(model_args), model=model, org=org)


# ----------------------------------------------------------------------------------------------------------------
# Push and the offline cache


def upload_plan(folder: PathLike) -> List[Dict[str, Any]]:
    """Every file that would be uploaded: ``{'path', 'size', 'sha256'}`` (hidden files are skipped)."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob('*'))
             if p.is_file() and not any(s.startswith('.') for s in p.relative_to(folder).parts)]
    return [{'path': p.relative_to(folder).as_posix(), 'size': p.stat().st_size, 'sha256': sha256_file(p)}
            for p in files]


def push_release(folder: PathLike, org: Optional[str] = None, private: bool = False, dry_run: bool = False,
                 token: Optional[str] = None, print_fn=print) -> str:
    """Validate ``folder`` and upload it to ``<org>/<arch>.<tag>``; with ``dry_run`` only print the plan.

    Returns the repo id. The token comes from ``token`` or huggingface_hub's usual HF_TOKEN / login lookup.
    """
    info = validate_release(folder)
    if org and org != info.org:
        raise ReleaseError(f'{info.folder / CARD_NAME} was rendered for the hub organisation {info.org}, not {org}; '
                           f're-render it with: python tools/make_card.py --folder {info.folder} --org {org}')
    repo_id = repo_id_for(info.name, org or info.org)
    plan = upload_plan(info.folder)
    print_fn(f'{"[dry-run] would upload" if dry_run else "uploading"} {info.folder} -> '
             f'https://huggingface.co/{repo_id} ({"private" if private else "public"})')
    for f in plan:
        print_fn(f"  {f['path']}  {f['size']} bytes  sha256 {f['sha256']}")
    if dry_run:
        return repo_id
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
    api.upload_folder(repo_id=repo_id, folder_path=str(info.folder), repo_type='model',
                      commit_message=f'Release {info.name} (sha256 {info.sha256[:12]})',
                      allow_patterns=[f['path'] for f in plan])
    print_fn(f'uploaded {len(plan)} files to https://huggingface.co/{repo_id}')
    return repo_id


def seed_hf_cache(folder: PathLike, repo_id: str, cache_dir: PathLike, revision: str = 'main',
                  files: Optional[Iterable[str]] = None) -> str:
    """Lay out ``folder``'s files in a huggingface_hub cache exactly as ``hf_hub_download`` leaves them
    (``models--<org>--<name>/{blobs,snapshots/<commit>,refs/<revision>}``); returns the fake commit hash.

    With ``HF_HUB_OFFLINE=1`` huggingface_hub then serves these files as if they had been downloaded.
    """
    folder = Path(folder)
    names = sorted(files) if files is not None else [f['path'] for f in upload_plan(folder)]
    digests = {n: sha256_file(folder / n) for n in names}
    commit = hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    root = Path(cache_dir) / ('models--' + repo_id.replace('/', '--'))
    (root / 'blobs').mkdir(parents=True, exist_ok=True)
    (root / 'refs').mkdir(parents=True, exist_ok=True)
    for n, digest in digests.items():
        blob = root / 'blobs' / digest
        if not blob.exists():
            shutil.copyfile(folder / n, blob)
        link = root / 'snapshots' / commit / n
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)
    (root / 'refs' / revision).write_text(commit)
    return commit
