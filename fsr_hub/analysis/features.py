"""The paper's Table 5: how robust each FSR feature is.

(a) **Feature swap**: the model's accuracy under attack when its final feature f~ is replaced by f+, f- or f~-
    (:func:`fsr_hub.fsr.fsr_output`), measured by the same code as ``tools/verify.py``
    (:func:`fsr_hub.evaluate.evaluate`); attacks are white-box against the swapped model.
(b) **Weighted k-NN**: each feature of an adversarial test image is classified by its k nearest neighbours
    (cosine similarity) among the same feature of the natural training images, neighbour i voting with weight
    ``exp(cos / gamma)`` for its class (the paper's Sec. 4.3 formula).

Interpretations where the paper is silent, recorded in every report: the k-NN bank holds the same kind of feature
as the query (f+ queries against f+ of natural images, and so on); a feature map becomes a vector by global
average pooling (what the classifier reads; ``pool='flatten'`` keeps every unit); queries are PGD-20 examples
(step eps/10, no random start) against the unmodified model.
"""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attack_registry import AUTOATTACK, ENSEMBLE_ATTACKS, PGD20
from ..attacks import pgd
from ..evaluate import attack_params, evaluate
from ..fsr import FEATURE_LABELS, FSR_OUTPUTS, fsr_output
from ..hardware import strict_float32
from ..inputs import check_pixels
from .common import AnalysisError, Deadline, batched, capture_tap, fsr_position, fsr_tap, prepare

__all__ = [
    'TABLE5A_ATTACKS', 'KNN_KS', 'KNN_GAMMA', 'KNN_GAMMA_SOURCE', 'feature_swap', 'fsr_features', 'weighted_knn',
    'knn_analysis',
]

#: Table 5a's columns are the Ensemble (clean, FGSM, PGD-20, PGD-100, C&W) and AutoAttack
TABLE5A_ATTACKS = ENSEMBLE_ATTACKS + (AUTOATTACK,)
KNN_KS = (5, 20)
KNN_GAMMA = 0.07
KNN_GAMMA_SOURCE = ('The FSR paper does not give gamma. 0.07 is the temperature of the weighted k-NN of Wu et al., '
                    'CVPR 2018 (non-parametric instance discrimination; the paper cites it, ref. [48], for this '
                    'formula): their tau = 0.07, also the default of their code.')


def _check_outputs(outputs: Sequence[str]) -> None:
    bad = [o for o in outputs if o not in FSR_OUTPUTS]
    if bad or not outputs:
        raise AnalysisError(f'unknown feature(s) {bad or outputs!r}; choose from {FSR_OUTPUTS}.')


def feature_swap(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str] = TABLE5A_ATTACKS,
        outputs: Sequence[str] = FSR_OUTPUTS, eps: float = 8 / 255, batch_size: int = 500, device: Any = 'cpu',
        seed: int = 0, num_classes: int = 10, position: Optional[str] = None, deadline: Optional[Deadline] = None,
        progress: bool = False,
) -> Dict[str, Any]:
    """Table 5a: accuracy (%) under ``attacks`` (and their Ensemble) of ``model`` with its FSR output at
    ``position`` (default: the last) set to each of ``outputs``. One feature is one deadline unit."""
    _check_outputs(outputs)
    check_pixels(x, 'feature swap images')
    pos = fsr_position(model, position)
    deadline = deadline or Deadline()
    model = prepare(model, device)
    accuracy: Dict[str, Dict[str, float]] = {}
    params: Dict[str, Any] = {}
    for out in outputs:
        if not deadline.allows_next():
            break
        with deadline.unit(), fsr_output(model, out, positions=[pos]):
            ev = evaluate(model, x, y, attacks=attacks, eps=eps, batch_size=batch_size, device=device, seed=seed,
                          num_classes=num_classes, masking_checks=False, progress=progress)
        accuracy[out] = {name: r['accuracy'] for name, r in ev['results'].items()}
        params.update({name: r['params'] for name, r in ev['results'].items() if 'params' in r})
    return {
        'position': pos, 'eps': eps, 'n': len(y), 'attacks': list(attacks), 'attack_params': params,
        'features': list(accuracy), 'labels': {o: FEATURE_LABELS[o] for o in accuracy}, 'accuracy': accuracy,
        'evaluation': 'fsr_hub.evaluate.evaluate (white-box against the model with the swapped feature)',
    }


@torch.no_grad()
def fsr_features(
        model: nn.Module, x: torch.Tensor, output: str = 'final', position: Optional[str] = None,
        batch_size: int = 500, device: Any = 'cpu', pool: str = 'avg',
) -> torch.Tensor:
    """Feature ``output`` (one of :data:`FSR_OUTPUTS`) at the FSR ``position`` for every image: (N, C) after
    global average pooling (``pool='avg'``) or (N, C*H*W) (``pool='flatten'``), float32 on the CPU."""
    if pool not in ('avg', 'flatten'):
        raise AnalysisError(f"pool must be 'avg' or 'flatten', got {pool!r}.")
    _check_outputs([output])
    pos = fsr_position(model, position)
    tap = fsr_tap(model, pos)

    def run(xb: torch.Tensor) -> torch.Tensor:
        with capture_tap(tap) as seen:
            model(xb)
        f = seen[-1].float()
        return f.mean(dim=(2, 3)) if pool == 'avg' else f.flatten(1)

    with fsr_output(model, output, positions=[pos]):
        return batched(run, x, batch_size, device)


