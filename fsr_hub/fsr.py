"""Feature Separation and Recalibration (FSR) module, Kim et al., CVPR 2023, Sec. 3.

The module is architecture agnostic: it takes a feature map ``f`` of shape (B, C, H, W) and returns
``f~ = f+ + f~-`` of the same shape, together with the auxiliary predictions that the FSR losses
(:mod:`fsr_hub.losses`) need.

For analysis (the paper's Table 5a and Fig. 1) the module can pass on another of its features instead of
``f~``: set :attr:`FSR.output` (or use the :func:`fsr_output` context manager on a whole model) to one of
:data:`FSR_OUTPUTS`. The default, ``'final'``, is the paper's model; the option adds no parameters, so state
dicts are the same whatever it is set to.
"""
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['FSR', 'FSRArgs', 'FSRAux', 'FSR_OUTPUTS', 'FEATURE_LABELS', 'Position', 'fsr_output', 'gumbel_sigmoid_mask',
           'resolve_positions', 'three_conv_net']

#: where FSR goes: a module name, or an index into the names a model offers
Position = Union[str, int]

#: what an FSR module may pass on: ``final`` = f~ = f+ + f~- (the paper's model, default), ``robust`` = f+,
#: ``non_robust`` = f-, ``recalibrated`` = f~- (Table 5a: "replacing the final feature map f~")
FSR_OUTPUTS = ('final', 'robust', 'non_robust', 'recalibrated')
#: the paper's symbols for each output, for tables and plots
FEATURE_LABELS = {'final': 'f~ (ours)', 'robust': 'f+', 'non_robust': 'f-', 'recalibrated': 'f~-'}


@dataclass(frozen=True)
class FSRArgs:
    """The settings of an FSR module, shared by every model that inserts FSR: :class:`FSR` takes them as
    arguments, :class:`~fsr_hub.models.FSRNet` as ``fsr_*`` keywords (``fsr_tau``, ...), and
    :func:`~fsr_hub.models.add_fsr` as keywords.

    Attributes:
        tau: Gumbel softmax temperature (paper: 0.1).
        hidden: width of the Separation / Recalibration nets (paper: 64).
        separation: keep the Separation stage (False = Table 6 "w/o Sep": m = 0, all of f is recalibrated).
        recalibration: keep the Recalibration stage (False = Table 6 "w/o Rec": output is f+).
    """
    tau: float = 0.1
    hidden: int = 64
    separation: bool = True
    recalibration: bool = True

    def __post_init__(self) -> None:
        if not (self.separation or self.recalibration):
            raise ValueError('FSR needs at least one of separation / recalibration; use no FSR position instead.')
        if self.tau <= 0:
            raise ValueError(f'FSR tau must be > 0, got {self.tau}.')
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f'FSR hidden (the width of its nets) must be a positive integer, got {self.hidden!r}.')

    def build(self, channels: int, num_classes: int) -> 'FSR':
        """An FSR module with these settings for a ``channels``-channel feature map and ``num_classes`` classes."""
        return FSR(channels, num_classes, self.tau, self.hidden, self.separation, self.recalibration)

    def model_args(self) -> Dict[str, Any]:
        """The settings as model keywords: ``fsr_tau``, ``fsr_hidden``, ``fsr_separation``, ``fsr_recalibration``."""
        return {f'fsr_{k}': v for k, v in asdict(self).items()}


