"""The paper's Fig. 1: Grad-CAM attention maps (Selvaraju et al., ICCV 2017) of the ground-truth class on
f_nat (a naturally trained model's feature of the natural image) and on f+, f- and f~- of an adversarial example
of the FSR model, as one PNG grid with the images upscaled.

The maps come from the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``). It hooks module outputs, and f+, f-,
f~- are intermediate tensors of the FSR module, so each is read from the module's identity hook point ``tap``
while the module passes that feature on (:func:`fsr_hub.fsr.fsr_output`): the map of f+ is the Grad-CAM of the
model whose final feature is f+, the same swap as Table 5a. When FSR is the last stage (ResNet-18,
WRN-34-10) the gradient reaching f+ or f~- is the same with and without the swap (the pooled classifier is linear).
f_nat is read from the natural model's stage at the same position (e.g. ``layer4``).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..attack_registry import PGD20
from ..attacks import pgd
from ..evaluate import attack_params
from ..fsr import FEATURE_LABELS, fsr_output
from ..hardware import strict_float32
from ..inputs import check_pixels
from ..models import CIFAR10_CLASSES
from .common import AnalysisError, Deadline, fsr_position, fsr_tap, prepare, require, save_figure

__all__ = ['GRADCAM_FEATURES', 'gradcam_maps', 'gradcam_analysis', 'gradcam_figure']

#: the adversarial-example columns of Fig. 1
GRADCAM_FEATURES = ('robust', 'non_robust', 'recalibrated')


def gradcam_maps(model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Grad-CAM of class ``y`` on the output of ``layer``: (N, H, W) in [0, 1] at the input's resolution (each map
    min-max scaled, as the grad-cam package does). Leaves the model's parameter gradients empty."""
    cam_mod = require('pytorch_grad_cam')
    targets_mod = require('pytorch_grad_cam.utils.model_targets')
    device = next(model.parameters()).device
    try:
        with cam_mod.GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=x.to(device), targets=[targets_mod.ClassifierOutputTarget(int(c)) for c in y])
    finally:
        model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def gradcam_analysis(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, natural_model: Optional[nn.Module] = None,
        eps: float = 8 / 255, position: Optional[str] = None, device: Any = 'cpu',
        png: Optional[Union[str, Path]] = None, scale: int = 4, class_names: Sequence[str] = CIFAR10_CLASSES,
        deadline: Optional[Deadline] = None,
) -> Dict[str, Any]:
    """Fig. 1 for the images ``x``: PGD-20 examples x' against ``model`` (step eps/10, no random start), Grad-CAM
    of the true class on f+, f-, f~- of x' and, when ``natural_model`` is given, on its feature of x at the same
    stage. One image is one deadline unit (the figure has the rows done). Writes the grid to ``png`` (if given and
    an image was done); returns the report section (which images, predictions)."""
    check_pixels(x, 'Grad-CAM images')
    if len(y) == 0:
        raise AnalysisError('Grad-CAM needs at least one image.')
    pos = fsr_position(model, position)
    deadline = deadline or Deadline()
    model = prepare(model, device)
    layer = None
    if natural_model is not None:
        natural_model = prepare(natural_model, device)
        layer = getattr(natural_model, pos, None)
        if not isinstance(layer, nn.Module):
            raise AnalysisError(f'the natural model has no stage {pos!r} to read f_nat from.')
    tap = fsr_tap(model, pos)
    keys = (['natural'] if layer is not None else []) + list(GRADCAM_FEATURES)
    rows: Dict[str, List[np.ndarray]] = {k: [] for k in keys}
    p = attack_params(PGD20, eps)
    advs, preds_nat, preds_adv = [], [], []
    for i in range(len(y)):
        if not deadline.allows_next():
            break
        with deadline.unit(), strict_float32():
            xi, yi = x[i:i + 1].to(device), y[i:i + 1].to(device)
            xi_adv = pgd(model, xi, yi, p['eps'], p['alpha'], p['steps'], p['random_start'])
            with torch.no_grad():
                preds_nat.append(int(model(xi).argmax(1)))
                preds_adv.append(int(model(xi_adv).argmax(1)))
            if layer is not None:
                rows['natural'].append(gradcam_maps(natural_model, layer, xi, yi))
            for out in GRADCAM_FEATURES:
                with fsr_output(model, out, positions=[pos]):
                    rows[out].append(gradcam_maps(model, tap, xi_adv, yi))
            advs.append(xi_adv.cpu())
    n = len(advs)
    if png is not None and n:
        maps = {k: np.concatenate(v) for k, v in rows.items()}
        gradcam_figure(x[:n].cpu(), torch.cat(advs), y[:n].cpu(), maps, png, scale=scale, class_names=class_names)
    return {
        'position': pos, 'n': n, 'eps': eps, 'target': 'ground-truth class',
        'attack': {'attack': PGD20, **p},
        'columns': (['x', 'f_nat'] * (natural_model is not None) + ["x'"]
                    + [FEATURE_LABELS[o] for o in GRADCAM_FEATURES]),
        'labels': y[:n].tolist(), 'pred_natural': preds_nat, 'pred_adversarial': preds_adv,
        'method': 'Grad-CAM (grad-cam package, pytorch_grad_cam.GradCAM)', 'upscale': scale,
    }


