"""A whole MAD run: load the dense model, compute (or read) the saliencies, prune, fine-tune, evaluate, and
write the sparse weights, the saliencies and ``prune_summary.json`` into the output folder.

The paper's run is saliency over every training batch, PGD-10 examples, and 60 fine-tuning epochs. Anything
less (a subset of batches, fewer epochs, a subset of images, the FGSM-RS attack) is the reduced CPU mode, and
the summary says so, with every reduction listed.
"""
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open

from ..checkpoint import write_json
from ..cost import module_flops
from ..data import DATASETS, INPUT_SIZE, DeviceLoader, load_dataset, split_holdout
from ..hardware import hardware_name, resolve_device
from ..objectives import ObjectiveConfig
from ..schemas import PRUNE_SCHEMA
from ..sources import load_model
from ..weights import read_weights, save_weights, sha256_file
from .finetune import evaluate, finetune, mad_milestones
from .layers import Layer, layer_matrix, prunable_layers
from .masks import M_MIN, M_ONE, MASK_MIN
from .prune import apply_pruning, check_saliency, select, sparsity_report
from .saliency import MASK_LR, MASK_STEPS, AttackConfig, compute_saliency

__all__ = ['ATTACKS', 'CRITERIA', 'PAPER_EPOCHS', 'PruneConfig', 'run_prune', 'sparse_flops']

ATTACKS = ('pgd', 'fgsm-rs')
#: mad: MAD's saliency; magnitude: |w|, the baseline MAD is compared with (same selection, fine-tuning, evaluation)
CRITERIA = ('mad', 'magnitude')
#: the ``kind`` in the metadata of the saliency files this module writes
SALIENCY_KIND = 'mad_saliency'
PAPER_EPOCHS = 60


