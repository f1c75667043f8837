"""The ``pruning`` section of a verify report: how a released sparse checkpoint was made (from
``tools/prune.py``'s ``prune_summary.json``) and its sparsity, measured on the evaluated weights themselves.

The sparsity and FLOPs are recounted on the file that was verified (:func:`measured_sparsity`), never copied from
the summary: a cast to float16 may flush tiny weights to zero, and the card must describe the released file.
:func:`check_pruning` lets release validation recount them.
"""
from typing import Any, Dict, Mapping, Optional, Sequence

import torch.nn as nn

from ..paper import METRIC_NAMES
from ..catalog import release_of
from ..schemas import PRUNE_SCHEMA
from ..twins import twin_gaps
from .layers import prunable_layers
from .prune import sparsity_report
from .run import sparse_flops

__all__ = ['pruning_section', 'measured_sparsity', 'check_pruning', 'versus_dense']

#: the summary's keys that describe the run and go into the report as they are
_RUN_KEYS = ('mode', 'criterion', 'reductions', 'method', 'training_images', 'saliency', 'finetune', 'evaluation',
             'timings_seconds', 'hardware', 'command')


def measured_sparsity(model: nn.Module, input_size: Sequence[int] = (3, 32, 32),
                      flops: bool = True) -> Dict[str, Any]:
    """Zeros per prunable layer and in all, and (``flops``) the fvcore FLOPs with zero weights skipped."""
    layers = prunable_layers(model)
    out: Dict[str, Any] = {'sparsity': sparsity_report(model, layers)}
    if flops:
        out['flops'] = sparse_flops(model, layers, input_size)
    return out


def pruning_section(summary: Mapping[str, Any], model: nn.Module, weights_sha256: str,
                    cast: Optional[Mapping[str, str]] = None,
                    input_size: Sequence[int] = (3, 32, 32)) -> Dict[str, Any]:
    """The report's ``pruning`` key: the run's record from ``summary`` (schema ``fsr-hub/prune/v1``), which must be
    of the evaluated file (its pruned weights have that sha256 or, with ``cast`` as in
    :func:`fsr_hub.evaluate.training_section`, the cast file's), and the sparsity of ``model``, those weights."""
    if summary.get('schema') != PRUNE_SCHEMA:
        raise ValueError(f"prune summary has schema {summary.get('schema')!r}, expected {PRUNE_SCHEMA!r}.")
    pruned = cast['sha256'] if cast else weights_sha256
    recorded = (summary.get('weights') or {}).get('sha256')
    if recorded != pruned:
        raise ValueError(f'the prune summary belongs to another run: its pruned weights have sha256 {recorded}, '
                         f'not {pruned} (verify the pruned.safetensors it describes, or a cast of it with '
                         f'--cast-from).')
    source = dict(summary.get('source') or {})
    source['release'] = release_of(source.get('sha256'))
    section: Dict[str, Any] = {'source': source, **{k: summary.get(k) for k in _RUN_KEYS}}
    if cast:
        section['cast'] = {'from_sha256': pruned, 'dtype': cast['dtype'],
                           'summary_nonzero_params': (summary.get('sparsity') or {}).get('nonzero_params')}
    section.update(measured_sparsity(model, input_size))
    return section


def check_pruning(pruning: Mapping[str, Any], model: nn.Module, where: str) -> None:
    """Raise ValueError when the recorded per-layer zeros differ from those of ``model`` (the released weights)."""
    recorded = pruning.get('sparsity')
    measured = measured_sparsity(model, flops=False)['sparsity']
    if recorded != measured:
        rows = {r['layer']: r['zeros'] for r in (recorded or {}).get('layers', []) if isinstance(r, dict)}
        diff = [r['layer'] for r in measured['layers'] if rows.get(r['layer']) != r['zeros']]
        raise ValueError(f'{where}: pruning.sparsity does not match the zeros of the weights (layers '
                         f'{", ".join(diff[:3]) or "none; totals differ"}); verify the released file again.')


def versus_dense(results: Mapping[str, Any], dense: Mapping[str, Any],
                 dense_name: Optional[str] = None) -> Dict[str, Any]:
    """The pruned model's verify report ``results`` against ``dense``, the verify report of the weights it was
    pruned from: pruned minus dense for every metric both measured, on the same images, with paired 95 %
    intervals; ``dense_name``: its release name (default: the release pinned to those weights). ValueError unless
    ``dense`` describes exactly those weights, on the same images and eps."""
    source = ((results.get('pruning') or {}).get('source') or {}).get('sha256')
    if source is None or (dense.get('model') or {}).get('sha256') != source:
        raise ValueError(f"the dense report describes weights with sha256 {(dense.get('model') or {}).get('sha256')}, "
                         f'but this model was pruned from {source}.')
    rows = [{'metric': m, 'name': METRIC_NAMES[m], 'n': g['n'], 'subset': g['subset'], 'pruned': g['fsr'],
             'dense': g['vanilla'], 'gap': g['gap'], 'ci95': g['ci95']} for m, g in twin_gaps(results, dense).items()]
    model = dense.get('model') or {}
    return {'release': dense_name or release_of(source), 'sha256': source, 'tag': model.get('tag'), 'rows': rows,
            'rule': 'per metric, on the first test images both models were evaluated on (their verify reports); '
                    'the 95 % interval is the paired one (1.96 x the standard error of the per-image difference)'}
