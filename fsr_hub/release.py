"""Hub release folders ``model_cards/<arch>.<tag>/``, exactly what is uploaded to the hub repo its config.json names:
``model.safetensors`` (the verified weights, fp16 allowed), ``config.json`` (timm's hub format plus ``hub_id``:
:func:`build_config`), ``results.json`` (the verify report with ``cost`` and ``paper_reference``, optionally the
``analysis`` of ``tools/analyze.py``, the ``twin`` comparison (:func:`attach_twin`) and, for a fine-tuned model,
``per_class_before`` (:func:`attach_before`)), ``per_class.png``, ``README.md`` (the model card, :mod:`fsr_hub.card`)
and ``robustbench.json`` (RobustBench's ``model_info`` record).

This module builds and updates the folders; :mod:`fsr_hub.release_checks` validates them (the verify report must
describe the released file itself: cast to fp16 before verifying to release fp16 weights) and
:mod:`fsr_hub.release_upload` pushes them to the hub.
"""
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch.nn as nn

from . import paper
from .card import PER_CLASS_METRICS, released_table, robustbench_record, write_per_class_plot
from .data import DATASETS, INPUT_SIZE
from .models import ALL_MODELS, FSRWrapper
from .models.registry import without_weights
from .release_checks import (
    CARD_NAME, CONFIG_NAME, REQUIRED_FILES, RESULTS_NAME, ROBUSTBENCH_NAME, PathLike, ReleaseError, ReleaseInfo,
    check_architecture, check_results, create_args, create_model, init_sha256, read_json, render_release_card,
    validate_release, write_atomic,
)
from .release_upload import push_release, upload_plan
from .catalog import CHECKOUT_CARDS, RELEASED, hub_id as make_hub_id, local_release, release_name
from .twins import twin_section
from .weights import WEIGHTS_NAME, sha256_file

__all__ = [
    'ReleaseError', 'ReleaseInfo', 'REQUIRED_FILES', 'build_config', 'prepare_results', 'attach_before',
    'init_report', 'assemble_release', 'write_card', 'attach_twin', 'write_robustbench', 'validate_release',
    'upload_plan', 'push_release', 'README_MARKERS', 'readme_table', 'write_readme_table',
]

# pretrained_cfg keys about other input sizes than the one verified (a timm backbone's ImageNet settings); pool_size
# stays when the verified size is the cfg's own
_OTHER_SIZE_KEYS = ('test_input_size', 'test_crop_pct', 'min_input_size', 'pool_size')


