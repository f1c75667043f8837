"""The one base class of every fsr_hub network: a stem, named stages, FSR modules after chosen stages, a pooled
classifier head, and timm's model interface (features, intermediates, grouping, checkpointing) on top.

Architecture files build their stem and stages and hand them, as :class:`Stage` records, to
:class:`FSRNet`'s keyword-only ``__init__``, which owns everything shared: FSR insertion, the head, the
auxiliary heads, ``feature_info`` and the input checks.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier, to_2tuple
from timm.models import PretrainedCfg, checkpoint
# timm exports feature_take_indices from no public module; its own models import it from here
from timm.models._features import feature_take_indices

from ..fsr import FSRArgs, FSRAux, resolve_positions

__all__ = ['FSRNet', 'FSROutput', 'Stage', 'FSRPretrainedCfg', 'CIFAR10_CLASSES', 'cifar_cfg']

CIFAR10_CLASSES = (
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
)

_DTYPE_NAMES = {torch.float32: 'float32', torch.float16: 'float16', torch.bfloat16: 'bfloat16'}


@dataclass
class FSRPretrainedCfg(PretrainedCfg):
    """timm's PretrainedCfg plus the sha256 of the weight file, checked before any of its tensors is used."""
    sha256: Optional[str] = None


def cifar_cfg(pool_size: Tuple[int, int], **kwargs: Any) -> FSRPretrainedCfg:
    """Pretrained cfg of a 32x32 CIFAR model fed raw [0, 1] pixels (no normalisation: mean 0, std 1);
    ``pool_size``: the final feature map's size, which the global pooling reduces."""
    base = dict(
        input_size=(3, 32, 32), pool_size=pool_size, fixed_input_size=True, interpolation='bilinear', crop_pct=1.0,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=10, label_names=CIFAR10_CLASSES,
        first_conv='stem.0', license='mit',
        paper_name='Feature Separation and Recalibration for Adversarial Robustness',
        paper_ids='arXiv:2303.13846', origin_url='https://github.com/wkim97/FSR',
    )
    base.update(kwargs)
    return FSRPretrainedCfg(**base)


@dataclass
class FSROutput:
    """Output of :meth:`FSRNet.forward_train`: final logits and the auxiliary outputs per FSR position."""
    logits: torch.Tensor
    aux: Dict[str, FSRAux]


@dataclass
class Stage:
    """One named stage of a network, as an architecture file hands it to :class:`FSRNet`.

    ``channels`` and ``reduction`` describe its output (reduction: input size / output size). A stage with
    ``feature=True`` is listed in ``feature_info`` (what ``features_only`` and ``forward_intermediates`` return);
    FSR may follow any stage.
    """
    name: str
    module: nn.Module
    channels: int
    reduction: int
    feature: bool = True


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype))


def _expected_input(dtype: torch.dtype, in_chans: int, img_size: Tuple[int, int]) -> str:
    others = '/'.join(n for d, n in _DTYPE_NAMES.items() if d != dtype)
    return (f'{_dtype_name(dtype)} (or {others} under autocast), shape (B, {in_chans}, {img_size[0]}, {img_size[1]}), '
            f'raw RGB values in [0, 1]')


