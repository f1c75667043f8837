"""Robust and non-robust feature units by Information Bottleneck (Kim, Lee and Ro, NeurIPS 2021), on any fsr_hub
model or timm CNN: the per-batch split, the predictions of the network's tail on each part, inversions of the parts,
and, on FSR models, how the split compares with FSR's own mask.

The network is cut at one ``feature_info`` stage (:func:`feature_cut`): z = that stage's output, the "tail" = the
rest of the network from z to the logits. The split (:func:`ib_split_batch`, the official code's ``find_features``)
learns per-unit noise on z under an IB objective; a unit (image, channel) is robust where its noise variance exceeds
the largest feature variance in the batch, so the split depends on the batch and the batch size is part of the result.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..fsr import FSR
from ..hardware import strict_float32
from ..inputs import check_pixels
from ..models.plug import FSRWrapper
from .common import AnalysisError, Deadline, prepare, require

__all__ = [
    'IB_STEPS', 'IB_LR', 'IB_BETA', 'KL_DELTA', 'IB_INVERSION', 'SPLIT_LABELS', 'TAIL', 'FeatureCut', 'IBSplit',
    'check_positive', 'check_count', 'check_split_args', 'frozen', 'default_stage', 'feature_cut', 'kl_term',
    'ib_split_batch', 'invert_features', 'batches', 'split_params', 'ib_split',
]

IB_STEPS = 200
IB_LR = 0.1
IB_BETA = 0.3
KL_DELTA = 1e-10
#: feature inversion: Adam steps, learning rate (on the image's logits), weight of the blur penalty
IB_INVERSION = {'steps': 200, 'lr': 0.05, 'blur': 0.3}


class _StopForward(Exception):
    """Raised by the head's hook once the cut feature is seen: the rest of the network need not run."""


