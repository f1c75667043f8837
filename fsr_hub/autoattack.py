"""AutoAttack (Croce & Hein 2020) through ``pyautoattack``, a PyPI packaging of the original fra31/auto-attack code.

``version='standard'``: APGD-CE (100 iterations, 1 restart), APGD-T (100 iterations, 9 target classes),
FAB-T (100 iterations, 9 target classes), Square (5000 queries, p_init 0.8), each run on the points still
correct, exactly the original's standard parameters. ``version='rand'``: APGD-CE + APGD-DLR with EOT over 20
samples, for randomised defences. :func:`autoattack_config` reads the parameters back from the configured
objects, so the report states what actually ran.
"""
import logging
from importlib.metadata import PackageNotFoundError, version as pkg_version
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['AA_VERSIONS', 'build_autoattack', 'autoattack_config', 'run_autoattack']

AA_VERSIONS = ('standard', 'rand')


def _package() -> str:
    try:
        return f'pyautoattack {pkg_version("pyautoattack")}'
    except PackageNotFoundError:
        return 'pyautoattack (version unknown)'


def build_autoattack(model: nn.Module, eps: float, version: str = 'standard', seed: int = 0,
                     device: Any = 'cpu', overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> Any:
    """A configured ``pyautoattack.AutoAttack`` (L-inf) for ``model`` in eval mode.

    ``overrides`` ({'apgd' | 'apgd_targeted' | 'fab' | 'square': {attribute: value}}) departs from the original
    parameters (e.g. fewer Square queries in quick tests); :func:`autoattack_config` reports what was set.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f'Unknown AutoAttack version {version!r}; expected one of {AA_VERSIONS}.')
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise RuntimeError('AutoAttack needs the pyautoattack package (pip install pyautoattack==0.2.0).') from e
    aa = AutoAttack(model, norm='Linf', eps=eps, version=version, device=device, seed=seed)
    aa.logger.setLevel(logging.WARNING)
    for sub, params in (overrides or {}).items():
        obj = getattr(aa, sub, None)
        if sub not in ('apgd', 'apgd_targeted', 'fab', 'square') or obj is None:
            raise ValueError(f'Unknown AutoAttack sub-attack {sub!r} in overrides.')
        for k, v in params.items():
            if not hasattr(obj, k):
                raise ValueError(f'AutoAttack {sub} has no parameter {k!r}.')
            setattr(obj, k, v)
    return aa


def autoattack_config(aa: Any) -> Dict[str, Any]:
    """The exact configuration of every sub-attack that ``aa`` runs, read from the objects."""
    apgd, apgd_t, fab, square = aa.apgd, aa.apgd_targeted, aa.fab, aa.square
    subs: Dict[str, Dict[str, Any]] = {
        'apgd-ce': {'n_iter': apgd.n_iter, 'n_restarts': apgd.n_restarts, 'eot_iter': apgd.eot_iter,
                    'rho': apgd.thr_decr, 'loss': 'ce'},
        'apgd-dlr': {'n_iter': apgd.n_iter, 'n_restarts': apgd.n_restarts, 'eot_iter': apgd.eot_iter,
                     'rho': apgd.thr_decr, 'loss': 'dlr'},
        'apgd-t': {'n_iter': apgd_t.n_iter, 'n_restarts': apgd_t.n_restarts, 'eot_iter': apgd_t.eot_iter,
                   'n_target_classes': apgd_t.n_target_classes, 'rho': apgd_t.thr_decr, 'loss': 'dlr-targeted'},
        # the original's run_standard_evaluation sets fab.n_restarts = 1 and targeted=True for 'fab-t'
        'fab-t': {'n_iter': fab.n_iter, 'n_restarts': 1, 'n_target_classes': fab.n_target_classes,
                  'alpha_max': fab.alpha_max, 'eta': fab.eta, 'beta': fab.beta},
        'square': {'n_queries': square.n_queries, 'n_restarts': square.n_restarts, 'p_init': square.p_init,
                   'resc_schedule': square.rescale_schedule, 'loss': square.loss},
    }
    return {
        'implementation': _package() + ' (original fra31/auto-attack code)',
        'version': aa.version,
        'norm': aa.norm,
        'eps': aa.epsilon,
        'seed': aa.seed,
        'attacks': list(aa.attacks_to_run),
        'sub_attacks': {name: subs[name] for name in aa.attacks_to_run if name in subs},
    }


def run_autoattack(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = 'standard',
        batch_size: int = 500, seed: int = 0, device: Any = 'cpu',
        overrides: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Run AutoAttack on (x, y); returns (x_adv, per-example robust correctness, configuration)."""
    if model.training:
        raise ValueError('AutoAttack must run on a model in eval mode (deterministic FSR mask).')
    aa = build_autoattack(model, eps, version, seed, device, overrides)
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv, (y_adv.to(y.device) == y), autoattack_config(aa)
