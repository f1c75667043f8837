"""Feature Separation and Recalibration (FSR) module, Kim et al., CVPR 2023, Sec. 3.

The module is architecture agnostic: it takes a feature map ``f`` of shape (B, C, H, W) and returns
``f~ = f+ + f~-`` of the same shape, together with the auxiliary predictions that the FSR losses
(:mod:`fsr_hub.losses`) need.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['FSR', 'FSRAux', 'gumbel_sigmoid_mask', 'three_conv_net']


@dataclass
class FSRAux:
    """What one FSR position exposes for its losses (Eq. 3, 4).

    ``logits_pos``/``logits_neg`` (p+ / p-) are None when the Separation stage is disabled;
    ``logits_rec`` (p~-) is None when the Recalibration stage is disabled.
    """
    mask: torch.Tensor
    logits_pos: Optional[torch.Tensor]
    logits_neg: Optional[torch.Tensor]
    logits_rec: Optional[torch.Tensor]


def three_conv_net(in_chs: int, hidden: int = 64) -> nn.Sequential:
    """conv3x3(C->h) BN ReLU, conv3x3(h->h) BN ReLU, conv3x3(h->C); no conv bias.

    Shared shape of the Separation Net S and the Recalibration Net R (paper Sec. 4.1).
    """
    return nn.Sequential(
        nn.Conv2d(in_chs, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, in_chs, 3, padding=1, bias=False),
    )


def gumbel_sigmoid_mask(r: torch.Tensor, tau: float, stochastic: bool) -> torch.Tensor:
    """Two-class Gumbel softmax of Eq. 2 between log sigmoid(r) and log(1 - sigmoid(r)).

    softmax([log s(r) + g1, log(1 - s(r)) + g2] / tau)[0] = sigmoid((r + g1 - g2) / tau), because
    log s(r) - log(1 - s(r)) = r. The difference of two Gumbel(0, 1) samples is Logistic(0, 1),
    i.e. log(u) - log(1 - u) for u ~ U(0, 1). At inference g1 = g2 = -log(-log(0.5)) cancel, giving
    the deterministic sigmoid(r / tau). This form never evaluates log(0). It is computed in float32 and
    returned in the dtype of ``r``.
    """
    dtype = r.dtype
    r = r.float()  # under bf16 autocast, bf16 uniforms would truncate and skew the noise's tails
    if stochastic:
        u = torch.rand_like(r).clamp_(torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps)
        r = r + (torch.log(u) - torch.log1p(-u))
    return torch.sigmoid(r / tau).to(dtype)


class FSR(nn.Module):
    """Feature Separation and Recalibration at one position of a network.

    Args:
        channels: channels C of the feature map it is inserted on.
        num_classes: outputs of the auxiliary linear head h.
        tau: Gumbel softmax temperature (paper: 0.1).
        hidden: width of the Separation / Recalibration nets (paper: 64).
        separation: keep the Separation stage (False = Table 6 "w/o Sep": m = 0, all of f is recalibrated).
        recalibration: keep the Recalibration stage (False = Table 6 "w/o Rec": output is f+).
    """

    def __init__(
            self,
            channels: int,
            num_classes: int,
            tau: float = 0.1,
            hidden: int = 64,
            separation: bool = True,
            recalibration: bool = True,
    ):
        super().__init__()
        if not (separation or recalibration):
            raise ValueError('FSR needs at least one of separation / recalibration; use no FSR position instead.')
        if tau <= 0:
            raise ValueError(f'FSR tau must be > 0, got {tau}.')
        self.channels = channels
        self.tau = tau
        self.separation = three_conv_net(channels, hidden) if separation else None
        self.recalibration = three_conv_net(channels, hidden) if recalibration else None
        self.aux = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

    def reset_aux(self, num_classes: int) -> None:
        """Replace the auxiliary head h (used when the main classifier is reset)."""
        self.aux = nn.Linear(self.channels, num_classes) if num_classes > 0 else nn.Identity()

    def _head(self, f: torch.Tensor) -> torch.Tensor:
        return self.aux(f.mean(dim=(2, 3)))

    def forward(self, f: torch.Tensor, need_aux: bool = False) -> tuple[torch.Tensor, Optional[FSRAux]]:
        if self.separation is not None:
            mask = gumbel_sigmoid_mask(self.separation(f), self.tau, stochastic=self.training)
        else:
            mask = torch.zeros_like(f)
        f_pos = mask * f
        f_neg = (1.0 - mask) * f
        if self.recalibration is not None:
            f_rec = f_neg + (1.0 - mask) * self.recalibration(f_neg)
            out = f_pos + f_rec
        else:
            f_rec = None
            out = f_pos
        if not need_aux:
            return out, None
        has_sep = self.separation is not None
        aux = FSRAux(
            mask=mask,
            logits_pos=self._head(f_pos) if has_sep else None,
            logits_neg=self._head(f_neg) if has_sep else None,
            logits_rec=self._head(f_rec) if f_rec is not None else None,
        )
        return out, aux
