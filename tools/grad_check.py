#!/usr/bin/env python3
"""One-batch gradient diagnostics of FSR training (issue 26, item 6), without training:

- ``precision``: the parameter gradients of one FGSM-RS training step in bf16 autocast vs float32, as the cosine
  per parameter group (backbone, fc, FSR separation / recalibration nets, auxiliary heads);
- ``split``: the backbone's gradient from the main cross-entropy vs from the FSR losses (norm ratio, cosine).

    python tools/grad_check.py --data DIR --weights runs/x/best.safetensors --batch-size 64 precision
    python tools/grad_check.py --data DIR --batch-size 128 split            # at initialisation (seed 0)

The adversarial batch is made once (eval mode, float32); both forwards draw the same Gumbel noise, in the same
(contiguous) memory format: ``torch.rand_like`` fills a channels_last tensor in memory order, so the same seed puts
other noise on each element there, and the gradients of a stochastic FSR mask differ (in float32 alike: separation
net cosine 0.56) for that reason alone.
"""
import argparse
import sys
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from fsr_hub.data import DatasetError, images_to_float, load_dataset
from fsr_hub.losses import fsr_aux_loss
from fsr_hub.models import create
from fsr_hub.objectives import forward_train
from fsr_hub.step import autocast
from fsr_hub.train_attacks import training_attack
from fsr_hub.weights import WeightsError, load_weights

GROUPS = {'backbone': lambda n: not n.startswith(('fsr.', 'fc')), 'fc': lambda n: n.startswith('fc'),
          'fsr separation': lambda n: '.separation.' in n, 'fsr recalibration': lambda n: '.recalibration.' in n,
          'fsr aux heads': lambda n: '.aux.' in n}


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, part: str = 'all') -> Dict[str, torch.Tensor]:
    """Parameter gradients of CE + FSR losses (``part`` 'ce' / 'fsr': one of them) in train mode, Gumbel seed 5."""
    model.train().zero_grad()
    torch.manual_seed(5)
    with autocast(x.device, amp):
        out = forward_train(model, x)
        ce = F.cross_entropy(out.logits.float(), y)
        fsr = fsr_aux_loss(out.aux, out.logits.float(), y)
    ({'ce': ce, 'fsr': fsr}.get(part, ce + fsr)).backward()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], select) -> Dict[str, float]:
    names = [n for n in a if n in b and select(n)]
    if not names:
        return {}
    # float64: a float32 dot product over millions of entries drifts by ~1e-3 (a cosine above 1)
    u, v = (torch.cat([g[n].flatten() for n in names]).double() for g in (a, b))
    return {'cos': (u @ v / (u.norm() * v.norm())).item(), 'norm_ratio': (v.norm() / u.norm()).item()}


def precision_report(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Per parameter group: cosine and norm ratio of the bf16-autocast gradient against the float32 one."""
    ref = _grads(model, x_adv, y, amp=False)
    low = _grads(model, x_adv, y, amp=True)
    return {g: r for g, sel in GROUPS.items() if (r := _compare(ref, low, sel))}


def split_report(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    """Backbone gradient of the FSR losses against the main cross-entropy's (float32): norm ratio FSR / CE, cosine."""
    return _compare(_grads(model, x_adv, y, False, 'ce'), _grads(model, x_adv, y, False, 'fsr'), GROUPS['backbone'])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('what', choices=('precision', 'split'), help='which diagnostic')
    p.add_argument('--model', default='fsr_resnet18', help='an FSR model (default: fsr_resnet18)')
    p.add_argument('--weights', default=None, help='safetensors to load (default: the seed-0 initialisation)')
    p.add_argument('--data', default='data', help='CIFAR-10 root (default: data)')
    p.add_argument('--batch-size', type=int, default=64, help='first N training images (default: 64)')
    args = p.parse_args(argv)
    try:
        if args.batch_size <= 0:
            raise ValueError(f'--batch-size must be positive, got {args.batch_size}.')
        torch.manual_seed(0)
        model = create(args.model, num_classes=10)
        if args.weights:
            load_weights(model, args.weights)
        images, labels = load_dataset('cifar10', args.data, train=True)
    except (DatasetError, WeightsError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    x, y = images_to_float(images[:args.batch_size]), labels[:args.batch_size]
    model.eval()
    torch.manual_seed(1)
    x_adv = training_attack(model, x, y, 'fgsm-rs', 8 / 255, 10 / 255, 1)
    if args.what == 'precision':
        for group, r in precision_report(model, x_adv, y).items():
            print(f'{group:18s} grad cos(bf16, fp32) {r["cos"]:.4f}  norm bf16 / fp32 {r["norm_ratio"]:.3f}')
    else:
        r = split_report(model, x_adv, y)
        print(f'backbone: FSR-loss gradient norm / CE gradient norm {r["norm_ratio"]:.2f}, cosine {r["cos"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