@torch.no_grad()
def weighted_knn(
        bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, ks: Sequence[int] = KNN_KS,
        gamma: float = KNN_GAMMA, num_classes: int = 10, chunk: int = 1024, device: Any = 'cpu',
) -> Dict[int, torch.Tensor]:
    """Weighted k-NN predictions for each k: neighbours are the k bank vectors of highest cosine similarity to the
    query; class c scores sum_{i in N_k} exp(cos_i / gamma) [c_i = c]; the prediction is the top-scoring class."""
    if gamma <= 0 or not ks or min(ks) < 1 or max(ks) > len(bank):
        raise AnalysisError(f'k-NN needs gamma > 0 and 1 <= k <= {len(bank)} (bank size), got gamma={gamma}, ks={ks}.')
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1] or len(bank) != len(bank_labels):
        raise AnalysisError(f'k-NN bank {tuple(bank.shape)} / labels {tuple(bank_labels.shape)} / queries '
                            f'{tuple(queries.shape)} do not fit together.')
    bank_n = F.normalize(bank.to(device).float(), dim=1)
    labels = bank_labels.to(device)
    kmax = max(ks)
    preds: Dict[int, list] = {k: [] for k in ks}
    for q in queries.split(chunk):
        sim = F.normalize(q.to(device).float(), dim=1) @ bank_n.T
        top_sim, top_idx = sim.topk(kmax, dim=1)
        weights = torch.exp(top_sim / gamma)
        top_lab = labels[top_idx]
        for k in ks:
            scores = torch.zeros(len(q), num_classes, device=device).scatter_add_(1, top_lab[:, :k], weights[:, :k])
            preds[k].append(scores.argmax(dim=1).cpu())
    return {k: torch.cat(v) for k, v in preds.items()}


def knn_analysis(
        model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
        ks: Sequence[int] = KNN_KS, gamma: float = KNN_GAMMA, eps: float = 8 / 255,
        outputs: Sequence[str] = FSR_OUTPUTS, position: Optional[str] = None, pool: str = 'avg',
        batch_size: int = 500, device: Any = 'cpu', num_classes: int = 10, deadline: Optional[Deadline] = None,
) -> Dict[str, Any]:
    """Table 5b: top-1 accuracy (%) of the weighted k-NN for each feature, queries = features of PGD-20
    examples of the test images (and, for reference, of the natural test images). One feature is one unit."""
    _check_outputs(outputs)
    if len(train_y) == 0 or len(test_y) == 0:
        raise AnalysisError('k-NN needs training images (the neighbours) and test images (the queries).')
    check_pixels(train_x, 'k-NN training images')
    check_pixels(test_x, 'k-NN test images')
    pos = fsr_position(model, position)
    deadline = deadline or Deadline()
    model = prepare(model, device)
    p = attack_params(PGD20, eps)
    with strict_float32():
        x_adv = batched(lambda xb, yb: pgd(model, xb, yb, p['eps'], p['alpha'], p['steps'], p['random_start']),
                        test_x, batch_size, device, test_y)
    adversarial: Dict[str, Dict[str, float]] = {}
    natural: Dict[str, Dict[str, float]] = {}
    for out in outputs:
        if not deadline.allows_next():
            break
        with deadline.unit(), strict_float32():
            bank = fsr_features(model, train_x, out, pos, batch_size, device, pool)
            for name, queries_x, table in (('adv', x_adv, adversarial), ('nat', test_x, natural)):
                queries = fsr_features(model, queries_x, out, pos, batch_size, device, pool)
                preds = weighted_knn(bank, train_y, queries, ks, gamma, num_classes, device=device)
                table[out] = {str(k): round(100.0 * (p == test_y).float().mean().item(), 2) for k, p in preds.items()}
    return {
        'position': pos, 'ks': list(ks), 'gamma': gamma, 'gamma_source': KNN_GAMMA_SOURCE, 'pool': pool,
        'similarity': 'cosine', 'weights': 'exp(cos / gamma)', 'bank': 'same feature of the natural training images',
        'n_train': len(train_y), 'n_test': len(test_y), 'eps': eps,
        'query_attack': {'attack': PGD20, **p, 'against': 'the unmodified model (output f~)'},
        'features': list(adversarial), 'labels': {o: FEATURE_LABELS[o] for o in adversarial},
        'accuracy': adversarial, 'accuracy_natural_queries': natural,
    }
