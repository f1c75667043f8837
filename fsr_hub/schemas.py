"""Format identifiers of the JSON documents and checkpoints the package writes: the one home of each string."""

__all__ = ['TRAIN_SCHEMA', 'VERIFY_SCHEMA', 'CKPT_FORMAT', 'ANALYSIS_SCHEMA', 'PRUNE_SCHEMA']

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
