"""How fsr_hub models meet timm's registry: the pretrained cfgs of each architecture (derived from
:data:`fsr_hub.catalog.RELEASED`, nothing else), the builder that loads pretrained weights through timm's own
machinery after checking their sha256, and the RobustBench aliases of released weights."""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Type, Union

import timm
import torch
import torch.nn as nn
from timm.models import (
    DefaultCfg, PretrainedCfg, build_model_with_cfg, filter_pretrained_cfg, generate_default_cfgs, register_model,
    resolve_pretrained_cfg,
)

from ..catalog import DEFAULT_ORDER, PLANNED, RELEASED, hub_id, release_name, robustbench_name, split_name
from ..weights import WEIGHTS_NAME, WeightsError, check_fit, check_pretrained_file
from .base import FSRNet, FSRPretrainedCfg

__all__ = ['build_fsr_model', 'pretrained_cfgs', 'release_cfg', 'register_robustbench_alias', 'without_weights',
           'ALIASES']

#: RobustBench alias -> release name (``arch.tag``), filled by :func:`register_robustbench_alias`
ALIASES: Dict[str, str] = {}

# timm's public register_model takes only the entrypoint and reads its pretrained cfgs from the entrypoint module's
# ``default_cfgs`` (timm has no public call that registers a cfg): an alias's cfgs are put here before it is
# registered, since its entrypoint is made in this module
default_cfgs: Dict[str, DefaultCfg] = {}

#: pretrained-cfg keys that pin a weight file beside timm's source keys (which ``filter_pretrained_cfg`` drops)
_PIN_KEYS = ('state_dict', 'tag', 'sha256')


def without_weights(cfg: Mapping[str, Any], remove_null: bool = True) -> Dict[str, Any]:
    """A pretrained cfg without where its weights come from: timm's source keys (``filter_pretrained_cfg``), the
    state_dict, and the tag and sha256 that pin a file. ``remove_null`` also drops the unset fields (timm keeps
    pool_size, first_conv and classifier even when unset)."""
    cfg = filter_pretrained_cfg({k: v for k, v in cfg.items() if k not in _PIN_KEYS}, remove_source=True,
                                remove_null=False)
    return {k: v for k, v in cfg.items() if v is not None} if remove_null else cfg


def release_cfg(cfg: FSRPretrainedCfg, name: str, sha256: str) -> FSRPretrainedCfg:
    """The pretrained cfg of release ``name``: its architecture's ``cfg`` plus the hub repo, file and pinned sha256."""
    return dataclasses.replace(cfg, hf_hub_id=hub_id(name), hf_hub_filename=WEIGHTS_NAME, sha256=sha256)


def pretrained_cfgs(architecture: str, cfg: FSRPretrainedCfg) -> Dict[str, FSRPretrainedCfg]:
    """``default_cfgs`` entries of ``architecture``: one per released tag, or, while none is released, the untagged
    ``cfg`` (no weights). So ``timm.list_pretrained`` lists exactly the released weights: timm would also list an
    untagged entry once the default has weights. The first is timm's default (``pretrained=True`` without a tag):
    in :data:`DEFAULT_ORDER` first, so that it is ``python -m fsr_hub``'s release where that is this architecture's,
    then in :data:`RELEASED` order."""
    names = sorted((n for n in RELEASED if split_name(n)[0] == architecture),
                   key=lambda n: DEFAULT_ORDER.index(n) if n in DEFAULT_ORDER else len(DEFAULT_ORDER))
    return {name: release_cfg(cfg, name, RELEASED[name]) for name in names} or {architecture: cfg}


