"""Black-box L-inf attacks of the paper's Table 3, on raw [0, 1] inputs, shaped like :mod:`fsr_hub.attacks`:
``attack(model, x, y, eps, ...) -> x_adv`` with ``||x_adv - x||_inf <= eps`` and ``0 <= x_adv <= 1``.

- **TI-FGSM** (Dong et al., CVPR 2019): ``x + eps * sign(W * grad)``, the input gradient convolved with a
  Gaussian kernel W, crafted on a *source* model and transferred.
- **DI-FGSM** (Xie et al., CVPR 2019), i.e. DI2-FGSM: iterative FGSM whose every gradient is taken on a randomly
  resized and padded copy of the image; also crafted on a source model.
- **NAttack** (Li et al., ICML 2019): query-based; learns a Gaussian over perturbations in tanh space with
  natural-evolution-strategy updates, using the target's output probabilities only (after the paper's Algorithm 1).

TI-FGSM and DI-FGSM run ``torchattack`` (the ``analysis`` extra). The defaults are the verify suite's, declared
in :mod:`fsr_hub.attack_registry`. Attacks do not change the model's mode: attack in eval mode.
"""
import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn as nn

from . import attack_registry as registry
from .attacks import project

__all__ = [
    'TI_FGSM', 'DI_FGSM', 'NATTACK', 'NATTACK_N', 'BLACKBOX_ATTACKS', 'BLACKBOX_PARAMS', 'ti_fgsm', 'di_fgsm',
    'nattack',
    'run_nattack', 'NAttackResult', 'nattack_loss', 'nes_update', 'require_torchattack',
]


def _defaults(name: str) -> Dict[str, Any]:
    # the declared parameters but those relative to eps (TI-FGSM's alpha: eps / steps unless given)
    return {k: v for k, v in registry.spec(name).params.items() if not isinstance(v, registry.EpsFraction)}


#: each attack's default parameters besides eps (every key is a keyword argument of the attack function)
TI_FGSM: Dict[str, Any] = _defaults(registry.TI_FGSM)
DI_FGSM: Dict[str, Any] = _defaults(registry.DI_FGSM)
NATTACK: Dict[str, Any] = _defaults(registry.NATTACK)
NATTACK_N = registry.NATTACK_N
BLACKBOX_ATTACKS = registry.BLACKBOX_ATTACKS
BLACKBOX_PARAMS = {name: _defaults(name) for name in BLACKBOX_ATTACKS}


def require_torchattack():
    """The ``torchattack`` package, or an ImportError that names the extra to install."""
    try:
        import torchattack
    except ImportError as e:
        raise ImportError("TI-FGSM / DI-FGSM need the 'torchattack' package: pip install 'fsr-hub[analysis]'.") from e
    return torchattack


@contextlib.contextmanager
def _no_param_grads(model: nn.Module) -> Iterator[None]:
    # torchattack calls loss.backward(); keep it from filling the model's .grad (only the input needs one)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _check_eps(eps: float) -> None:
    if not 0 <= eps <= 1:
        raise ValueError(f'eps must be in [0, 1] (pixels are [0, 1]), got {eps}.')


def ti_fgsm(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = TI_FGSM['steps'],
        alpha: Optional[float] = None, kern_len: int = TI_FGSM['kern_len'], n_sig: int = TI_FGSM['n_sig'],
) -> torch.Tensor:
    """TI-FGSM on ``model`` (the source): ``steps`` sign steps of size ``alpha`` (default eps / steps) along the
    input gradient convolved channel-wise with a ``kern_len`` x ``kern_len`` Gaussian of radius ``n_sig`` sigma."""
    _check_eps(eps)
    if steps < 1 or kern_len < 1 or kern_len % 2 == 0:
        raise ValueError(f'TI-FGSM needs steps >= 1 and an odd kern_len, got steps={steps}, kern_len={kern_len}.')
    ta = require_torchattack()
    attack = ta.TIFGSM(model, device=x.device, eps=eps, steps=steps, alpha=eps / steps if alpha is None else alpha,
                       decay=0.0, kern_len=kern_len, n_sig=n_sig)
    x = x.detach()
    with _no_param_grads(model), torch.enable_grad():
        x_adv = attack(x, y)
    return project(x_adv.detach(), x, eps)


def di_fgsm(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = DI_FGSM['steps'],
        alpha: float = DI_FGSM['alpha'], resize_rate: float = DI_FGSM['resize_rate'],
        diversity_prob: float = DI_FGSM['diversity_prob'],
) -> torch.Tensor:
    """DI2-FGSM on ``model`` (the source): ``steps`` sign steps of size ``alpha``; with probability
    ``diversity_prob`` each gradient is taken on the image resized to rnd x rnd (rnd uniform in
    [W, int(W * resize_rate))) and zero-padded at a random offset to int(W * resize_rate)."""
    _check_eps(eps)
    width = x.shape[-1]
    if steps < 1 or alpha < 0 or not 0 <= diversity_prob <= 1:
        raise ValueError(f'DI-FGSM needs steps >= 1, alpha >= 0, 0 <= diversity_prob <= 1, got {steps}, {alpha}, '
                         f'{diversity_prob}.')
    if resize_rate <= 1 or int(width * resize_rate) <= width:
        raise ValueError(f'DI-FGSM resize_rate {resize_rate} must enlarge {width}-pixel images by at least one pixel.')
    ta = require_torchattack()
    attack = ta.DIFGSM(model, device=x.device, eps=eps, steps=steps, alpha=alpha, decay=0.0,
                       resize_rate=resize_rate, diversity_prob=diversity_prob)
    x = x.detach()
    with _no_param_grads(model), _any_input_size(model), torch.enable_grad():
        x_adv = attack(x, y)
    return project(x_adv.detach(), x, eps)


