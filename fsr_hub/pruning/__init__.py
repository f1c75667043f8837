"""Masking Adversarial Damage (MAD, Lee et al., CVPR 2022): adversarial pruning of a robust model into a sparse
robust checkpoint of the same architecture (exact zeros, loadable by timm like the dense weights).

:mod:`.layers` (what is pruned), :mod:`.masks` (soft masks w * softplus(m) through ``parametrize``),
:mod:`.kfac` (K-FAC factors, the saliency formula), :mod:`.saliency` (the per-batch mask optimisation),
:mod:`.prune` (selection, zeros kept while training, the sparsity report), :mod:`.finetune` and :mod:`.run`
(``tools/prune.py``'s whole run).
"""
from .kfac import KFACFactors, input_rows, saliency_matrix
from .layers import Layer, head_names, layer_matrix, prunable_layers, split_matrix
from .masks import M_MIN, M_ONE, MASK_MIN, SoftplusMask, attached_masks, inverse_softplus
from .prune import KeepPruned, apply_pruning, select, sparsity_report
from .run import ATTACKS, CRITERIA, PAPER_EPOCHS, PruneConfig, run_prune, sparse_flops
from .saliency import AttackConfig, adversarial_loss, batch_saliency, compute_saliency

__all__ = [
    'KFACFactors', 'input_rows', 'saliency_matrix', 'Layer', 'head_names', 'layer_matrix', 'prunable_layers',
    'split_matrix', 'M_MIN', 'M_ONE', 'MASK_MIN', 'SoftplusMask', 'attached_masks', 'inverse_softplus',
    'KeepPruned', 'apply_pruning', 'select', 'sparsity_report', 'ATTACKS', 'PAPER_EPOCHS', 'PruneConfig',
    'CRITERIA', 'run_prune', 'sparse_flops', 'AttackConfig', 'adversarial_loss', 'batch_saliency', 'compute_saliency',
]
