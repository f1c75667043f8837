"""``train_summary.json`` of a training run, and the plain-JSON forms of its config and records: what ran (model,
attack, schedule, precision, guard, time budget, the weights it started from, ADML's recipe label), what came out
(history, best and final weights), and where."""
from dataclasses import asdict, fields
from typing import Any, Dict, List, Optional

import torch

from .guard import GUARD_BATCH, GUARD_STEPS, OverfitGuard
from .hardware import cpu_bf16_isa, hardware_name
from .paper import adml_recipe
from .schedule import (
    ADML_RULE, AT_MILESTONES, CYCLIC_RULE, EVAL_RULE, NATURAL_MILESTONES, NATURAL_RECIPE, PER_ITERATION, eval_epochs,
)
from .schemas import TRAIN_SCHEMA

__all__ = ['plain_config', 'architecture_of', 'architecture', 'process_records', 'train_summary']


def plain_config(cfg: Any) -> Dict[str, Any]:
    """A resolved ``TrainConfig`` as JSON values (milestones as a list)."""
    internal = {f.name for f in fields(cfg) if f.metadata.get('internal')}
    d = {k: v for k, v in asdict(cfg).items() if k not in internal}
    d['milestones'] = list(d['milestones']) if d['milestones'] is not None else None
    return d


def architecture_of(model: Any, configured: str) -> str:
    """The architecture weights of ``model`` are for: its timm ``pretrained_cfg`` name, else ``configured``."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return str(cfg.get('architecture', configured))


def architecture(run: Any) -> str:
    """The architecture the run's weights are for (:func:`architecture_of` its model and configured name)."""
    return architecture_of(run.model, run.cfg.model)


def process_records(run: Any) -> List[Dict[str, Any]]:
    """The processes that trained the run so far, oldest first: the epochs each ran (1-based, inclusive), its wall
    clock, device and command. A run resumed from ``last.pt`` (``--resume``) has one per process."""
    done = run.history[-1]['epoch'] if run.history else 0
    mine = {'epochs': [run.first_epoch + 1, done], 'seconds': round(run.wall_clock_seconds() - run.prior_seconds, 3),
            'device': hardware_name(run.device), 'command': run.command}
    return list(run.prior_processes) + ([mine] if done > run.first_epoch else [])


def _attack(cfg: Any) -> Optional[Dict[str, Any]]:
    if cfg.objective == 'natural':
        return None
    name = 'trades-pgd (KL)' if cfg.objective == 'trades' else cfg.attack
    return {'name': name, 'eps': cfg.eps, 'alpha': cfg.alpha, 'steps': cfg.steps, 'random_start': cfg.random_start,
            'projected_to_eps_ball': cfg.attack != 'n-fgsm'}


def _schedule(run: Any) -> Dict[str, Any]:
    cfg = run.cfg
    if cfg.schedule in PER_ITERATION:
        return {'name': cfg.schedule, 'lr_max': cfg.lr, 'iterations': cfg.epochs * len(run.loader),
                'rule': CYCLIC_RULE if cfg.schedule == 'cyclic' else ADML_RULE}
    fractions = NATURAL_MILESTONES if run.natural else AT_MILESTONES
    return {'name': 'piecewise', 'lr': cfg.lr, 'milestones': list(cfg.milestones), 'lr_gamma': cfg.lr_gamma,
            'rule': 'lr x lr_gamma after each milestone epoch; default milestones: '
                    + ' and '.join(f'{f.numerator}/{f.denominator}' for f in fractions) + ' of the epochs'
                    + (f' ({NATURAL_RECIPE})' if run.natural else ' (the paper, Sec. 4.1)')}


def _precision(run: Any, eval_dtype: str) -> Dict[str, Any]:
    cfg = run.cfg
    return {'train': 'bfloat16 autocast' if cfg.amp else 'float32', 'channels_last': cfg.channels_last,
            'evaluation': eval_dtype, 'cpu_bf16_isa': cpu_bf16_isa() if run.device.type == 'cpu' else None,
            'rule': 'bf16 autocast and channels_last by default on CUDA and on CPUs with amx_bf16 or avx512_bf16; '
                    'float32 elsewhere; --amp / --channels-last override'}


def train_summary(run: Any, final_sha: Optional[str]) -> Dict[str, Any]:
    """``train_summary.json`` of the engine's run state: complete once the final weights exist; before that, the
    state after the last epoch."""
    cfg = run.cfg
    selected_by = (f'clean accuracy on the last {cfg.holdout} training images (held out, not trained on)' if run.natural
                   else f'PGD-{cfg.eval_steps} (step eps/10) accuracy on the last {cfg.holdout} training images '
                        f'(held out, not trained on)')
    eval_dtype = 'bfloat16 autocast' if cfg.eval_amp else 'float32'
    if cfg.eval_amp:
        selected_by += ' in bf16 autocast (ranks epochs only; released numbers are float32, tools/verify.py)'
    guard = run.guard or OverfitGuard(drop=cfg.guard_drop)
    return {
        'schema': TRAIN_SCHEMA,
        'complete': final_sha is not None,
        'architecture': architecture(run),
        'config': plain_config(cfg),
        'history': run.history,
        'best': {**run.best, 'selected_by': selected_by} if run.best['epoch'] > 0 else None,
        'weights': {'final': {'file': 'final.safetensors', 'sha256': final_sha} if final_sha else None,
                    'best': {'file': 'best.safetensors', 'sha256': run.best_sha} if run.best_sha else None,
                    'dtype': 'float16' if cfg.fp16 else 'float32'},
        'attack': _attack(cfg),
        'schedule': _schedule(run),
        'init_from': run.init,  # the weights the run started from (sha256 checked), None: a fresh initialisation
        'recipe': adml_recipe(plain_config(cfg)) if cfg.objective == 'adml' else None,
        'evaluation': {'every': cfg.eval_every, 'epochs': list(eval_epochs(cfg.epochs, cfg.eval_every))
                       if cfg.holdout else [], 'rule': EVAL_RULE, 'dtype': eval_dtype},
        'guard': guard.record(min(GUARD_BATCH, cfg.holdout, cfg.eval_batch_size), GUARD_STEPS) if cfg.guard else None,
        'precision': _precision(run, eval_dtype),
        'budget': run.budget,
        'epoch_seconds': [h['epoch_seconds'] for h in run.history],  # every epoch, across resumes
        'wall_clock_seconds': round(run.wall_clock_seconds(), 3),
        'hardware': {'device': hardware_name(run.device), 'world_size': run.world, 'torch': torch.__version__,
                     'step': cfg.step, 'step_fallback': run.step.fallback if run.step is not None else None},
        'command': run.command,
        'processes': process_records(run),
    }
