"""The ``analysis`` section of a release's ``results.json``: one entry per analysis, each the JSON that
``tools/analyze.py`` wrote for that model (numbers, parameters, model, data, hardware, timing, PNG name,
``complete``), and its figure beside results.json under :data:`PNG_NAMES`. The model card
(:mod:`fsr_hub.release`) shows an analysis only when it is complete, was measured on the released weights
(``model.sha256``) and its figure is there."""
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from ..schemas import ANALYSIS_SCHEMA
from .common import AnalysisError, PNG_NAMES

__all__ = ['ANALYSES', 'attach_sections', 'copy_figures', 'png_name']

#: analysis names: the keys of ``results['analysis']``
ANALYSES = ('eps_curve', 'feature_swap', 'knn', 'gradcam', 'blackbox', 'ib_split', 'ib_attack')


def _read(path: Union[str, Path]) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise AnalysisError(f'cannot read {path}: {e}') from e


def attach_sections(results: Mapping[str, Any], section_files: Sequence[Union[str, Path]]) -> Dict[str, Any]:
    """``results`` with ``results['analysis'][name] = section`` for each analysis JSON file (later files win).

    A section measured on other weights than the results' (sha256 of the weight file) is refused: a card must
    never show a number or plot that was not measured for its model."""
    out = dict(results)
    analysis = dict(out.get('analysis') or {})
    analysis['schema'] = ANALYSIS_SCHEMA
    want = (results.get('model') or {}).get('sha256')
    for path in section_files:
        doc = _read(path)
        name = doc.get('analysis')
        if doc.get('schema') != ANALYSIS_SCHEMA or name not in ANALYSES:
            raise AnalysisError(f'{path} is not an analysis file (schema {doc.get("schema")!r}, analysis {name!r}).')
        got = (doc.get('model') or {}).get('sha256')
        if want is not None and got != want:
            raise AnalysisError(f'{path} was measured on weights {got} but the results are for {want}.')
        analysis[name] = doc
    out['analysis'] = analysis
    return out


def copy_figures(section_files: Sequence[Union[str, Path]], folder: Union[str, Path]) -> Tuple[List[Path], List[str]]:
    """Copy the figure of each analysis file (the ``png`` it names, beside it) into ``folder`` under its release
    name (:func:`png_name`). Returns the figures copied and a note for each figure that was not found."""
    folder = Path(folder)
    copied, missing = [], []
    for path in section_files:
        doc = _read(path)
        if not doc.get('png') or doc.get('analysis') not in PNG_NAMES:
            continue
        src, dst = Path(path).parent / doc['png'], folder / png_name(doc['analysis'])
        if not src.is_file():
            missing.append(f'{path} names the figure {doc["png"]}, which is not beside it: the card shows '
                           f'{doc["analysis"]} once {dst} exists')
            continue
        if src.resolve() != dst.resolve():
            tmp = dst.with_name(dst.name + '.tmp')
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            copied.append(dst)
    return copied, missing


def png_name(name: str) -> str:
    """File name of an analysis' figure in a release folder."""
    if name not in PNG_NAMES:
        raise AnalysisError(f'analysis {name!r} has no figure; figures: {sorted(PNG_NAMES)}.')
    return PNG_NAMES[name]