@contextlib.contextmanager
def _any_input_size(model: nn.Module) -> Iterator[None]:
    # DI's transform enlarges the image (32 -> 35): models that check their input size (fsr_hub's, timm's ViTs)
    # expose timm's ``dynamic_img_size`` switch, which is turned on while the attack runs
    sized = [(m, m.dynamic_img_size) for m in model.modules() if isinstance(getattr(m, 'dynamic_img_size', None), bool)]
    try:
        for m, _ in sized:
            m.dynamic_img_size = True
        yield
    finally:
        for m, old in sized:
            m.dynamic_img_size = old


# ----------------------------------------------------------------------------------------------- NAttack


def nattack_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NAttack's per-example loss: max(0, log p_y - max_{c != y} log p_c), clipped at 1000 as in the authors'
    code. Equal to the logit margin, since log-softmax differences are logit differences."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float('-inf')).amax(dim=1)
    return (true - wrong).clamp(0.0, 1000.0)


def nes_update(noise: torch.Tensor, losses: torch.Tensor, lr: float, sigma: float) -> torch.Tensor:
    """The change of NAttack's mean (Algorithm 1): ``-lr / (npop * sigma) * sum_i z_i * noise_i`` with
    ``z`` the losses z-scored over the population. ``noise`` (B, npop, ...), ``losses`` (B, npop)."""
    z = (losses - losses.mean(dim=1, keepdim=True)) / (losses.std(dim=1, unbiased=False, keepdim=True) + 1e-7)
    npop = noise.shape[1]
    return -(lr / (npop * sigma)) * torch.einsum('bn,bn...->b...', z, noise)


@dataclass
class NAttackResult:
    """``x_adv``; ``success`` (the mean's image fooled the model); ``queries`` spent per image (the clean check
    included; 1 for an image the model already got wrong, which is returned unchanged)."""
    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor


def _to_box(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(w) + 0.5


@torch.no_grad()
def run_nattack(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, max_queries: int = NATTACK['max_queries'],
        npop: int = NATTACK['npop'], sigma: float = NATTACK['sigma'], lr: float = NATTACK['lr'],
        init_std: float = NATTACK['init_std'], seed: int = 0, query_batch: int = 10_000,
) -> NAttackResult:
    """NAttack (L-inf) on a batch; every image gets at most ``max_queries`` model evaluations.

    Per iteration each image still correctly classified spends 1 query on the mean's image (success check)
    and ``npop`` on the population ``proj(g(arctanh(2x - 1) + mu + sigma * e_i))``, ``g(w) = (tanh w + 1) / 2``,
    ``proj`` = clip to the eps-ball and [0, 1]; then ``mu += nes_update(...)``. Images are independent:
    batching only shares the forward passes (``query_batch`` images per forward).
    """
    _check_eps(eps)
    if npop < 2 or sigma <= 0 or lr <= 0 or max_queries < 1:
        raise ValueError(f'NAttack needs npop >= 2, sigma > 0, lr > 0, max_queries >= 1, got {npop}, {sigma}, '
                         f'{lr}, {max_queries}.')
    x = x.detach()
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat([model(chunk) for chunk in inputs.split(query_batch)])

    x_adv = x.clone()
    queries = torch.ones(len(y), dtype=torch.long, device=x.device)
    success = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    active = (forward(x).argmax(1) == y).nonzero().squeeze(1)
    base = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    mu = init_std * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    used = 1
    while len(active) and used + 1 <= max_queries:
        xa, ya = x[active], y[active]
        cand = project(_to_box(base[active] + mu[active]), xa, eps)
        fooled = forward(cand).argmax(1) != ya
        used += 1
        x_adv[active] = cand
        queries[active] = used
        success[active[fooled]] = True
        active = active[~fooled]
        if not len(active) or used + npop > max_queries:
            break
        noise = torch.randn((len(active), npop) + x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)
        pop = _to_box(base[active, None] + mu[active, None] + sigma * noise)
        pop = project(pop, x[active, None].expand_as(pop), eps)
        logits = forward(pop.flatten(0, 1))
        losses = nattack_loss(logits, y[active].repeat_interleave(npop)).view(len(active), npop)
        used += npop
        queries[active] = used
        mu[active] += nes_update(noise, losses, lr, sigma)
    return NAttackResult(x_adv=x_adv, success=success, queries=queries)


def nattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, **kwargs: Any) -> torch.Tensor:
    """NAttack's adversarial images (see :func:`run_nattack` for the parameters and the query accounting)."""
    return run_nattack(model, x, y, eps, **kwargs).x_adv