@dataclass
class PruneConfig:
    """Every knob of a MAD run; the defaults are MAD's recipe (eps 8/255 as everywhere in this package)."""
    model: str
    weights: str
    data: str
    out: str
    model_args: Dict[str, Any] = field(default_factory=dict)
    dataset: str = 'cifar10'
    sparsity: float = 0.9
    criterion: str = 'mad'
    saliency_batches: Optional[int] = None  # None: every training batch
    saliency: Optional[str] = None  # saliency.safetensors of an earlier run: skip the computation
    epochs: int = PAPER_EPOCHS
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    beta: float = 0.5
    attack: str = 'pgd'
    eps: float = 8 / 255
    holdout: int = 1000  # the last N training images are never used (the released models held them out)
    max_train_images: Optional[int] = None
    eval_images: int = 1000  # first N test images, dense and pruned; 0: no evaluation
    eval_steps: int = 20
    eval_batch_size: int = 200
    seed: int = 0
    device: Optional[str] = None
    amp: Optional[bool] = None  # bf16 autocast while fine-tuning; None: on for CUDA
    progress: bool = True

    def check(self) -> None:
        """ValueError (one line, naming the field) for any value a run cannot use."""
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f'sparsity must be in (0, 1), e.g. 0.9, got {self.sparsity}.')
        if self.dataset not in DATASETS:
            raise ValueError(f'Unknown dataset {self.dataset!r}; expected one of {sorted(DATASETS)}.')
        if self.criterion not in CRITERIA:
            raise ValueError(f'Unknown criterion {self.criterion!r}; expected one of {CRITERIA}.')
        if self.criterion == 'magnitude':
            for name in ('saliency', 'saliency_batches'):
                if getattr(self, name) is not None:
                    raise ValueError(f'{name} has no effect with criterion magnitude (no saliency is computed).')
        if self.attack not in ATTACKS:
            raise ValueError(f'Unknown attack {self.attack!r}; expected one of {ATTACKS}.')
        for name in ('batch_size', 'eval_batch_size', 'eval_steps'):
            if getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
        for name in ('saliency_batches', 'max_train_images'):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f'{name} must be positive (omit it for all), got {getattr(self, name)}.')
        for name in ('epochs', 'holdout', 'eval_images', 'eps', 'lr', 'momentum', 'weight_decay', 'beta'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')
        if not Path(self.weights).is_file():
            raise ValueError(f'weights file not found: {self.weights}')
        if self.saliency is not None and not Path(self.saliency).is_file():
            raise ValueError(f'saliency file not found: {self.saliency}')
        if self.saliency is not None and self.saliency_batches is not None:
            raise ValueError('saliency_batches has no effect with a saliency file: give one of them.')

    def attack_config(self) -> AttackConfig:
        """PGD-10 with MAD's step 2.3 eps / 10, or FGSM-RS (one step of 1.25 eps); both with a random start."""
        if self.attack == 'fgsm-rs':
            return AttackConfig(self.eps, 1.25 * self.eps, 1)
        return AttackConfig(self.eps, 2.3 * self.eps / 10, 10)

    def _common_reductions(self) -> List[str]:
        out = []
        if self.max_train_images is not None:
            out.append(f'the first {self.max_train_images} training images only')
        if self.attack == 'fgsm-rs':
            out.append('FGSM-RS adversarial examples (one step of 1.25 eps) instead of PGD-10')
        return out

    def saliency_reductions(self) -> List[str]:
        """How computing the saliency with this config differs from MAD's (empty: every batch, PGD-10)."""
        head = [f'saliency on the first {self.saliency_batches} training batches only'] if self.saliency_batches else []
        return head + self._common_reductions()

    def finetune_reductions(self) -> List[str]:
        """How the fine-tuning differs from MAD's (empty: 60 epochs of PGD-10 on every training image)."""
        if self.epochs == 0:
            return ['no fine-tuning (--epochs 0)']
        head = [f'{self.epochs} fine-tuning epochs instead of {PAPER_EPOCHS}'] if self.epochs < PAPER_EPOCHS else []
        return head + self._common_reductions()


def sparse_flops(model: torch.nn.Module, layers: Mapping[str, Layer], input_size: Sequence[int]) -> Dict[str, Any]:
    """fvcore multiply-adds of one image, dense and with the multiply-adds of zero weights skipped."""
    per_module = module_flops(model, input_size)
    dense = per_module['']
    skipped = sum(per_module.get(n, 0) * float((layer.module.weight == 0).float().mean())
                  for n, layer in layers.items())
    return {'gflops_fvcore_dense': round(dense / 1e9, 6), 'gflops_fvcore_sparse': round((dense - skipped) / 1e9, 6),
            'gflops_paper_convention_dense': round(2 * dense / 1e9, 6),
            'gflops_paper_convention_sparse': round(2 * (dense - skipped) / 1e9, 6),
            'rule': 'fvcore multiply-adds of one eval forward; sparse: each conv / linear layer counted at the '
                    'density of its weight (the multiply-adds of zero weights skipped; bias adds are not counted '
                    'by fvcore); paper convention = 2x'}


def _data(cfg: PruneConfig, device: torch.device) -> Tuple[DeviceLoader, Optional[DeviceLoader], int]:
    x, y = load_dataset(cfg.dataset, cfg.data, train=True)
    (x, y), _ = split_holdout(x, y, cfg.holdout)
    if cfg.max_train_images is not None:
        x, y = x[:cfg.max_train_images], y[:cfg.max_train_images]
    if len(y) < cfg.batch_size:
        raise ValueError(f'{len(y)} training images are fewer than one batch of {cfg.batch_size}.')
    train = DeviceLoader(x, y, cfg.batch_size, device, shuffle=True, augment=DATASETS[cfg.dataset][1],
                         drop_last=True, seed=cfg.seed)
    test = None
    if cfg.eval_images:
        tx, ty = load_dataset(cfg.dataset, cfg.data, train=False)
        test = DeviceLoader(tx[:cfg.eval_images], ty[:cfg.eval_images], cfg.eval_batch_size, device)
    return train, test, len(y)


def _saliency_metadata(path: str) -> Dict[str, str]:
    try:
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f'{path} is not a readable safetensors file ({e}).') from None
    if meta.get('kind') != SALIENCY_KIND:
        raise ValueError(f'{path} is not a saliency file written by tools/prune.py (no kind={SALIENCY_KIND}).')
    return meta