def _resolve_cfg(
        variant: str,
        pretrained_cfg: Union[None, str, Mapping[str, Any], PretrainedCfg],
        overlay: Optional[Mapping[str, Any]],
) -> FSRPretrainedCfg:
    if isinstance(pretrained_cfg, str):  # the tag of 'arch.tag'
        name = release_name(variant, pretrained_cfg)
        try:
            pretrained_cfg = timm.models.get_pretrained_cfg(name)
        except RuntimeError:
            if name in PLANNED:
                raise WeightsError(
                    f"No weights have been released for {name} yet (it is planned). Build the architecture with "
                    f"timm.create_model('{variant}'), or load your own file with "
                    f"pretrained_cfg_overlay=dict(file=..., sha256=...).") from None
            released = ', '.join(timm.list_pretrained(f'{variant}.*')) or 'none yet'
            raise ValueError(f'Unknown pretrained tag {pretrained_cfg!r} for {variant}; '
                             f'released: {released}.') from None
    elif isinstance(pretrained_cfg, Mapping):  # e.g. read from a hub repo's config.json by timm
        known = {f.name for f in dataclasses.fields(FSRPretrainedCfg)}
        unknown = sorted(set(pretrained_cfg) - known)
        if unknown:
            raise ValueError(f'pretrained_cfg for {variant} has unknown keys {unknown}.')
        pretrained_cfg = FSRPretrainedCfg(**pretrained_cfg)
    elif isinstance(pretrained_cfg, PretrainedCfg) and not isinstance(pretrained_cfg, FSRPretrainedCfg):
        pretrained_cfg = FSRPretrainedCfg(**dataclasses.asdict(pretrained_cfg))
    return resolve_pretrained_cfg(variant, pretrained_cfg, dict(overlay or {}))


def _fit_filter(cfg: FSRPretrainedCfg, path: Any) -> Callable[[Dict[str, torch.Tensor], nn.Module], Dict]:
    """timm's ``filter_fn``: a one-line WeightsError naming the file unless it fits the model exactly (the
    classifiers timm drops for another ``num_classes`` and an input conv it adapts to ``in_chans`` excepted)."""
    classifiers = (cfg.classifier,) if isinstance(cfg.classifier, str) else tuple(cfg.classifier or ())

    def check(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        skip = tuple(f'{c}.' for c in classifiers) if model.num_classes != cfg.num_classes else ()
        adapted = (f'{cfg.first_conv}.weight',) if cfg.first_conv and model.in_chans != cfg.input_size[0] else ()
        check_fit(state, model, path, skip_prefixes=skip, skip_shape=adapted)
        return state
    return check


def build_fsr_model(
        model_cls: Type[FSRNet],
        variant: str,
        pretrained: bool = False,
        feature_cfg: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
) -> nn.Module:
    """timm's ``build_model_with_cfg`` with one addition: before timm loads pretrained weights, the file is
    resolved (local file or folder, or ``hf_hub_id`` via huggingface_hub's cache, ``cache_dir`` honoured) and its
    sha256 checked; timm then loads exactly that file (the cfg's ``file``). ``features_only=True`` gives timm's
    feature getter over :meth:`FSRNet.forward_intermediates`."""
    cfg = _resolve_cfg(variant, kwargs.pop('pretrained_cfg', None), kwargs.pop('pretrained_cfg_overlay', None))
    filter_fn = None
    if pretrained:
        path = check_pretrained_file(cfg.to_dict(), kwargs.get('cache_dir'))
        cfg = dataclasses.replace(cfg, file=str(path), source=None)
        filter_fn = _fit_filter(cfg, path)
    return build_model_with_cfg(
        model_cls, variant, pretrained, pretrained_cfg=cfg, pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls='getter', **(feature_cfg or {})), **kwargs)


def register_robustbench_alias(name: str, sha256: str) -> str:
    """Register release ``name`` (``arch.tag``, weights pinned to ``sha256``) with timm under its RobustBench name
    (:func:`fsr_hub.catalog.robustbench_name`), so that RobustBench's ``load_model``, which first asks timm for
    ``<model>_<dataset>_<threat>``, finds it. Returns the alias. The registry runs this for every released name."""
    alias = robustbench_name(name)
    if timm.models.is_model(alias):
        raise ValueError(f'{alias} is already registered with timm.')
    arch, tag = split_name(name)
    default_cfgs.update(generate_default_cfgs({alias: release_cfg(timm.models.get_pretrained_cfg(arch), name, sha256)}))

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        cfg = kwargs.pop('pretrained_cfg', None) or dataclasses.replace(
            timm.models.get_pretrained_cfg(alias), architecture=arch, tag=tag)
        return timm.models.model_entrypoint(arch)(pretrained=pretrained, pretrained_cfg=cfg, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = alias
    entrypoint.__doc__ = f'{name} under its RobustBench name.'
    register_model(entrypoint)
    ALIASES[alias] = name
    return alias
