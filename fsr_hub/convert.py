"""Convert checkpoints of the original FSR code (github.com/wkim97/FSR) to fsr_hub's layout.

Their layouts (key prefixes), checked against the original code's own state dicts and outputs
(``tests/official_fsr_reference.json``):
- ResNet-18: ``conv1, bn1, layer1..4.N.{conv1,bn1,conv2,bn2,shortcut.0/1}, linear``
- VGG16: ``block0..block4`` (Sequentials of conv/BN/ReLU), ``classifier.0/2/4``
- WRN-34-10: ``conv1, block1..3.layer.N.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc`` and an unused
  ``sub_block1`` (dropped)
- all: the FSR module as ``separation.sep_net.*``, ``recalibration.rec_net.*``, ``aux.0.*``, which land at
  the architecture's default FSR position.

The vanilla twins (``cifar_*``) take the same backbone layouts without the FSR keys: the common CIFAR layouts
the original backbones follow, e.g. pyautoattack's example ResNet-18 (``pyautoattack/examples/model_test.pt``).
"""
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from .checkpoint import UnreadableTorchFile, load_weights_only

__all__ = ['ConversionError', 'OFFICIAL_ARCHS', 'convert_official_state_dict', 'load_official_checkpoint']


class ConversionError(ValueError):
    """The checkpoint does not look like one of the original code's models."""


_FSR_RULES = [
    (r'separation\.sep_net\.(.*)', r'fsr.{pos}.separation.\1'),
    (r'recalibration\.rec_net\.(.*)', r'fsr.{pos}.recalibration.\1'),
    (r'aux\.0\.(.*)', r'fsr.{pos}.aux.\1'),
]

_RESNET = [
    (r'conv1\.(.*)', r'stem.0.\1'),
    (r'bn1\.(.*)', r'stem.1.\1'),
    (r'(layer[1-4]\.\d+)\.shortcut\.(.*)', r'\1.downsample.\2'),
    (r'(layer[1-4]\.\d+\.(?:conv|bn)[12]\..*)', r'\1'),
    (r'linear\.(.*)', r'fc.\1'),
]
_VGG = [
    (r'(block[0-4]\.\d+\..*)', r'\1'),
    (r'classifier\.0\.(.*)', r'pre_logits.0.\1'),
    (r'classifier\.2\.(.*)', r'pre_logits.2.\1'),
    (r'classifier\.4\.(.*)', r'fc.\1'),
]
_WRN = [
    (r'conv1\.(.*)', r'stem.0.\1'),
    (r'(block[1-3])\.layer\.(\d+)\.convShortcut\.(.*)', r'\1.\2.shortcut.\3'),
    (r'(block[1-3])\.layer\.(\d+)\.((?:bn|conv)[12]\..*)', r'\1.\2.\3'),
    (r'bn1\.(.*)', r'final_norm.0.\1'),
    (r'fc\.(.*)', r'fc.\1'),
]

# architecture -> (FSR position or None for a vanilla twin, [(their key regex, our key template)], prefixes to drop)
OFFICIAL_ARCHS: Dict[str, Tuple[Optional[str], List[Tuple[str, str]], Tuple[str, ...]]] = {
    'fsr_resnet18': ('layer4', _RESNET, ()),
    'cifar_resnet18': (None, _RESNET, ()),
    'fsr_vgg16': ('block3', _VGG, ()),
    'cifar_vgg16': (None, _VGG, ()),
    'fsr_wrn34_10': ('final_norm', _WRN, ('sub_block1.',)),  # the original WRN's sub_block1 is never called
    'cifar_wrn34_10': (None, _WRN, ('sub_block1.',)),
}


def convert_official_state_dict(state: Dict[str, torch.Tensor], arch: str) -> Dict[str, torch.Tensor]:
    """Rename an original-code state dict of ``arch`` (an fsr_hub architecture) to fsr_hub keys.

    Strips a ``module.`` (DataParallel) prefix, drops known-unused tensors, and raises
    :class:`ConversionError` listing any key no rule accounts for.
    """
    if arch not in OFFICIAL_ARCHS:
        raise ConversionError(f'No conversion rules for {arch!r}; choose from {sorted(OFFICIAL_ARCHS)}.')
    pos, rules, drop = OFFICIAL_ARCHS[arch]
    fsr_rules = [(p, t.format(pos=pos)) for p, t in _FSR_RULES] if pos is not None else []
    compiled: List[Tuple[re.Pattern, str]] = [(re.compile(pat), tpl) for pat, tpl in rules + fsr_rules]
    out, unknown = {}, []
    for key, value in state.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        if key.startswith(drop):
            continue
        for pat, tpl in compiled:
            m = pat.fullmatch(key)
            if m:
                out[m.expand(tpl)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f'{len(unknown)} keys are not in the original {arch} layout, e.g. {unknown[:5]} '
            f'(wrong --arch, or not a checkpoint of the original FSR code?).')
    return out


def load_official_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Load an original-code checkpoint safely (``weights_only=True``); unwraps ``state_dict``/``model`` keys."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'Checkpoint not found: {path}')
    try:
        obj = load_weights_only(path)
    except UnreadableTorchFile as e:
        raise ConversionError(f'{path} is not a PyTorch checkpoint that torch.load(weights_only=True) reads: {e}') \
            from None
    for key in ('state_dict', 'model', 'net'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f'{path} does not hold a state dict of tensors.')
    return obj
