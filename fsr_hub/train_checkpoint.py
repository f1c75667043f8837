"""What a training run writes, and resuming from it: after every epoch ``last.pt`` (the full state, for exact
resume), ``best.safetensors`` at each new best held-out accuracy and ``train_summary.json``; at the end
``final.safetensors`` and the complete summary. Each file is written atomically, so a copy taken at any moment
holds valid weights and a valid summary.
"""
import json
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json
from .schemas import CKPT_FORMAT
from .step import load_optimizer_state
from .train_config import with_epochs
from .train_run import RunState
from .train_summary import architecture, plain_config, process_records, train_summary
from .weights import save_weights

__all__ = ['resume_run', 'checkpoint_state', 'write_epoch_checkpoint', 'write_final_outputs']


def resume_run(run: RunState) -> None:
    """Resume: model, optimizer, RNG, history, best and time-budget plan from ``last.pt`` (with ``resume``)."""
    path = run.out / 'last.pt'
    if not (run.cfg.resume and path.is_file()):
        return
    ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; weights are copied over
    old = ckpt['config']
    mine = (run.cfg.model, run.cfg.objective, run.cfg.attack, run.cfg.schedule)
    theirs = (old.get('model'), old.get('objective'), old.get('attack', 'pgd'), old.get('schedule', 'piecewise'))
    if theirs != mine:
        raise CheckpointError(
            f'{path} was written by a {"/".join(map(str, theirs))} run (model/objective/attack/schedule), not '
            f'{"/".join(mine)}; use another --out or drop --resume.')
    if old.get('model_args', {}) != run.cfg.model_args:
        raise CheckpointError(
            f'{path} was written by a {old.get("model")} run with model_args {old.get("model_args", {})}, not '
            f'{run.cfg.model_args}; give the same --fsr-* flags, use another --out or drop --resume.')
    run.model.load_state_dict(ckpt['model'])
    load_optimizer_state(run.optimizer, ckpt['optimizer'])
    set_rng_state(ckpt['rng'])
    run.epoch, run.history, run.best = ckpt['epoch'], list(ckpt['history']), dict(ckpt['best'])
    run.best_sha = ckpt.get('best_sha256')
    run.prior_seconds = float(ckpt.get('wall_clock_seconds', 0.0))
    run.first_epoch = run.epoch
    run.prior_processes = list(ckpt.get('processes') or _one_earlier_process(run, ckpt))
    if ckpt.get('budget') and run.raw.time_budget is not None:  # keep the epoch count the budget fixed
        run.budget = dict(ckpt['budget'])
        run.cfg = with_epochs(run.raw, int(run.budget['epochs']))
        measured = run.budget['measured']
        run.costs.update(evaluation=measured['evaluation_seconds'], checkpoint=measured['checkpoint_seconds'])
    if run.is_main and run.cfg.progress:
        print(f'resumed from {path} at epoch {run.epoch}', file=sys.stderr)


def checkpoint_state(run: RunState) -> Dict[str, Any]:
    """What ``last.pt`` holds after the current epoch: everything :func:`resume_run` needs."""
    return {
        'format': CKPT_FORMAT, 'epoch': run.epoch + 1, 'model': run.model.state_dict(),
        'optimizer': run.optimizer.state_dict(), 'rng': rng_state(), 'best': run.best, 'best_sha256': run.best_sha,
        'history': run.history, 'config': plain_config(run.cfg), 'budget': run.budget,
        'wall_clock_seconds': run.wall_clock_seconds(), 'processes': process_records(run),
    }


def _one_earlier_process(run: RunState, ckpt: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The process record of a ``last.pt`` written before checkpoints kept them: its epochs and wall clock, with the
    device and command of the summary written beside it after the same epoch, where there is one."""
    try:
        summary = json.loads((run.out / 'train_summary.json').read_text())
    except (OSError, ValueError):  # none, or unreadable: the record only lacks the device and command
        summary = None
    summary = summary if isinstance(summary, dict) else {}
    return [{'epochs': [1, ckpt['epoch']], 'seconds': round(float(ckpt.get('wall_clock_seconds', 0.0)), 3),
             'device': (summary.get('hardware') or {}).get('device'), 'command': summary.get('command')}]


def write_epoch_checkpoint(run: RunState, metrics: Dict[str, Any], is_best: bool) -> None:
    """Checkpoint after an epoch: last.pt, best.safetensors on a new best, then the summary that names them."""
    metrics['best_epoch'] = run.best['epoch'] if run.best['epoch'] > 0 else None
    run.history.append(metrics)
    if run.is_main:
        print(json.dumps(metrics), flush=True)
        t = time.perf_counter()
        if is_best:
            run.best_sha = save_weights(run.model, run.out / 'best.safetensors', dtype=_weights_dtype(run),
                                        metadata=_weights_metadata(run, metrics['epoch']))
        save_checkpoint(checkpoint_state(run), run.out / 'last.pt')
        run.costs['checkpoint'] = time.perf_counter() - t
        write_json(run.out / 'train_summary.json', train_summary(run, final_sha=None))
    if run.world > 1:
        dist.barrier()


def write_final_outputs(run: RunState) -> Dict[str, Any]:
    """final.safetensors and the complete summary (written by rank 0, which returns it; the others return {})."""
    summary: Dict[str, Any] = {}
    if run.is_main:
        epoch = run.history[-1]['epoch'] if run.history else 0
        final_sha = save_weights(run.model, run.out / 'final.safetensors', dtype=_weights_dtype(run),
                                 metadata=_weights_metadata(run, epoch))
        summary = train_summary(run, final_sha)
        write_json(run.out / 'train_summary.json', summary)
    if run.world > 1:
        dist.barrier()
    return summary


def _weights_metadata(run: RunState, epoch: int) -> Dict[str, str]:
    return {'architecture': architecture(run), 'epoch': str(epoch)}


def _weights_dtype(run: RunState) -> Optional[torch.dtype]:
    return torch.float16 if run.cfg.fp16 else None
