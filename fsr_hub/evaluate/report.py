"""The sections of the ``fsr-hub/verify/v1`` report around an evaluation: the model, the training run, and the
report itself (:func:`build_report`)."""
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from ..hardware import hardware_name
from ..schemas import TRAIN_SCHEMA, VERIFY_SCHEMA
from ..weights import sha256_file

__all__ = ['SCHEMA', 'model_info', 'build_report', 'training_section']

SCHEMA = VERIFY_SCHEMA


def model_info(model: nn.Module, architecture: str, tag: Optional[str] = None,
               weights: Optional[str] = None, model_args: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The report's ``model`` section (sha256 of the weight file when there is one); ``model_args``: the
    constructor arguments besides ``num_classes`` that built ``model`` from ``architecture``
    (``fsr_hub.models.create(architecture, num_classes=..., **model_args)``)."""
    return {
        'architecture': architecture, 'tag': tag, 'weights': str(weights) if weights else None,
        'sha256': sha256_file(weights) if weights else None,
        'num_params': sum(p.numel() for p in model.parameters()),
        'model_args': dict(model_args or {}),
    }


def build_report(
        model: Dict[str, Any], data: Dict[str, Any], evaluation: Dict[str, Any], eps: float, batch_size: int,
        device: Any, command: str, dtype: str = 'float32', preset: Optional[str] = None,
        deadline_minutes: Optional[float] = None,
) -> Dict[str, Any]:
    """Assemble the ``fsr-hub/verify/v1`` JSON report (partial when ``evaluation['complete']`` is false)."""
    device = torch.device(device)
    precision = evaluation.get('precision') or {'dtype': dtype}
    report = {
        'schema': SCHEMA,
        'model': model,
        'data': data,
        'eps': eps,
        'batch_size': batch_size,
        'preset': preset,
        'deadline_minutes': deadline_minutes,
        'hardware': {'device': hardware_name(device), 'torch': torch.__version__, **precision},
        'complete': evaluation.get('complete', True),
        'not_run': evaluation.get('not_run', {}),
        'results': evaluation['results'],
        'masking_checks': evaluation['masking_checks'],
        'timing': evaluation['timing'],
        'command': command,
    }
    for key in ('resumed', 'progress', 'per_example'):
        if evaluation.get(key):
            report[key] = evaluation[key]
    return report


def training_section(summary: Dict[str, Any], weights_sha256: str,
                     cast: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The report's ``training`` key from the trainer's ``train_summary.json`` (schema ``fsr-hub/train/v1``).

    The summary must be the run that produced the evaluated file: its final or best weights have that sha256, or,
    with ``cast`` (``{'sha256': trainer's file, 'dtype': 'float16'}``: the evaluated file is that file cast, see
    :func:`fsr_hub.weights.cast_dtype`), the cast file's.
    """
    if summary.get('schema') != TRAIN_SCHEMA:
        raise ValueError(f"train summary has schema {summary.get('schema')!r}, expected {TRAIN_SCHEMA!r}.")
    files = summary.get('weights', {})
    trained = cast['sha256'] if cast else weights_sha256
    selected = [k for k in ('final', 'best') if isinstance(files.get(k), dict) and files[k].get('sha256') == trained]
    if not selected:
        raise ValueError(f'the train summary belongs to another run: neither its final nor its best weights have '
                         f'sha256 {trained} (re-save the released file with the trainer, or verify that file).')
    epoch_seconds = summary.get('epoch_seconds') or []
    extra = {'cast': {'from': selected[0], 'from_sha256': trained, 'dtype': cast['dtype']}} if cast else {}
    if summary.get('init_from'):  # a fine-tuned model: the weights it started from
        extra['init_from'] = summary['init_from']
    budget = summary.get('budget')
    if isinstance(budget, dict):  # how the budget fixed the epochs, and what reproduces the run
        extra['budget'] = {k: budget[k] for k in ('minutes', 'epochs', 'replans', 'lr_plan', 'reproduce')
                           if k in budget}
    return {
        **extra,
        'config': summary.get('config'),
        'command': summary.get('command'),
        'processes': summary.get('processes'),
        'epochs': len(epoch_seconds),
        'epoch_seconds': epoch_seconds,
        'wall_clock_seconds': summary.get('wall_clock_seconds'),
        'hardware': (summary.get('hardware') or {}).get('device'),
        'weights': selected[0],
        'best': summary.get('best'),
    }