@torch.fx.wrap  # a leaf of FX traces: it reads metadata the tracer's proxies do not have
def check_input(x: Any, weight: torch.Tensor, in_chans: int, img_size: Tuple[int, int], any_size: bool,
                owner: str) -> None:
    """A ValueError, with a hint to the fix, unless ``x`` is an NCHW batch of ``weight``'s dtype (any float dtype
    under autocast) with ``in_chans`` channels and, unless ``any_size``, ``img_size``. Reads metadata only."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f'{owner} expects a torch.Tensor: {_expected_input(weight.dtype, in_chans, img_size)}; '
                         f'got {type(x).__name__}.')
    dtype_ok = x.dtype == weight.dtype or (x.dtype in _DTYPE_NAMES and torch.is_autocast_enabled(x.device.type))
    if dtype_ok and x.ndim == 4 and x.shape[1] == in_chans and (any_size or (x.shape[2], x.shape[3]) == img_size):
        return
    if not x.is_floating_point():
        hint = ' (integer images: convert with x.float() / 255)'
    elif x.ndim == 3:
        hint = ' (a single image: add the batch dimension with x.unsqueeze(0))'
    elif x.ndim == 4 and x.shape[-1] == in_chans and x.shape[1] != in_chans:
        hint = ' (channels last: use x.permute(0, 3, 1, 2))'
    elif not dtype_ok:
        hint = f' (convert with x.to({weight.dtype}))'
    elif x.ndim == 4 and x.shape[1] == in_chans:
        hint = ' (resize the images, or build the model with img_size=...)'
    else:
        hint = ''
    raise ValueError(f'{owner} expects {_expected_input(weight.dtype, in_chans, img_size)}; got {str(x.dtype)[6:]} '
                     f'{tuple(x.shape)}{hint}.')


def _after_load(model: 'FSRNet', incompatible_keys: Any) -> None:
    model._find_dtype_ref()


class FSRNet(nn.Module):
    """Base of every fsr_hub network.

    Args:
        stem: module applied to the input before the first stage.
        stages: the stages in forward order (see :class:`Stage`); each becomes an attribute of that name.
        num_classes: classifier outputs (also of the auxiliary FSR heads); 0 gives pooled features.
        in_chans, img_size: the input the model is built for; ``forward`` refuses any other (see ``expected_input``).
        dynamic_img_size: accept any spatial size (timm's name for it); the attribute of that name can also be set
            for a while, e.g. by an attack that enlarges its inputs (DI-FGSM).
        fsr_positions: stage names (or indices into ``stage_names``) after which an FSR module is inserted;
            empty for a vanilla network.
        fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration: the settings of the FSR modules
            (:class:`fsr_hub.fsr.FSRArgs`).
        global_pool: pooling before the classifier ('avg', 'max', ...; see timm's SelectAdaptivePool2d).
        drop_rate: dropout on the pooled (pre-logits) features, before the main classifier.
        pre_logits: module between the pooling and the classifier (e.g. VGG's MLP); identity if None.
        head_hidden_size: width of the ``pre_logits`` output (default: the last stage's channels).
    """

    def __init__(
            self,
            *,
            stem: nn.Module,
            stages: Sequence[Stage],
            num_classes: int = 10,
            in_chans: int = 3,
            img_size: Union[int, Sequence[int]] = 32,
            dynamic_img_size: bool = False,
            fsr_positions: Union[str, int, Sequence[Union[str, int]]] = (),
            fsr_tau: float = FSRArgs.tau,
            fsr_hidden: int = FSRArgs.hidden,
            fsr_separation: bool = FSRArgs.separation,
            fsr_recalibration: bool = FSRArgs.recalibration,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            pre_logits: Optional[nn.Module] = None,
            head_hidden_size: Optional[int] = None,
    ):
        super().__init__()
        if not stages:
            raise ValueError('FSRNet needs at least one stage.')
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate}.')
        self.num_classes = num_classes
        self.in_chans = in_chans
        h, w = to_2tuple(img_size)
        self.img_size = (int(h), int(w))
        self.dynamic_img_size = dynamic_img_size
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        last_reduction = stages[-1].reduction
        if any(s <= 0 or s % last_reduction for s in self.img_size):
            raise ValueError(f'img_size {self.img_size} must be positive multiples of {last_reduction} '
                             f'(the total downsampling of {type(self).__name__}).')

        self.stem = stem
        for s in stages:
            self.add_module(s.name, s.module)
        self.stage_names: Tuple[str, ...] = tuple(s.name for s in stages)
        channels = {s.name: s.channels for s in stages}
        #: timm's feature metadata: one dict per feature stage; ``module`` is the stage attribute name
        self.feature_info: List[Dict[str, Any]] = [
            dict(num_chs=s.channels, reduction=s.reduction, module=s.name) for s in stages if s.feature]
        self._feature_index = {f['module']: i for i, f in enumerate(self.feature_info)}

        self.fsr_positions = resolve_positions(fsr_positions, self.stage_names, type(self).__name__)
        self.fsr = nn.ModuleDict()
        if self.fsr_positions:  # a vanilla network leaves the FSR settings unused (and unchecked)
            fsr = FSRArgs(fsr_tau, fsr_hidden, fsr_separation, fsr_recalibration)
            for name in self.fsr_positions:
                self.fsr[name] = fsr.build(channels[name], num_classes)
        self.num_features = stages[-1].channels
        self.head_hidden_size = head_hidden_size or self.num_features
        self.global_pool, fc = create_classifier(self.head_hidden_size, num_classes, pool_type=global_pool)
        self.pre_logits = pre_logits if pre_logits is not None else nn.Identity()
        self.fc = fc
        self._find_dtype_ref()
        self.register_load_state_dict_post_hook(_after_load)  # load_state_dict(assign=True) replaces parameters

    # ------------------------------------------------------------------------------------------------------------
    # input checks: host metadata only (no device synchronisation, no graph break under torch.compile)

    def _find_dtype_ref(self) -> None:
        # the parameter whose dtype inputs must have; held in a tuple so that it is not registered a second time
        self._dtype_ref: Tuple[torch.Tensor, ...] = (next(self.parameters()),)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> 'FSRNet':
        # every dtype / device conversion (to, half, cuda, ...) of this model or a model holding it passes here; it
        # may replace the parameters, so the reference parameter of the input check is found again
        super()._apply(fn, recurse)
        self._find_dtype_ref()
        return self

    def expected_input(self) -> str:
        """The input ``forward`` accepts, in words."""
        return _expected_input(self._dtype_ref[0].dtype, self.in_chans, self.img_size)

    def _check_input(self, x: Any) -> None:
        check_input(x, self._dtype_ref[0], self.in_chans, self.img_size, self.dynamic_img_size, type(self).__name__)

    # ------------------------------------------------------------------------------------------------------------
    # forward

    def _take_indices(self, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
        """timm's feature indices (None: all; int n: the last n; negatives count from the end), with a ValueError
        naming the features for indices out of range."""
        n = len(self.feature_info)
        if indices is not None and not isinstance(indices, int) and not len(indices):
            problem = 'no index given'
        else:
            try:
                return feature_take_indices(n, indices)
            except AssertionError as e:  # timm reports it with torch._assert
                problem = str(e)
        raise ValueError(f'Feature indices {indices!r} out of range for {n} features '
                         f'{[f["module"] for f in self.feature_info]}: {problem}.')

    def _forward_stages(
            self,
            x: torch.Tensor,
            aux: Optional[Dict[str, FSRAux]] = None,
            take: Sequence[int] = (),
            last: Optional[str] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem, stages and FSR modules; returns the output and the features at the feature indices ``take``.

        A feature of a stage that FSR follows is the FSR output f~. Stops after stage ``last`` if given.
        """
        self._check_input(x)
        features: List[torch.Tensor] = []
        x = self.stem(x)
        for name in self.stage_names:
            stage = getattr(self, name)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                # the whole stage, not its blocks one by one (timm's checkpoint_seq): a forward hook on the stage,
                # such as add_fsr's on a vanilla twin, must run in the recomputation too
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if name in self.fsr:
                x, a = self.fsr[name](x, need_aux=aux is not None)
                if aux is not None:
                    aux[name] = a
            if self._feature_index.get(name, -1) in take:
                features.append(x)
            if name == last:
                break
        return x, features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw [0, 1] pixels -> unpooled features (B, num_features, h, w), through every FSR module."""
        return self._forward_stages(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.global_pool(x))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> FSROutput:
        """Logits plus, per FSR position, the mask and the auxiliary logits p+, p-, p~- for the FSR losses."""
        aux: Dict[str, FSRAux] = {}
        logits = self.forward_head(self._forward_stages(x, aux)[0])
        return FSROutput(logits=logits, aux=aux)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """timm's feature API: the stage features at ``indices`` (None: all; int n: the last n), NCHW.

        The feature of a stage that FSR follows is the FSR output f~. There is no separate final norm
        (WideResNet's final BN-ReLU is its ``final_norm`` stage), so ``norm`` changes nothing.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"Only output_fmt='NCHW' is supported, got {output_fmt!r}.")
        take, max_index = self._take_indices(indices)
        last = self.feature_info[max_index]['module'] if stop_early or intermediates_only else None
        x, features = self._forward_stages(x, take=take, last=last)
        return features if intermediates_only else (x, features)

    # ------------------------------------------------------------------------------------------------------------
    # timm model interface

    def prune_intermediate_layers(
            self,
            indices: Union[int, Sequence[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and their FSR modules) after the last feature in ``indices``; returns the absolute
        indices. With ``prune_head`` the head goes too (``num_classes`` 0, no pooling)."""
        take, max_index = self._take_indices(indices)
        stop = self.stage_names.index(self.feature_info[max_index]['module'])
        for name in self.stage_names[stop + 1:]:
            setattr(self, name, nn.Identity())
            if name in self.fsr:
                del self.fsr[name]
        self.fsr_positions = tuple(p for p in self.fsr_positions if p in self.fsr)
        if prune_head:
            self.pre_logits = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, '')
        return take

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups in forward order for timm's layer-wise tools: the stem, then each stage (by block
        unless ``coarse``; an FSR module joins the group of its stage's last block), then the head (unmatched: last)."""
        matcher: Dict[str, Any] = {'stem': r'^stem\.'}
        for name in self.stage_names:
            if coarse:
                matcher[name] = [(rf'^{name}\.', None), (rf'^fsr\.{name}\.', None)]
            else:
                matcher[name] = [(rf'^{name}\.(\d+)', None), (rf'^fsr\.{name}\.', (99999,))]
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations (FSR modules excluded)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.fc

    def classifier_names(self) -> Tuple[str, ...]:
        """Module names of every classification head: the main ``fc`` and each FSR auxiliary head."""
        return ('fc',) + tuple(f'fsr.{name}.aux' for name in self.fsr_positions)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the main classifier and every FSR auxiliary head with fresh ones of ``num_classes``."""
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        pool, self.fc = create_classifier(self.head_hidden_size, num_classes, pool_type=pool_type)
        if global_pool is not None:
            self.global_pool = pool
        for m in self.fsr.values():
            m.reset_aux(num_classes)