def resolve_positions(positions: Union[Position, Sequence[Position]], names: Sequence[str], owner: str,
                      kind: str = 'stage', listed_as: str = 'stages') -> Tuple[str, ...]:
    """FSR positions (names, or indices into ``names``) as names in the order of ``names``.

    A ValueError names ``owner`` (the model), the ``kind`` of module a position must be and the valid ones (under
    ``listed_as``) for an unknown or out-of-range position, or one given twice.
    """
    if isinstance(positions, (str, int)):
        positions = (positions,)
    listing = ', '.join(names)
    chosen: List[str] = []
    for p in positions:
        if isinstance(p, int) and not isinstance(p, bool):
            if not -len(names) <= p < len(names):
                raise ValueError(f'FSR position index {p} out of range for the {len(names)} {kind}s of {owner}: '
                                 f'{listing}.')
            p = names[p]
        if p not in names:
            raise ValueError(f'Unknown FSR position: {p!r} is not a {kind} of {owner}; {listed_as}: {listing}.')
        if p in chosen:
            raise ValueError(f'FSR position {p!r} given twice.')
        chosen.append(p)
    return tuple(sorted(chosen, key=list(names).index))


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
        tau, hidden, separation, recalibration: see :class:`FSRArgs`.
        output: which feature the module passes on, one of :data:`FSR_OUTPUTS` (analysis only; default
            ``'final'``, the paper's f~). Also settable at run time through the ``output`` attribute.

    ``tap`` is an identity module applied to the output feature: a hook point for tools that need a module
    whose output is that feature (Grad-CAM, feature extraction). It has no parameters.
    """

    def __init__(
            self,
            channels: int,
            num_classes: int,
            tau: float = FSRArgs.tau,
            hidden: int = FSRArgs.hidden,
            separation: bool = FSRArgs.separation,
            recalibration: bool = FSRArgs.recalibration,
            output: str = 'final',
    ):
        super().__init__()
        FSRArgs(tau, hidden, separation, recalibration)  # checks them
        self.channels = channels
        self.tau = tau
        self.separation = three_conv_net(channels, hidden) if separation else None
        self.recalibration = three_conv_net(channels, hidden) if recalibration else None
        self.aux = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self.tap = nn.Identity()
        self.output = output

    @property
    def output(self) -> str:
        """The feature this module passes on (one of :data:`FSR_OUTPUTS`; ``'final'`` unless set for analysis)."""
        return self._output

    @output.setter
    def output(self, value: str) -> None:
        if value not in FSR_OUTPUTS:
            raise ValueError(f'FSR output must be one of {FSR_OUTPUTS}, got {value!r}.')
        if value in ('robust', 'non_robust') and self.separation is None:
            raise ValueError(f'FSR output {value!r} needs the Separation stage (this module has none).')
        if value == 'recalibrated' and self.recalibration is None:
            raise ValueError("FSR output 'recalibrated' needs the Recalibration stage (this module has none).")
        self._output = value

    def extra_repr(self) -> str:
        return '' if self._output == 'final' else f'output={self._output!r}'

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
        if self._output != 'final':
            out = {'robust': f_pos, 'non_robust': f_neg, 'recalibrated': f_rec}[self._output]
        out = self.tap(out)
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


@contextmanager
def fsr_output(model: nn.Module, output: str, positions: Optional[Sequence[str]] = None) -> Iterator[nn.Module]:
    """Within the block, the FSR modules of ``model`` pass on ``output`` (one of :data:`FSR_OUTPUTS`) instead
    of f~; their previous settings are restored on exit, also after an error.

    ``positions`` picks FSR modules by their name in ``model.fsr`` (an fsr_hub network); default: every FSR
    module of the model. Raises ValueError for an unknown output or position, or a model without FSR.

        >>> with fsr_output(model, 'robust'):      # Table 5a: the model with f~ replaced by f+
        ...     logits = model(x)
    """
    modules: Dict[str, FSR] = {name: m for name, m in model.named_modules() if isinstance(m, FSR)}
    if isinstance(model, FSR):
        modules = {'': model}
    if not modules:
        raise ValueError(f'{type(model).__name__} has no FSR module (a vanilla twin?).')
    if positions is not None:
        by_pos = {name.rsplit('.', 1)[-1]: m for name, m in modules.items()}
        unknown = [p for p in positions if p not in by_pos]
        if unknown:
            raise ValueError(f'No FSR module at position(s) {unknown}; the model has {sorted(by_pos)}.')
        modules = {p: by_pos[p] for p in positions}
    if output not in FSR_OUTPUTS:
        raise ValueError(f'FSR output must be one of {FSR_OUTPUTS}, got {output!r}.')
    previous = {name: m.output for name, m in modules.items()}
    try:
        for m in modules.values():
            m.output = output
        yield model
    finally:
        for name, m in modules.items():
            m.output = previous[name]