def check_positive(**values: float) -> None:
    """One-line AnalysisError unless every value is a positive finite number."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float('inf'):
            raise AnalysisError(f'{name} must be a positive number, got {v!r}.')


def check_count(**values: int) -> None:
    """One-line AnalysisError unless every value is a positive integer."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise AnalysisError(f'{name} must be a positive integer, got {v!r}.')


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model's parameters stop requiring gradients inside the block (the optimisations here move features,
    noise scales or pixels, never weights); their previous flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class FeatureCut:
    """A network cut at one stage: :meth:`head` maps images to z, :meth:`tail` maps z to logits.

    Both run the whole network with a forward hook on the stage module (registered first, so it acts before the
    hook by which :func:`fsr_hub.add_fsr` applies FSR): the head stops the forward once the stage has run; the tail
    replaces the stage's output by z and runs the stages before it on one anchor image only (their output is
    discarded), which is exact for a network whose later stages read nothing but the stage's output (checked by
    :func:`feature_cut`)."""
    model: nn.Module
    stage: str
    module: nn.Module
    fsr: Optional[FSR]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        seen: List[torch.Tensor] = []

        def keep(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
            seen.append(out)
            raise _StopForward

        handle = self.module.register_forward_hook(keep, prepend=True)
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not seen:
            raise AnalysisError(f'stage {self.stage!r} did not run in the forward of {type(self.model).__name__}.')
        return seen[0]

    def tail(self, z: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Logits of z; ``anchor`` is one valid input image (the discarded run of the earlier stages)."""
        handle = self.module.register_forward_hook(lambda _m, _a, _o: z, prepend=True)
        try:
            return self.model(anchor[:1])
        finally:
            handle.remove()


def _feature_modules(model: nn.Module) -> List[str]:
    info = getattr(model, 'feature_info', None)
    names = [f.get('module') for f in info] if isinstance(info, (list, tuple)) and all(
        isinstance(f, dict) for f in info) else []
    if not names or not all(isinstance(n, str) for n in names):
        raise AnalysisError(f'{type(model).__name__} lists no feature stages (feature_info): the IB split needs a '
                            f'timm CNN or an fsr_hub model.')
    return names


def _fsr_at(model: nn.Module, stage: str) -> Optional[FSR]:
    """The FSR module that follows ``stage``, if any."""
    if isinstance(model, FSRWrapper):
        return model.fsr[stage.replace('.', '_')] if stage in model.fsr_positions else None
    fsr = getattr(model, 'fsr', None)
    return fsr[stage] if isinstance(fsr, nn.ModuleDict) and stage in fsr else None


def default_stage(model: nn.Module) -> Tuple[str, str]:
    """(stage, why): the last FSR position of an FSR model, else the last feature stage."""
    names = _feature_modules(model)
    positions = list(getattr(model, 'fsr_positions', ()) or ())
    if positions:
        return positions[-1], 'the FSR position (the feature FSR separates: its input)'
    return names[-1], 'the last feature stage (the model has no FSR module)'


def feature_cut(model: nn.Module, x: torch.Tensor, stage: Optional[str] = None) -> Tuple[FeatureCut, str]:
    """The network cut at ``stage`` (a ``feature_info`` module name; None: :func:`default_stage`) and why that
    stage. Checks on the images ``x`` (up to 8) that z is an (B, C, H, W) map with H * W >= 2 and that
    tail(head(x)) gives the network's logits.

    On an FSR model the default cut is the FSR position and z is the feature FSR separates (the stage output, FSR's
    input), so the FSR module is in the tail: tail(z) is the model's own computation, and the IB split and FSR's
    mask act on the same tensor. A cut at a stage FSR follows always includes that FSR module in the tail, whether
    the network is an fsr_hub model or a timm CNN with :func:`fsr_hub.add_fsr`. A model without FSR is cut by
    default at its last feature stage: to compare a vanilla twin with its FSR model at the same place, give the FSR
    model's position (``layer4`` for ResNet-18, ``block3`` for VGG-16, ``final_norm`` for WRN-34-10). The official
    code cut VGG-16 and WRN-28-10 at a late feature map (before the last ReLU); the stage outputs here are after it.
    """
    names = _feature_modules(model)
    why = 'given'
    if stage is None:
        stage, why = default_stage(model)
    if stage not in names:
        raise AnalysisError(f'unknown stage {stage!r}; feature_info stages of {type(model).__name__}: '
                            f'{", ".join(names)}.')
    root = model.backbone if isinstance(model, FSRWrapper) else model
    try:
        module = root.get_submodule(stage)
    except AttributeError:
        raise AnalysisError(f'feature_info names {stage!r}, which {type(root).__name__} does not have.') from None
    cut = FeatureCut(model, stage, module, _fsr_at(model, stage))
    probe = x[:8]
    with torch.no_grad():
        z = cut.head(probe)
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise AnalysisError(f'stage {stage!r} gives {got}, not a (B, C, H, W) feature map: the IB split needs a '
                                f'convolutional stage.')
        if z.shape[2] * z.shape[3] < 2:
            raise AnalysisError(f'stage {stage!r} gives a {z.shape[2]} x {z.shape[3]} map at this input size: no '
                                f'spatial variance to split by; choose an earlier stage of {", ".join(names)}.')
        full, cut_logits = model(probe), cut.tail(z, probe)
    if not torch.allclose(full, cut_logits, rtol=1e-4, atol=1e-4):
        raise AnalysisError(f'the logits of {type(model).__name__} do not depend on stage {stage!r} alone (a path '
                            f'around it?): choose another stage.')
    return cut, why


def kl_term(v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Elementwise 0.5 [v / sigma^2 + ln(sigma^2 / v) - 1] = KL(N(0, v) || N(0, sigma^2)), with :data:`KL_DELTA`
    added to sigma^2 and to v wherever they are divided by or logged."""
    s2 = sigma.square()
    return 0.5 * (v / (s2 + KL_DELTA) + torch.log((s2 + KL_DELTA) / (v + KL_DELTA)) - 1.0)


@dataclass
class IBSplit:
    """The split of one batch: z (B, C, H, W), robust units (B, C) bool, sigma and v (B, C), threshold M."""
    z: torch.Tensor
    robust: torch.Tensor
    sigma: torch.Tensor
    var: torch.Tensor
    threshold: float

    def parts(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(Z_r, Z_nr) = (z * r, z * (1 - r))."""
        r = self.robust[:, :, None, None].to(self.z.dtype)
        return self.z * r, self.z * (1.0 - r)


def ib_split_batch(cut: FeatureCut, x: torch.Tensor, y: torch.Tensor, steps: int = IB_STEPS, lr: float = IB_LR,
                   beta: float = IB_BETA, generator: Optional[torch.Generator] = None) -> IBSplit:
    """The IB split of the batch (x, y) at ``cut``; ``generator`` draws the noise.

    As the official code's ``find_features``: sigma = softplus(lambda), lambda (B, C, 1, 1) from 0; Adam (``lr``,
    ``steps``) on CE(tail(z + sigma * e), y) + ``beta`` * mean_{b,c} KL (:func:`kl_term`), where e ~ N(0, 1) is
    drawn per (image, channel) and shared over H x W (the shape of lambda, as the official code draws it), fresh each
    step, and v is the unbiased spatial variance of z per (image, channel). A unit (image, channel) is robust where
    sigma^2 > M, M = the largest v over the batch.
    """
    with torch.no_grad():
        z = cut.head(x)
    v = z.var(dim=(2, 3))
    lam = torch.zeros(*z.shape[:2], 1, 1, device=z.device, requires_grad=True)
    opt = torch.optim.Adam([lam], lr=lr)
    for _ in range(steps):
        sigma = F.softplus(lam)
        noise = torch.randn(lam.shape, generator=generator, device=z.device)
        loss = F.cross_entropy(cut.tail(z + sigma * noise, x), y) + beta * kl_term(v, sigma.flatten(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sigma = F.softplus(lam.detach()).flatten(1)
    threshold = v.max()
    return IBSplit(z=z, robust=sigma.square() > threshold, sigma=sigma, var=v, threshold=float(threshold))


def _blur(img: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(img, 3, stride=1, padding=1, count_include_pad=False)


def invert_features(
        cut: FeatureCut, targets: torch.Tensor, image_shape: Tuple[int, ...], anchor: torch.Tensor,
        steps: int = IB_INVERSION['steps'], lr: float = IB_INVERSION['lr'], blur: float = IB_INVERSION['blur'],
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Images whose feature at ``cut`` matches ``targets`` (K, C, H, W): Adam on the logits of sigmoid pixels,
    from grey plus small noise, minimising ||head(img) - t||^2 / ||t||^2 + ``blur`` * mean (img - blur3x3(img))^2
    per image. ``anchor`` (an input image) only sets the dtype and device. Returns (K, *image_shape) in [0, 1]."""
    check_count(inversion_steps=steps)
    k = len(targets)
    logits = 0.1 * torch.randn(k, *image_shape, generator=generator, device=anchor.device, dtype=anchor.dtype)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    scale = targets.flatten(1).square().sum(1).clamp_min(1e-12)
    for _ in range(steps):
        img = torch.sigmoid(logits)
        match = (cut.head(img) - targets).flatten(1).square().sum(1) / scale
        smooth = (img - _blur(img)).flatten(1).square().mean(1)
        loss = (match + blur * smooth).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.sigmoid(logits.detach())


# ----------------------------------------------------------------------------------------------------------------
# the analysis: split every batch, tally the tail's predictions and FSR's mask, invert a few features

#: how the tail is made, recorded in every section
TAIL = ('the rest of the network from the cut stage\'s output to the logits, with every FSR module after the cut; '
        'fsr_at_cut: an FSR module follows the cut stage, so z is the feature it separates, it is the first module '
        'of the tail (tail(z) is the model\'s own computation) and the split and its mask act on the same tensor')
_BINS = 20
#: the tail's inputs, as reports and plots name them
SPLIT_LABELS = {'whole': 'Z (whole feature)', 'robust': 'Z_r (IB-robust units)',
                'non_robust': 'Z_nr (IB-non-robust units)'}


class _Tally:
    """Counts over batches: the tail's correct predictions on Z, Z_r, Z_nr; robust units; FSR mask statistics."""

    def __init__(self, with_fsr: bool):
        self.n = 0
        self.correct = {'whole': 0, 'robust': 0, 'non_robust': 0}
        self.fractions: List[float] = []
        self.thresholds: List[float] = []
        self.units = [0, 0]  # robust, all
        self.mask = {'robust': [0.0, 0, [0] * _BINS], 'non_robust': [0.0, 0, [0] * _BINS]} if with_fsr else None

    @torch.no_grad()
    def add(self, cut: FeatureCut, split: IBSplit, x: torch.Tensor, y: torch.Tensor) -> None:
        self.n += len(y)
        z_r, z_nr = split.parts()
        for key, feature in (('whole', split.z), ('robust', z_r), ('non_robust', z_nr)):
            self.correct[key] += int((cut.tail(feature, x).argmax(1) == y).sum())
        robust = int(split.robust.sum())
        self.units[0] += robust
        self.units[1] += split.robust.numel()
        self.fractions.append(round(100.0 * robust / split.robust.numel(), 4))
        self.thresholds.append(split.threshold)
        if self.mask is not None:
            means = cut.fsr(split.z, need_aux=True)[1].mask.mean(dim=(2, 3))  # (B, C), eval: deterministic
            for key, units in (('robust', split.robust), ('non_robust', ~split.robust)):
                values = means[units].double()
                entry = self.mask[key]
                entry[0] += float(values.sum())
                entry[1] += values.numel()
                hist = torch.histc(values, bins=_BINS, min=0.0, max=1.0).long().tolist()
                entry[2] = [a + b for a, b in zip(entry[2], hist)]

    def overlap(self) -> Optional[Dict[str, Any]]:
        if self.mask is None:
            return None
        mean = {k: (round(v[0] / v[1], 6) if v[1] else None) for k, v in self.mask.items()}
        return {'mean_mask_ib_robust': mean['robust'], 'mean_mask_ib_non_robust': mean['non_robust'],
                'units_ib_robust': self.mask['robust'][1], 'units_ib_non_robust': self.mask['non_robust'][1],
                'histogram_bins': [round(i / _BINS, 4) for i in range(_BINS + 1)],
                'histogram_ib_robust': self.mask['robust'][2], 'histogram_ib_non_robust': self.mask['non_robust'][2],
                'mask': 'FSR mask (eval: sigmoid(S(z) / tau)) averaged over H x W per (image, channel)'}


def _inversions(cut: FeatureCut, split: IBSplit, x: torch.Tensor, k: int, steps: int,
                generator: torch.Generator) -> Dict[str, Any]:
    """Inversions of Z, Z_r, Z_nr of the first ``k`` images of a split batch, and how well each matches."""
    z_r, z_nr = split.parts()
    targets = torch.cat([split.z[:k], z_r[:k], z_nr[:k]])
    images = invert_features(cut, targets, tuple(x.shape[1:]), x, steps=steps, generator=generator)
    with torch.no_grad():
        size = targets.flatten(1).square().sum(1)
        err = ((cut.head(images) - targets).flatten(1).square().sum(1) / size.clamp_min(1e-12)).view(3, k)
    empty = (size == 0).view(3, k)  # an all-zero part (no unit of that kind): nothing to invert
    cols = ('whole', 'robust', 'non_robust')
    return {'images': images.cpu().view(3, k, *x.shape[1:]), 'originals': x[:k].cpu(), 'empty': empty.cpu(),
            'relative_error': {c: round(float(e[~m].mean()), 6) if bool((~m).any()) else None
                               for c, e, m in zip(cols, err, empty)},
            'empty_targets': {c: int(m.sum()) for c, m in zip(cols, empty)}}


def check_split_args(batch_size: int, steps: int, lr: float, beta: float) -> None:
    """One-line AnalysisError for a bad batch size, step count, learning rate or KL weight."""
    check_count(batch_size=batch_size, steps=steps)
    check_positive(lr=lr)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float('inf'):
        raise AnalysisError(f'beta (the KL weight) must be a non-negative number, got {beta!r}.')


def batches(n: int, batch_size: int) -> str:
    """The batches ``n`` images make, e.g. '2 x 100 + 1 x 37' (the split depends on each batch)."""
    full, rest = divmod(n, batch_size)
    parts = ([f'{full} x {batch_size}'] if full else []) + ([f'1 x {rest}'] if rest else [])
    return ' + '.join(parts) or 'none'


def split_params(steps: int, lr: float, beta: float) -> Dict[str, Any]:
    """How the split was made, for the report."""
    return {'steps': steps, 'lr': lr, 'beta': beta, 'optimizer': 'Adam', 'lambda_init': 0.0,
            'sigma': 'softplus(lambda), lambda (B, C, 1, 1)', 'sigma0': math.log(2.0),
            'noise': 'N(0, 1) per (image, channel), shared over H x W, fresh each step (as the official code)',
            'kl': '0.5 [v / sigma^2 + ln(sigma^2 / v) - 1], v the unbiased spatial variance, +1e-10 in both terms',
            'robust_unit': 'sigma^2 > M, M = the largest v over the batch (all images and channels)'}


def ib_split(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage: Optional[str] = None, batch_size: int = 100,
        steps: int = IB_STEPS, lr: float = IB_LR, beta: float = IB_BETA, seed: int = 0, device: Any = 'cpu',
        inversions: int = 4, inversion_steps: int = IB_INVERSION['steps'], png: Optional[Union[str, Path]] = None,
        deadline: Optional[Deadline] = None, progress: bool = False,
) -> Dict[str, Any]:
    """The IB split of every batch of (x, y) at ``stage``: accuracy (%) of the tail on Z, Z_r and Z_nr, the
    fraction (%) of robust units, on FSR models the FSR mask on IB-robust vs IB-non-robust units, and (with ``png``)
    a figure with inversions of the first ``inversions`` images. One batch, and the inversions, are deadline units.
    Deterministic under ``seed`` for the same batches on the same device."""
    check_pixels(x, 'IB split images')
    if len(y) == 0:
        raise AnalysisError('the IB split needs at least one image.')
    check_split_args(batch_size, steps, lr, beta)
    if isinstance(inversions, bool) or not isinstance(inversions, int) or inversions < 0:
        raise AnalysisError(f'inversions must be a non-negative integer, got {inversions!r}.')
    check_count(inversion_steps=inversion_steps)
    if png is not None:
        require('matplotlib')  # the figure is drawn after the split: fail before it
    deadline = deadline or Deadline()
    model = prepare(model, device)
    with strict_float32() as precision, frozen(model):
        cut, why = feature_cut(model, x[:batch_size].to(device), stage)
        generator = torch.Generator(device=device).manual_seed(seed)
        tally = _Tally(with_fsr=cut.fsr is not None and cut.fsr.separation is not None)
        first, shape = None, None
        for i in tqdm(range(0, len(y), batch_size), desc='IB split', unit='batch', disable=not progress, leave=False):
            if not deadline.allows_next():
                break
            with deadline.unit():
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                split = ib_split_batch(cut, xb, yb, steps, lr, beta, generator)
                tally.add(cut, split, xb, yb)
                first = first or (split, xb)
                shape = list(split.z.shape[1:])
        inverted = None
        if png is not None and inversions and first is not None and deadline.allows_next():
            with deadline.unit():
                inverted = _inversions(cut, first[0], first[1], min(inversions, len(first[1])), inversion_steps,
                                       generator)
    section = _split_section(cut, why, tally, shape, batch_size, seed, split_params(steps, lr, beta), inverted,
                             inversion_steps)
    section['precision'] = precision
    if png is not None and tally.n:
        from .plots import plot_ib_split
        plot_ib_split(section, inverted, png)
    return section


def _split_section(cut: FeatureCut, why: str, tally: _Tally, shape: Optional[List[int]], batch_size: int, seed: int,
                   params: Dict[str, Any], inverted: Optional[Dict[str, Any]], inversion_steps: int) -> Dict[str, Any]:
    pct = (lambda c: round(100.0 * c / tally.n, 2)) if tally.n else (lambda c: None)
    accuracy = {k: pct(c) for k, c in tally.correct.items()}
    robust = round(100.0 * tally.units[0] / tally.units[1], 4) if tally.units[1] else None
    overlap = tally.overlap()
    rows = [[f'tail accuracy (%) on {SPLIT_LABELS[k]}', accuracy[k]] for k in accuracy]
    rows.append(['IB-robust units (%)', robust])
    if overlap:
        rows += [['mean FSR mask on IB-robust units', overlap['mean_mask_ib_robust']],
                 ['mean FSR mask on IB-non-robust units', overlap['mean_mask_ib_non_robust']]]
    return {
        'stage': cut.stage, 'stage_choice': why, 'feature_shape': shape, 'fsr_at_cut': cut.fsr is not None,
        'tail': TAIL, 'n': tally.n, 'batch_size': batch_size, 'batches': batches(tally.n, batch_size), 'seed': seed,
        'split': params, 'accuracy': accuracy, 'labels': dict(SPLIT_LABELS), 'robust_fraction': robust,
        'robust_fraction_per_batch': tally.fractions, 'threshold_per_batch': tally.thresholds,
        'fsr_overlap': overlap,
        'inversion': None if inverted is None else {
            'n': len(inverted['originals']), **IB_INVERSION, 'steps': inversion_steps,
            'relative_error': inverted['relative_error'],
            'empty_targets': inverted['empty_targets'], 'start': 'sigmoid(0.1 N(0, 1)): grey plus small noise',
            'objective': '||head(img) - t||^2 / ||t||^2 + blur * mean (img - 3x3 box blur(img))^2'},
        'table': {'header': ['', 'value'], 'rows': rows},
    }