def _upscale(img: np.ndarray, scale: int, smooth: bool) -> np.ndarray:
    from PIL import Image
    size = (img.shape[1] * scale, img.shape[0] * scale)
    if img.ndim == 2:
        pil = Image.fromarray(img.astype(np.float32), mode='F')
        return np.asarray(pil.resize(size, Image.BILINEAR), dtype=np.float32)
    pil = Image.fromarray((img * 255).round().astype(np.uint8))
    return np.asarray(pil.resize(size, Image.BICUBIC if smooth else Image.NEAREST), dtype=np.float32) / 255.0


def gradcam_figure(
        x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, maps: Dict[str, np.ndarray], path: Union[str, Path],
        scale: int = 4, class_names: Sequence[str] = CIFAR10_CLASSES, width_px: int = 800,
) -> Path:
    """One PNG: a row per image; columns x, Grad-CAM of f_nat on x (if in ``maps``), x', and f+, f-, f~- on x'."""
    require('matplotlib')
    from matplotlib.figure import Figure
    image_utils = require('pytorch_grad_cam.utils.image')
    cols: List[str] = (['x', 'natural'] if 'natural' in maps else ['x']) + ['x_adv'] + list(GRADCAM_FEATURES)
    titles = {'x': 'x (natural)', 'natural': r'$f_{nat}$ on x', 'x_adv': "x' (adversarial)",
              'robust': '$f^+$ on x\'', 'non_robust': '$f^-$ on x\'', 'recalibrated': r'$\tilde{f}^-$ on x' + "'"}
    n = len(y)
    inch = width_px / 100 / len(cols)
    fig = Figure(figsize=(width_px / 100, inch * n + 0.45), dpi=100)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for i in range(n):
        img = x[i].permute(1, 2, 0).numpy()
        adv = x_adv[i].permute(1, 2, 0).numpy()
        for j, col in enumerate(cols):
            ax = axes[i][j]
            base = _upscale(img if col in ('x', 'natural') else adv, scale, smooth=True).clip(0, 1)
            if col in ('x', 'x_adv'):
                shown = base
            else:
                cam = _upscale(maps[col][i], scale, smooth=True).clip(0, 1)
                shown = image_utils.show_cam_on_image(base, cam, use_rgb=True)
            ax.imshow(shown)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[col], fontsize=10)
            if j == 0:
                name = class_names[int(y[i])] if int(y[i]) < len(class_names) else str(int(y[i]))
                ax.set_ylabel(name, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.995, bottom=0.005, top=1 - 0.4 / (inch * n + 0.45), wspace=0.04, hspace=0.04)
    return save_figure(fig, path)
