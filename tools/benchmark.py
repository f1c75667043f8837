#!/usr/bin/env python3
"""Throughput of the PGD-10 adversarial training step and of PGD-20 evaluation, vanilla vs FSR side by side,
on whatever device is present, with the achieved TFLOP/s from fvcore's count.

    python tools/benchmark.py                                   # ResNet-18, CUDA if present, the paper's batch 128
    python tools/benchmark.py --device cpu --batches 2 --batch-size 32
    python tools/benchmark.py --model fsr_wrn34_10 --compile

TFLOP/s = 2 x fvcore multiply-adds per image x (passes per image) x images/s, where a training step with a
PGD-k attack costs about k x (forward + input-gradient backward) + one forward + full backward, counted as
3 forward-equivalents each (the backward ~ 2 forwards): an estimate, stated as such.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
import torch  # noqa: E402

import fsr_hub  # noqa: E402,F401
from fsr_hub.cost import count_cost  # noqa: E402
from fsr_hub.engine import benchmark_eval, benchmark_train_step  # noqa: E402
from fsr_hub.hardware import hardware_name  # noqa: E402
from fsr_hub.models import VANILLA_TWINS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='fsr_resnet18', choices=sorted(VANILLA_TWINS))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--eval-batch-size', type=int, default=None, help='default: 4 x --batch-size')
    p.add_argument('--batches', type=int, default=20, help='timed steps (after --warmup)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 3, 1 on CPU)')
    p.add_argument('--steps', type=int, default=10, help='PGD steps of the training attack')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None, help='bf16 autocast (CUDA default)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None)
    p.add_argument('--compile', action='store_true')
    args = p.parse_args(argv)
    try:
        dev = torch.device(args.device)
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise ValueError('--device cuda but no CUDA device is available.')
        if args.batch_size <= 0 or args.batches <= 0:
            raise ValueError('--batch-size and --batches must be positive.')
    except (ValueError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    cuda = dev.type == 'cuda'
    amp = cuda if args.amp is None else args.amp
    cl = cuda if args.channels_last is None else args.channels_last
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    ebs = args.eval_batch_size or 4 * args.batch_size
    print(f'device: {hardware_name(dev)} | torch {torch.__version__} | bf16 autocast {amp} | channels_last {cl} | '
          f'compile {args.compile} | batch {args.batch_size} | PGD-{args.steps} AT')
    rows = {}
    for name in (VANILLA_TWINS[args.model], args.model):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10).to(dev)
        macs = count_cost(model)['gflops_fvcore'] * 1e9
        tr = benchmark_train_step(model, 'at', args.batch_size, args.batches, warmup, args.device, amp, cl,
                                  args.compile, steps=args.steps)
        ev = benchmark_eval(model, ebs, max(1, args.batches // 4), 1, args.device, amp, cl)
        train_tflops = 2 * macs * 3 * (args.steps + 1) * tr['images_per_second'] / 1e12
        eval_tflops = 2 * macs * (3 * 20 + 1) * ev['images_per_second'] / 1e12
        rows[name] = (macs, tr, ev, train_tflops, eval_tflops)
        print(f'{name:>16}: fvcore {macs / 1e9:.4f} GMAC/img | train {tr["images_per_second"]:9.1f} img/s '
              f'{tr["seconds_per_epoch"]:9.1f} s/epoch (50k) ~{train_tflops:.2f} TFLOP/s | PGD-20 eval '
              f'{ev["images_per_second"]:9.1f} img/s {ev["seconds_per_10k"]:8.1f} s/10k ~{eval_tflops:.2f} TFLOP/s',
              flush=True)
    (v_macs, v_tr, v_ev, _, _), (f_macs, f_tr, f_ev, _, _) = rows.values()
    print(f'FSR / vanilla: train epoch time x{f_tr["seconds_per_epoch"] / v_tr["seconds_per_epoch"]:.3f} '
          f'(paper: 120/114 = x1.053), eval time x{f_ev["seconds_per_10k"] / v_ev["seconds_per_10k"]:.3f} '
          f'(paper: 20/19 = x1.053), MACs x{f_macs / v_macs:.4f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
