#!/usr/bin/env python3
"""Masking Adversarial Damage (MAD, CVPR 2022): prune a robust model into a sparse robust checkpoint.

    python tools/prune.py --model fsr_resnet18 --weights best.safetensors --data /tmp/data --sparsity 0.9 \\
        --out runs/mad90                                              # MAD's recipe: all batches, 60 epochs
    python tools/prune.py ... --sparsity 0.99 --saliency runs/mad90/saliency.safetensors --out runs/mad99
    python tools/prune.py ... --device cpu --saliency-batches 20 --epochs 2 --attack fgsm-rs --max-train-images 5000
                                                                      # reduced CPU mode (labelled as such)
    python tools/prune.py ... --epochs 0                              # prune without fine-tuning
    python tools/prune.py ... --criterion magnitude                   # the |w| baseline, same fine-tuning

OUT/ gets pruned.safetensors (the same architecture and keys as the dense model, pruned parameters exact zeros:
``fsr_hub.models.create`` / timm load it strictly), saliency.safetensors (the averaged saliency matrix of every
conv / linear layer, C_out x d with the bias column last; --saliency reuses it), and prune_summary.json
(sparsity per layer and in all, non-zero parameters, fvcore FLOPs dense and with zero weights skipped, clean and
PGD-20 accuracy of the dense and the pruned model on the same test images, the mode, command, hardware, timings).

Every conv and linear layer is pruned, the FSR modules' included: their convs join the global pool, their
auxiliary heads are pruned per class row like the main classifier.
"""
import argparse
import dataclasses
import shlex
import sys

from fsr_hub.cli import add_fsr_arguments, fsr_model_args, number
from fsr_hub.data import DATASETS, DatasetError
from fsr_hub.pruning import ATTACKS, CRITERIA, PAPER_EPOCHS, PruneConfig, run_prune
from fsr_hub.weights import WeightsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='timm model name of the dense weights, e.g. fsr_resnet18')
    p.add_argument('--weights', required=True, help='dense safetensors weights to prune')
    p.add_argument('--data', required=True, help='dataset root (CIFAR-10: DIR/cifar-10-batches-py)')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--dataset', default='cifar10', choices=sorted(DATASETS))
    p.add_argument('--sparsity', type=number, default=0.9, help='fraction pruned, in (0, 1) (default: 0.9)')
    p.add_argument('--criterion', choices=CRITERIA, default='mad',
                   help="what ranks the weights: mad (MAD's saliency) or magnitude (|w|: the baseline, with the "
                        "same selection, fine-tuning and evaluation) (default: mad)")
    p.add_argument('--saliency-batches', type=int, default=None, metavar='N',
                   help='average the saliency over the first N training batches (default: all)')
    p.add_argument('--saliency', default=None, metavar='FILE',
                   help='saliency.safetensors of an earlier run of the same weights: skip its computation')
    p.add_argument('--epochs', type=int, default=PAPER_EPOCHS,
                   help=f'fine-tuning epochs, lr x0.1 after 1/2 and 3/4 of them; 0: no fine-tuning '
                        f'(default: {PAPER_EPOCHS})')
    p.add_argument('--batch-size', type=int, default=128, help='training batch size (default: 128)')
    p.add_argument('--lr', type=number, default=0.1, help='fine-tuning SGD lr (default: 0.1)')
    p.add_argument('--momentum', type=number, default=0.9, help='SGD momentum (default: 0.9)')
    p.add_argument('--weight-decay', type=number, default=2e-4, help='SGD weight decay (default: 2e-4)')
    p.add_argument('--beta', type=number, default=0.5, help='MART weight of the fine-tuning loss (default: 0.5)')
    p.add_argument('--attack', choices=ATTACKS, default='pgd',
                   help='adversarial examples of saliency and fine-tuning: pgd (PGD-10, step 2.3 eps/10) or '
                        'fgsm-rs (one step of 1.25 eps; reduced mode) (default: pgd)')
    p.add_argument('--eps', type=number, default=8 / 255, help='L-inf radius (default: 8/255)')
    p.add_argument('--holdout', type=int, default=1000,
                   help='the last N training images are never used, as in training (default: 1000)')
    p.add_argument('--max-train-images', type=int, default=None, help='the first N training images only (reduced)')
    p.add_argument('--eval-images', type=int, default=1000,
                   help='evaluate dense and pruned models on the first N test images; 0: skip (default: 1000)')
    p.add_argument('--eval-steps', type=int, default=20, help='PGD steps of the evaluation (default: 20)')
    p.add_argument('--eval-batch-size', type=int, default=200)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default=None, help='cpu | cuda | cuda:N (default: cuda if available)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='bf16 autocast while fine-tuning (default: on for CUDA)')
    p.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                   help='progress bars and per-epoch lines on stderr (default: on)')
    add_fsr_arguments(p)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    model_args = fsr_model_args(args)
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    cfg = PruneConfig(model_args=model_args, **{k: v for k, v in args.items() if k in fields and k != 'model_args'})
    command = 'python tools/prune.py ' + ' '.join(shlex.quote(a) for a in argv)
    try:
        summary = run_prune(cfg, command=command)
    except (DatasetError, WeightsError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    ev = summary['evaluation']
    sp = summary['sparsity']
    line = (f"{summary['criterion']} {summary['mode']} run: sparsity {sp['prunable_sparsity']:.4f} "
            f"of the prunable parameters, {sp['nonzero_params']:,} non-zero parameters")
    if ev is not None:
        key = f'pgd{cfg.eval_steps}_acc'
        line += (f"; dense {ev['dense']['clean_acc']} / {ev['dense'][key]}, pruned {ev['pruned']['clean_acc']} / "
                 f"{ev['pruned'][key]} (clean / PGD-{cfg.eval_steps}, {ev['dense']['n']} test images)")
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
