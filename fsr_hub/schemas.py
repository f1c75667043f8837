"""Format identifiers of the JSON documents and checkpoints the package writes (the one home of each string),
:func:`report_runs`, the one reader of a verify report's run history, and the format of its ``not_run`` notes on a
stage's saved progress (:func:`running_note`, :func:`partial_note`, read back by :func:`stage_progress`)."""
import re
from typing import Any, Dict, List, Mapping, Optional

__all__ = ['TRAIN_SCHEMA', 'VERIFY_SCHEMA', 'CKPT_FORMAT', 'ANALYSIS_SCHEMA', 'PRUNE_SCHEMA', 'report_runs',
           'running_note', 'partial_note', 'stage_progress']

#: ``train_summary.json`` written by :func:`fsr_hub.engine.train`
TRAIN_SCHEMA = 'fsr-hub/train/v1'
#: the verify report (``results.json``) written by ``tools/verify.py``
VERIFY_SCHEMA = 'fsr-hub/verify/v1'
#: training checkpoints (``last.pt`` / ``best.pt``)
CKPT_FORMAT = 'fsr-hub/ckpt/v1'
#: one analysis (``tools/analyze.py``): a section of ``results.json``'s ``analysis`` key
ANALYSIS_SCHEMA = 'fsr-hub/analysis/v1'
#: ``prune_summary.json`` written by :func:`fsr_hub.pruning.run_prune` (``tools/prune.py``)
PRUNE_SCHEMA = 'fsr-hub/prune/v1'


def report_runs(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The runs that built ``report``, oldest first: each one's ``command`` and ``hardware``. A report of one run
    has its own; one written before runs were recorded (``commands`` only) has the hardware of its last run alone,
    the earlier ones ``None``."""
    if report.get('runs'):
        return [dict(r) for r in report['runs']]
    commands = report.get('commands') or [report.get('command', 'not recorded')]
    return [{'command': c, 'hardware': None} for c in commands[:-1]] + [
        {'command': commands[-1], 'hardware': report.get('hardware')}]


_PROGRESS_NOTE = re.compile(r'(?:^|; )(?:partial|running): (.*?)(?: \(progress saved: continue with --resume\))?$')


def running_note(progress: str) -> str:
    """A report's ``not_run`` note for a stage under way, ``progress`` saying how far it got."""
    return f'running: {progress}'


def partial_note(reason: str, progress: str) -> str:
    """A report's ``not_run`` note for a stage stopped (``reason``) with its progress saved for ``--resume``."""
    return f'{reason}; partial: {progress} (progress saved: continue with --resume)'


def stage_progress(report: Mapping[str, Any], key: str) -> Optional[str]:
    """How far stage ``key`` of a verify report got without a result (from its ``not_run`` note), else ``None``."""
    note = (report.get('not_run') or {}).get(key)
    m = _PROGRESS_NOTE.search(note) if isinstance(note, str) else None
    return m.group(1) if m else None