def _saliency(
        cfg: PruneConfig, model: torch.nn.Module, layers: Mapping[str, Layer], train: DeviceLoader, out: Path,
        weights_sha256: str,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The saliencies (computed and written to OUT, or read from ``cfg.saliency``) and their record, whose
    ``reductions`` list what a read file's computation left out."""
    if cfg.criterion == 'magnitude':
        sal = {n: layer_matrix(layer.module.weight, layer.module.bias).detach().abs().float().cpu()
               for n, layer in layers.items()}
        return sal, {'computed': True, 'criterion': 'magnitude', 'seconds': 0.0, 'reductions': [],
                     'rule': '|w_ij| of the dense weights, bias column included (no attack, no data)'}
    if cfg.saliency is not None:
        meta = _saliency_metadata(cfg.saliency)
        if meta.get('weights_sha256') != weights_sha256:
            raise ValueError(f'{cfg.saliency} was computed for weights with sha256 {meta.get("weights_sha256")}, not '
                             f'{cfg.weights} ({weights_sha256}).')
        sal = read_weights(cfg.saliency)
        check_saliency(sal, layers, cfg.saliency)
        reductions = [f'saliency read from {cfg.saliency}: {r}' for r in json.loads(meta.get('reductions', '[]'))]
        return sal, {'computed': False, 'file': cfg.saliency, 'sha256': sha256_file(cfg.saliency),
                     'recorded': {k: v for k, v in meta.items() if k != 'format'}, 'reductions': reductions}
    train.set_epoch(0)
    sal, stats = compute_saliency(model, layers, train, cfg.attack_config(), cfg.saliency_batches, cfg.progress)
    reductions = cfg.saliency_reductions()
    meta = {'kind': SALIENCY_KIND, 'model': cfg.model, 'weights_sha256': weights_sha256,
            'batches': str(stats['batches']), 'batch_size': str(cfg.batch_size), 'attack': cfg.attack,
            'reductions': json.dumps(reductions)}
    sha = save_weights(sal, out / 'saliency.safetensors', metadata=meta)
    return sal, {'computed': True, **stats, 'batch_size': cfg.batch_size, 'file': 'saliency.safetensors',
                 'sha256': sha, 'reductions': reductions}


def _method(cfg: PruneConfig) -> Dict[str, Any]:
    a = cfg.attack_config()
    if cfg.criterion == 'magnitude':
        ranking = {'baseline': 'global magnitude pruning, not MAD: the weights of smallest |w| are removed, with '
                               'MAD\'s selection rule, fine-tuning and evaluation',
                   'saliency': '|w_ij| of the dense weights (bias column included)'}
    else:
        ranking = {
            'masks': f'w * softplus(m) on every conv / linear weight and bias, m0 = ln(e - 1) = {M_ONE:.6f}; '
                     f'softplus(m) clamped to [{MASK_MIN:g}, 1] (m in [{M_MIN:.5f}, {M_ONE:.6f}])',
            'mask_optimisation': f'{MASK_STEPS} Adam steps, lr {MASK_LR}, fresh state per batch, masks only, '
                                 f'eval mode',
            'loss': 'mean cross-entropy of the adversarial logits, plus the FSR losses (Eq. 5, lambdas 1) for FSR '
                    'models',
            'saliency': 'S_ij = 0.5 * G_ii * dw_ij * (dw_i A)_j, dw = w * (1 - softplus(m)); K-FAC A = sum(a a^T) / '
                        '(B L^2), G = B L sum(g g^T); averaged over the saliency batches'}
    return {
        'criterion': cfg.criterion, **ranking,
        'selection': 'the int(p * N) lowest saliencies over all non-head layers together (FSR module convs '
                     'included); int(p * d) per class row of each classification head (main and FSR auxiliary '
                     'heads, bias column included)',
        'attack': {'name': cfg.attack, 'eps': cfg.eps, 'alpha': a.alpha, 'steps': a.steps, 'random_start': True},
        'finetune_loss': f'MART (beta {cfg.beta}) plus the FSR losses for FSR models; pruned parameters and their '
                         f'gradients held at zero',
    }


def _say(cfg: PruneConfig, text: str) -> None:
    if cfg.progress:
        print(text, file=sys.stderr, flush=True)


def _evaluations(cfg: PruneConfig, test: Optional[DeviceLoader], before, after) -> Optional[Dict[str, Any]]:
    if test is None:
        return None
    key = f'pgd{cfg.eval_steps}_acc'
    return {'images': f'the first {cfg.eval_images} {cfg.dataset} test images (the same for both models)',
            'attack': f'PGD-{cfg.eval_steps}, eps {cfg.eps:.6g}, step eps/10, no random start, eval mode, float32',
            'dense': before, 'pruned': after,
            'pgd_drop_points': round(before[key] - after[key], 2),
            'clean_drop_points': round(before['clean_acc'] - after['clean_acc'], 2)}


def run_prune(cfg: PruneConfig, command: str = '') -> Dict[str, Any]:
    """The whole run (see the module docstring); returns the summary, also written to OUT/prune_summary.json."""
    cfg.check()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    amp = cfg.amp if cfg.amp is not None else device.type == 'cuda'
    out = Path(cfg.out)
    num_classes = DATASETS[cfg.dataset][0]
    model, source = load_model(cfg.model, cfg.weights, num_classes, cfg.model_args)
    model.to(device)
    layers = prunable_layers(model)
    train, test, n_train = _data(cfg, device)
    timings: Dict[str, float] = {}

    t = time.perf_counter()
    before = evaluate(model, test, cfg.eps, cfg.eval_steps)
    timings['evaluation_dense'] = time.perf_counter() - t
    _say(cfg, f'dense model: {before}')

    sal, sal_info = _saliency(cfg, model, layers, train, out, source['sha256'])
    timings['saliency'] = sal_info.get('seconds', 0.0)
    _say(cfg, f'saliency: {sal_info}')
    reductions = list(dict.fromkeys(sal_info.pop('reductions') + cfg.finetune_reductions()))
    if reductions:
        _say(cfg, f'reduced mode: {"; ".join(reductions)}')

    t = time.perf_counter()
    selected = select(sal, layers, cfg.sparsity)
    apply_pruning(layers, selected)
    timings['prune'] = time.perf_counter() - t

    history: List[Dict[str, Any]] = []
    if cfg.epochs:
        objective = ObjectiveConfig(name='mart', beta=cfg.beta, fsr=True, eps=cfg.eps,
                                    alpha=cfg.attack_config().alpha, steps=cfg.attack_config().steps,
                                    random_start=True)
        history = finetune(model, layers, selected, train, objective, cfg.epochs, cfg.lr, cfg.momentum,
                           cfg.weight_decay, mad_milestones(cfg.epochs), cfg.seed, amp, cfg.progress)
    timings['finetune'] = sum(h['epoch_seconds'] for h in history)

    t = time.perf_counter()
    after = evaluate(model, test, cfg.eps, cfg.eval_steps)
    timings['evaluation_pruned'] = time.perf_counter() - t
    _say(cfg, f'pruned model: {after}')

    sha = save_weights(model, out / 'pruned.safetensors',
                       metadata={'architecture': cfg.model, 'sparsity': str(cfg.sparsity), 'pruning': cfg.criterion})
    timings['total'] = time.perf_counter() - t_start
    summary = {
        'schema': PRUNE_SCHEMA,
        'mode': 'reduced' if reductions else 'paper',
        'criterion': cfg.criterion,
        'reductions': reductions,
        'architecture': cfg.model, 'model_args': cfg.model_args, 'source': source,
        'weights': {'file': 'pruned.safetensors', 'sha256': sha, 'dtype': 'float32',
                    'note': 'the same architecture and keys as the dense model; pruned parameters are exact zeros'},
        'method': _method(cfg),
        'config': dataclasses.asdict(cfg),
        'training_images': n_train,
        'saliency': sal_info,
        'sparsity': sparsity_report(model, layers, selected),
        'flops': sparse_flops(model, layers, INPUT_SIZE[cfg.dataset]),
        'finetune': {'epochs': cfg.epochs, 'milestones': list(mad_milestones(cfg.epochs)) if cfg.epochs else [],
                     'lr': cfg.lr, 'momentum': cfg.momentum, 'weight_decay': cfg.weight_decay, 'amp': amp,
                     'history': history},
        'evaluation': _evaluations(cfg, test, before, after),
        'timings_seconds': {k: round(v, 3) for k, v in timings.items()},
        'hardware': {'device': hardware_name(device), 'torch': torch.__version__},
        'command': command,
    }
    write_json(out / 'prune_summary.json', summary, allow_nan=False)
    return summary