def build_config(model: nn.Module, architecture: str, tag: str, sha256: str,
                 model_args: Optional[Mapping[str, Any]] = None, org: Optional[str] = None,
                 input_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """timm hub config.json for ``model`` (an ``architecture`` built with ``model_args``) released as ``tag``
    to the hub organisation ``org`` (default :data:`fsr_hub.catalog.DEFAULT_ORG`): ``architecture``,
    ``num_classes``, ``num_features``, ``global_pool``, ``label_names``, ``model_args``, ``pretrained_cfg`` (with
    ``tag`` and ``sha256``) and ``hub_id``. ``timm.create_model('hf-hub:<hub_id>')`` reads it
    (``fsr_hub.models.create`` for a timm architecture with FSR added, which timm cannot build).

    ``model_args`` get the FSR arguments the model was built with (a timm architecture's also ``num_classes``,
    whose timm default is not this model's), so ``create(architecture, **model_args)`` rebuilds it.
    ``input_size`` (C, H, W), the images it was verified on, makes the data config raw [0, 1] pixels of that
    size (no normalisation, no crop), as the trainer and verify feed them.

    Not timm's ``save_config_for_hf``: it writes the file itself, records the factory's arguments (``in_chans``,
    ``img_size``, ``global_pool``, ...) as ``model_args`` where a release records the FSR arguments that
    ``create`` needs, and resolves a data config from the model where a release states the pixels it was verified
    on. The pretrained cfg is filtered with timm's ``filter_pretrained_cfg`` (:func:`without_weights`).
    """
    cfg = without_weights(model.pretrained_cfg)
    cfg.pop('architecture', None)
    cfg.update(tag=tag, sha256=sha256, num_classes=model.num_classes, custom_load=False)
    if input_size is not None:
        same_size = tuple(input_size) == tuple(cfg.get('input_size') or ())
        for k in _OTHER_SIZE_KEYS:
            if not (k == 'pool_size' and same_size):
                cfg.pop(k, None)
        cfg.update(input_size=tuple(input_size), crop_pct=1.0, mean=(0.0,) * input_size[0], std=(1.0,) * input_size[0])
    if cfg.get('label_names') is not None and len(cfg['label_names']) != model.num_classes:
        cfg.pop('label_names')
    args = {k: v for k, v in (model_args or {}).items() if k not in ('pretrained', 'num_classes')}
    if isinstance(model, FSRWrapper):
        args.update(model.fsr_args)
    if architecture in ALL_MODELS:
        args['fsr_positions'] = list(getattr(model, 'fsr_positions', ()))
    else:
        args = {'num_classes': model.num_classes, **args}
    config: Dict[str, Any] = dict(
        architecture=architecture, num_classes=model.num_classes, num_features=model.num_features,
        global_pool=getattr(getattr(model, 'global_pool', None), 'pool_type', 'avg') or 'avg')
    if cfg.get('label_names') is not None:
        config['label_names'] = list(cfg['label_names'])
    config['model_args'] = args
    config['pretrained_cfg'] = cfg
    config['hub_id'] = make_hub_id(release_name(architecture, tag), org)
    return json.loads(json.dumps(config))  # tuples -> lists, as read back


def attach_before(results: Mapping[str, Any], before: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Copy of ``results`` with ``per_class_before``: the per-class numbers (:data:`fsr_hub.card.PER_CLASS_METRICS`)
    of ``before``, the verify report of the weights this fine-tuned model started from (``where`` names it in
    errors). ``before`` must be a verify report of exactly those weights (``training.init_from.sha256``), on the
    same dataset and split."""
    check_results(before, where)
    init = init_sha256(results)
    if init is None:
        raise ReleaseError(f'{where}: a start model\'s report is for a fine-tuned model, and results.json records '
                           f'no training.init_from (verify it with --train-summary of the fine-tuning run).')
    if before['model']['sha256'] != init:
        raise ReleaseError(f"{where}: describes weights with sha256 {before['model']['sha256']}, but this model "
                           f"was fine-tuned from {init}.")
    for key in ('dataset', 'split'):
        if before['data'].get(key) != results['data'].get(key):
            raise ReleaseError(f"{where}: measured on {key} {before['data'].get(key)!r}, this model on "
                               f"{results['data'].get(key)!r}.")
    kept = ('accuracy', 'per_class', 'n', 'subset')
    metrics = {m: {k: e[k] for k in kept if k in e} for m, e in before['results'].items()
               if m in PER_CLASS_METRICS and isinstance(e, dict) and isinstance(e.get('per_class'), list)}
    if not metrics:
        raise ReleaseError(f'{where}: has no per-class numbers for {", ".join(PER_CLASS_METRICS)}.')
    model = {k: before['model'].get(k) for k in ('architecture', 'tag', 'sha256')}
    return {**results, 'per_class_before': {'model': model, 'data': dict(before['data']), 'results': metrics}}


def init_report(results: Mapping[str, Any]) -> Optional[Path]:
    """The results.json of the release a fine-tuned model started from, when its folder is at hand (the folder
    the train summary recorded, or the checkout's folder of the release name) and it describes exactly those
    weights; else None."""
    training = results.get('training') if isinstance(results.get('training'), dict) else {}
    init = training.get('init_from') if isinstance(training.get('init_from'), dict) else {}
    folders = [Path(init['release_folder'])] if init.get('release_folder') else []
    if init.get('release') and local_release(init['release']) is not None:
        folders.append(local_release(init['release']))
    for folder in folders:
        path = folder / RESULTS_NAME
        try:
            model = read_json(path).get('model')
        except ReleaseError:
            continue
        if isinstance(model, dict) and model.get('sha256') is not None and model['sha256'] == init.get('sha256'):
            return path
    return None


def _attach_dense(folder: Path, results: Dict[str, Any]) -> Dict[str, Any]:
    """A pruned release's ``results`` with ``pruning.versus_dense`` (:func:`fsr_hub.pruning.record.versus_dense`)
    when the release it was pruned from is at hand in the checkout; results.json is rewritten when it changes."""
    from .pruning.record import versus_dense

    pruning = results.get('pruning')
    dense_name = ((pruning or {}).get('source') or {}).get('release') if isinstance(pruning, dict) else None
    dense_folder = local_release(dense_name) if dense_name else None
    if dense_folder is None:
        return results
    try:
        section = versus_dense(results, read_json(dense_folder / RESULTS_NAME), dense_name)
    except ValueError as e:
        raise ReleaseError(f'{folder / RESULTS_NAME} against {dense_folder / RESULTS_NAME}: {e}') from None
    if pruning.get('versus_dense') != section:
        results = {**results, 'pruning': {**pruning, 'versus_dense': section}}
        write_atomic(folder / RESULTS_NAME, results)
    return results


def _attach_start_report(folder: Path, results: Dict[str, Any], before: Optional[PathLike]) -> Dict[str, Any]:
    """``results`` with the start model's per-class numbers from ``before`` (a results.json), or, when none is
    given and none is attached yet, from :func:`init_report`; results.json is rewritten when they are attached."""
    if before is None and 'per_class_before' not in results:
        before = init_report(results)
    if before is None:
        return results
    results = attach_before(results, read_json(Path(before)), str(before))
    write_atomic(folder / RESULTS_NAME, results)
    return results


def prepare_results(results: Mapping[str, Any], model: nn.Module, architecture: str, tag: str,
                    input_size: Sequence[int] = (3, 32, 32)) -> Dict[str, Any]:
    """Copy of a verify report with ``cost`` (counted on ``model`` and one image of ``input_size``, unless
    present) and ``paper_reference``."""
    from .cost import count_cost  # fvcore: only needed here

    out = json.loads(json.dumps(results))
    if 'cost' not in out:
        c = count_cost(model, input_size)
        out['cost'] = dict(
            params=c['params'], params_millions=round(c['params'] / 1e6, 2), gflops_fvcore=round(c['gflops_fvcore'], 4),
            gflops_paper_convention=round(2 * c['gflops_fvcore'], 4),
            counter=f'fvcore FlopCountAnalysis, one 1x{"x".join(map(str, input_size))} image, eval mode; paper '
                    f'convention = 2 x fvcore (a multiply-add counted as two FLOPs, as in the paper\'s Table 7)')
    ref = paper.paper_reference(architecture, tag)
    return {**out, 'paper_reference': ref.to_dict() if ref is not None else None}


def assemble_release(out_dir: PathLike, weights: PathLike, results: Mapping[str, Any],
                     model_args: Optional[Mapping[str, Any]] = None, tag: Optional[str] = None,
                     org: Optional[str] = None, overwrite: bool = False,
                     before: Optional[PathLike] = None) -> ReleaseInfo:
    """Build a release folder from a verified weight file and its verify report; returns the validated info.

    ``out_dir`` is the parent (``model_cards``): the folder ``<arch>.<tag>`` is created inside it. ``model_args``
    (the constructor arguments besides ``num_classes``, which the report's dataset gives) default to those the
    report records (``model.model_args``); given beside them, they must be equal. ``before``: the results.json of
    the weights a fine-tuned model started from (see :func:`write_card`).
    """
    check_results(results, 'results')
    arch = check_architecture(results['model']['architecture'], 'results model.architecture')
    tag = tag or results['model'].get('tag')
    if not tag:
        raise ReleaseError('results model.tag is null: pass the release tag (e.g. --tag at_cifar10).')
    weights = Path(weights)
    if not weights.is_file():
        raise ReleaseError(f'weights file not found: {weights}')
    sha = sha256_file(weights)
    if sha != results['model']['sha256']:
        raise ReleaseError(f'{weights}: sha256 {sha} differs from results model.sha256 {results["model"]["sha256"]}: '
                           f'the report does not describe this file.')
    recorded = results['model'].get('model_args')
    if model_args and recorded is not None and json.loads(json.dumps(dict(model_args))) != recorded:
        raise ReleaseError(f'model_args {dict(model_args)} differ from those the verify report records ({recorded}).')
    model_args = dict(model_args or recorded or {})
    dataset = results['data'].get('dataset')
    classes = {'num_classes': DATASETS[dataset][0]} if dataset in DATASETS else {}
    model = create_model(arch, {**classes, **model_args}, str(weights), weights, sha)
    folder = Path(out_dir) / release_name(arch, tag)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ReleaseError(f'{folder} exists and is not empty (pass overwrite=True; tools/make_card.py: --overwrite).')
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHTS_NAME)
    config = build_config(model, arch, tag, sha, model_args, org, input_size=INPUT_SIZE.get(dataset))
    write_atomic(folder / CONFIG_NAME, config)
    size = config['pretrained_cfg']['input_size']
    write_atomic(folder / RESULTS_NAME, prepare_results(results, model, arch, tag, size))
    write_card(folder, before=before)
    return validate_release(folder, pin=sha)


def write_card(folder: PathLike, org: Optional[str] = None, before: Optional[PathLike] = None) -> Path:
    """(Re)render ``README.md`` of a release folder from its results.json and config.json, with ``per_class.png``.

    ``org`` moves the release to another hub organisation (config.json ``hub_id``) first. results.json lacking
    ``cost``/``paper_reference`` is completed first (the model is built to count cost). For a fine-tuned model,
    the per-class numbers of the weights it started from are attached to results.json (:func:`attach_before`)
    from ``before`` (their results.json), else from the start release's folder when it is at hand
    (:func:`init_report`); for a pruned model, its comparison with the release it was pruned from, when at hand.
    """
    folder = Path(folder)
    config, results = read_json(folder / CONFIG_NAME), read_json(folder / RESULTS_NAME)
    check_results(results, str(folder / RESULTS_NAME))
    arch = check_architecture(config.get('architecture'), str(folder / CONFIG_NAME))
    tag = (config.get('pretrained_cfg') or {}).get('tag')
    if org is not None or 'hub_id' not in config:
        config['hub_id'] = make_hub_id(release_name(arch, tag), org)
        write_atomic(folder / CONFIG_NAME, config)
    if 'cost' not in results or 'paper_reference' not in results:
        model = create_model(arch, create_args(config, str(folder / CONFIG_NAME)), str(folder / CONFIG_NAME))
        size = (config.get('pretrained_cfg') or {}).get('input_size') or (3, 32, 32)
        results = prepare_results(results, model, arch, tag, size)
        write_atomic(folder / RESULTS_NAME, results)
    results = _attach_start_report(folder, results, before)
    results = _attach_dense(folder, results)
    write_per_class_plot(results, config, folder)
    path = folder / CARD_NAME
    write_atomic(path, render_release_card(results, config, folder))
    write_robustbench(folder)
    return path


def attach_twin(folder: PathLike, twin_folder: PathLike) -> Dict[str, Any]:
    """Compare two twin releases (FSR and vanilla, same recipe) on the same images: store the ``twin`` section
    (:func:`fsr_hub.twins.twin_section`) in both results.json files and re-render both cards."""
    folders = [Path(folder), Path(twin_folder)]
    pairs = []
    for f in folders:
        config, results = read_json(f / CONFIG_NAME), read_json(f / RESULTS_NAME)
        check_results(results, str(f / RESULTS_NAME))
        arch = check_architecture(config.get('architecture'), str(f / CONFIG_NAME))
        pairs.append((release_name(arch, (config.get('pretrained_cfg') or {}).get('tag')), results))
    try:
        section = twin_section(*pairs)
    except ValueError as e:
        raise ReleaseError(f'{folders[0]} and {folders[1]}: {e}') from None
    for f, (_, results) in zip(folders, pairs):
        write_atomic(f / RESULTS_NAME, {**results, 'twin': section})
        write_card(f)
    return section


def write_robustbench(folder: PathLike) -> Path:
    """(Re)write ``robustbench.json`` of a release folder from its results.json and config.json (a derived file,
    like the card)."""
    folder = Path(folder)
    config, results = read_json(folder / CONFIG_NAME), read_json(folder / RESULTS_NAME)
    check_results(results, str(folder / RESULTS_NAME))
    path = folder / ROBUSTBENCH_NAME
    write_atomic(path, robustbench_record(results, config))
    return path


#: the block of the project README that :func:`write_readme_table` owns
README_MARKERS = ('<!-- released:begin -->', '<!-- released:end -->')


def readme_table(cards: PathLike = CHECKOUT_CARDS, names: Sequence[str] = tuple(RELEASED)) -> str:
    """The table of released weights (:func:`fsr_hub.card.released_table`) from the release folders of ``names``
    under ``cards``."""
    folders = {n: Path(cards) / n for n in names}
    return released_table({n: (read_json(f / RESULTS_NAME), read_json(f / CONFIG_NAME)) for n, f in folders.items()})


def write_readme_table(readme: PathLike, cards: PathLike = CHECKOUT_CARDS,
                       names: Sequence[str] = tuple(RELEASED)) -> Path:
    """Rewrite the block between :data:`README_MARKERS` of ``readme`` with :func:`readme_table`."""
    path = Path(readme)
    if not path.is_file():
        raise ReleaseError(f'{path} not found: give the README whose table of released weights to rewrite.')
    text = path.read_text()
    begin, end = README_MARKERS
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReleaseError(f'{path} must hold the markers {begin} and {end} once each, in that order.')
    head, rest = text.split(begin)
    write_atomic(path, f'{head}{begin}\n{readme_table(cards, names)}\n{end}{rest.split(end, 1)[1]}')
    return path
