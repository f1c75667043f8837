#!/usr/bin/env python3
"""Speed of the training step in each step mode (the trainer's own step: eager, cuda-graph, compile), vanilla
twin and FSR side by side, and of PGD-20 evaluation, on whatever device is present.

    python tools/benchmark.py                                  # ResNet-18 at batch 128; CUDA: eager and cuda-graph
    python tools/benchmark.py --paths eager,cuda-graph,compile --seconds 60 --json bench.json
    python tools/benchmark.py --device cpu --batches 2 --batch-size 32
    python tools/benchmark.py --device cpu --steps 1 --batches 3 --no-eval   # FGSM-RS step: eager vs compile vs fp32

Rows give seconds per 50,000-image epoch and images/s of the PGD-k AT step (random data), after untimed
warm-up steps that cover each path's one-time set-up (cuDNN autotuning, compilation, graph capture), whose
time is shown apart. --seconds caps the whole measurement: the FSR model of every path is timed first, then
the vanilla twins, then evaluation, each on a share of the time left (compile, whose compilation cannot be
cut short, only starts with 30 s left). --json FILE writes {"device", "paths": {PATH: {"seconds_per_epoch",
"images_per_second", "status", "vanilla", ...}}, "fastest"}: the path the trainer should use (--step).

On the CPU the default paths are eager and compile, and the precision follows the CPU (bf16 autocast and
channels_last with amx_bf16 / avx512_bf16 in /proc/cpuinfo, named in the header); whenever that is not float32, a
float32 eager row of the FSR model is timed too (--no-baseline: not), and every path's speed-up over it is given.

TFLOP/s = 2 x fvcore multiply-adds per image x (passes per image) x images/s, where a training step with a
PGD-k attack costs about k x (forward + input-gradient backward) + one forward + full backward, counted as
3 forward-equivalents each (the backward ~ 2 forwards): an estimate, stated as such (fvcore is optional).
"""
import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from fsr_hub.benchmark import benchmark_eval, benchmark_train_step
from fsr_hub.hardware import cpu_bf16_isa, fast_precision, hardware_name, resolve_device
from fsr_hub.models import VANILLA_TWINS, create
from fsr_hub.step import STEP_MODES

COMPILE_MIN_SECONDS = 30.0
BASELINE = 'fp32-eager'  # the float32 eager step, contiguous format: the reference of the speed-ups


def _paths(text: str) -> List[str]:
    paths = [p.strip() for p in text.split(',') if p.strip()]
    bad = [p for p in paths if p not in STEP_MODES]
    if bad or not paths:
        raise argparse.ArgumentTypeError(f'expected comma-separated step paths from {", ".join(STEP_MODES)}, '
                                         f'got {text!r}')
    return list(dict.fromkeys(paths))


def _macs(model: torch.nn.Module) -> Optional[float]:
    try:
        from fsr_hub.cost import count_cost  # fvcore: optional here
    except ImportError:
        return None
    return count_cost(model)['gflops_fvcore'] * 1e9


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='fsr_resnet18', choices=sorted(VANILLA_TWINS),
                   help='FSR model; its vanilla twin is timed beside it (default: fsr_resnet18)')
    p.add_argument('--device', default=None, help='cpu | cuda | cuda:N (default: cuda if available)')
    p.add_argument('--paths', type=_paths, default=None,
                   help=f'comma-separated step paths from {", ".join(STEP_MODES)} (default: eager,cuda-graph on '
                        f'CUDA, eager,compile on the CPU)')
    p.add_argument('--batch-size', type=int, default=128, help='training batch (default: 128)')
    p.add_argument('--eval-batch-size', type=int, default=None, help='evaluation batch (default: 4 x --batch-size)')
    p.add_argument('--batches', type=int, default=20, help='timed steps per measurement (default: 20)')
    p.add_argument('--warmup', type=int, default=None,
                   help="untimed steps first (default: each path's set-up calls + 1); 0 times the set-up too")
    p.add_argument('--steps', type=int, default=10, help='PGD steps of the training attack (default: 10)')
    p.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='bf16 autocast (default: on for CUDA and CPUs with amx_bf16 / avx512_bf16, as the trainer)')
    p.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels_last memory format (default: as --amp)')
    p.add_argument('--baseline', action=argparse.BooleanOptionalAction, default=True,
                   help='also time the float32 eager step of the FSR model when --amp or --channels-last is on, '
                        'and give each path\'s speed-up over it (default: on)')
    p.add_argument('--eval', action=argparse.BooleanOptionalAction, default=True,
                   help='also time PGD-20 evaluation (eager) (default: on)')
    p.add_argument('--seconds', type=float, default=None,
                   help='cap on the whole measurement, in seconds (default: none)')
    p.add_argument('--json', metavar='FILE', default=None, help='write the results as JSON')
    return p


def _checked_paths(args: argparse.Namespace, dev: torch.device) -> List[str]:
    """The step paths to time; ValueError for flags that do not go together."""
    paths = args.paths or (['eager', 'cuda-graph'] if dev.type == 'cuda' else ['eager', 'compile'])
    if 'cuda-graph' in paths and dev.type != 'cuda':
        raise ValueError('the cuda-graph path needs a CUDA device.')
    if args.batch_size <= 0 or args.batches <= 0 or args.steps < 0:
        raise ValueError('--batch-size and --batches must be positive, --steps >= 0.')
    if args.warmup is not None and args.warmup < 0:
        raise ValueError('--warmup must be >= 0.')
    if args.seconds is not None and args.seconds <= 0:
        raise ValueError('--seconds must be positive.')
    return paths


def _time_steps(args: argparse.Namespace, dev: torch.device, paths: List[str], names: Dict[str, str], amp: bool,
                cl: bool, deadline: Optional[float]) -> Dict[str, Dict[str, Any]]:
    """{path: {'status', 'fsr', 'vanilla'}}: the training step of each path, FSR models first, printed as they go."""
    results: Dict[str, Dict[str, Any]] = {p: {'status': 'ok'} for p in paths}
    jobs = [(p, 'fsr') for p in paths] + [(p, 'vanilla') for p in paths]
    if args.baseline and (amp or cl):
        results[BASELINE] = {'status': 'ok'}
        jobs.insert(len(paths), (BASELINE, 'fsr'))
    print(f'{"path":<11} {"model":<16} {"s/epoch (50k)":>13} {"img/s":>9} {"set-up s":>9}  steps')
    for k, (path, which) in enumerate(jobs):
        if results[path]['status'] != 'ok':
            continue
        share = None
        if deadline is not None:
            left = deadline - time.monotonic()
            share = left / (len(jobs) - k + (1 if args.eval else 0))
            if left < (COMPILE_MIN_SECONDS if path == 'compile' else 1.0):
                results[path][which] = None
                if which == 'fsr':
                    results[path]['status'] = 'skipped: --seconds cap reached'
                print(f'{path:<11} {names[which]:<16} skipped (--seconds cap)', flush=True)
                continue
        torch.manual_seed(0)
        model = create(names[which], num_classes=10)
        try:
            fp32 = path == BASELINE
            r = benchmark_train_step(model, 'at', args.batch_size, args.batches, args.warmup, str(dev),
                                     amp and not fp32, cl and not fp32, step='eager' if fp32 else path,
                                     steps=args.steps, max_seconds=share)
        except Exception as e:  # a failing fast path is reported, and the others still run
            msg = f'failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
            results[path][which] = None
            results[path]['status' if which == 'fsr' else 'vanilla_status'] = msg
            print(f'{path:<11} {names[which]:<16} {msg}', flush=True)
            continue
        results[path][which] = r
        print(f'{path:<11} {names[which]:<16} {r["seconds_per_epoch"]:13.2f} {r["images_per_second"]:9.1f} '
              f'{r["warmup_seconds"]:9.2f}  {r["warmup_steps"]} untimed + {r["timed_steps"]} timed', flush=True)
        del model
    return results


def _time_eval(args: argparse.Namespace, dev: torch.device, names: Dict[str, str], amp: bool,
               cl: bool) -> Dict[str, Any]:
    """PGD-20 evaluation speed of the vanilla twin and the FSR model, printed side by side."""
    ebs = args.eval_batch_size or 4 * args.batch_size
    evaluation = {}
    for which in ('vanilla', 'fsr'):
        torch.manual_seed(0)
        evaluation[which] = benchmark_eval(create(names[which], num_classes=10), ebs, max(1, args.batches // 4), 1,
                                           str(dev), amp, cl)
    ev_v, ev_f = evaluation['vanilla'], evaluation['fsr']
    print(f'PGD-20 eval (eager): {names["vanilla"]} {ev_v["images_per_second"]:.1f} img/s '
          f'{ev_v["seconds_per_10k"]:.2f} s/10k | {names["fsr"]} {ev_f["images_per_second"]:.1f} img/s '
          f'{ev_f["seconds_per_10k"]:.2f} s/10k | '
          f'FSR / vanilla x{ev_f["seconds_per_10k"] / ev_v["seconds_per_10k"]:.3f} '
          f'(paper: 20/19 = x1.053)')
    return evaluation


def _add_tflops(results: Dict[str, Dict[str, Any]], timed: List[str], names: Dict[str, str],
                steps: int) -> Optional[Dict[str, float]]:
    """fvcore MACs per image of both models (None without fvcore); adds each timed row's TFLOP/s estimate."""
    macs = {w: _macs(create(n, num_classes=10)) for w, n in names.items()}
    if None in macs.values():
        print('TFLOP/s not given: fvcore is not installed')
        return None
    parts = [f'{names[w]}: fvcore {macs[w] / 1e9:.4f} GMAC/img' for w in ('vanilla', 'fsr')]
    for p in timed:
        for w in ('vanilla', 'fsr'):
            r = results[p].get(w)
            if r:
                r['tflops'] = 2 * macs[w] * 3 * (steps + 1) * r['images_per_second'] / 1e12
                parts.append(f'{p} {names[w]} ~{r["tflops"]:.2f} TFLOP/s')
    print(' | '.join(parts) + f' | MACs x{macs["fsr"] / macs["vanilla"]:.4f}')
    return macs


def _speedups(results: Dict[str, Dict[str, Any]], ok: List[str], names: Dict[str, str]) -> Optional[Dict[str, float]]:
    """Each path's speed-up over the float32 eager step (None when that was not timed), printed."""
    base = results.get(BASELINE, {}).get('fsr')
    if not (base and ok):
        return None
    speedups = {p: round(base['seconds_per_epoch'] / results[p]['fsr']['seconds_per_epoch'], 3) for p in ok}
    flops = f', ~{base["tflops"]:.2f} TFLOP/s' if 'tflops' in base else ''
    print(f'speed-up over float32 eager ({base["seconds_per_epoch"]:.0f} s/epoch{flops}), {names["fsr"]}: '
          + ', '.join(f'{p} x{u:.2f}' + (f' (~{results[p]["fsr"]["tflops"]:.2f} TFLOP/s)'
                                         if 'tflops' in results[p]['fsr'] else '')
                      for p, u in speedups.items()))
    return speedups


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        dev = resolve_device(args.device)
        paths = _checked_paths(args, dev)
    except (ValueError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    amp = fast_precision(dev) if args.amp is None else args.amp
    cl = fast_precision(dev) if args.channels_last is None else args.channels_last
    deadline = None if args.seconds is None else t_start + args.seconds
    names = {'fsr': args.model, 'vanilla': VANILLA_TWINS[args.model]}
    print(f'device: {hardware_name(dev)} | torch {torch.__version__} | bf16 autocast {amp} | channels_last {cl} | '
          f'batch {args.batch_size} | PGD-{args.steps} AT | paths {", ".join(paths)}', flush=True)
    results = _time_steps(args, dev, paths, names, amp, cl, deadline)

    includes_setup = any(results[p].get(w) and results[p][w]['includes_setup'] for p in paths for w in names)
    ok = [p for p in paths if results[p]['status'] == 'ok' and results[p].get('fsr')]
    ratios = {}
    for p in ok:
        v = results[p].get('vanilla')
        if v and not includes_setup:
            ratios[p] = results[p]['fsr']['seconds_per_epoch'] / v['seconds_per_epoch']
    if includes_setup:
        print('FSR / vanilla ratio and fastest path not given: --warmup is below the set-up calls of a path, so the '
              'timings include one-time compilation / capture / autotuning and compare nothing.')
    elif ratios:
        print('FSR / vanilla: train epoch time ' + ', '.join(f'{p} x{r:.3f}' for p, r in ratios.items())
              + ' (paper: 120/114 = x1.053)')
    evaluation = None
    if args.eval and (deadline is None or deadline - time.monotonic() > 2.0):
        evaluation = _time_eval(args, dev, names, amp, cl)
    macs = None
    if deadline is None or deadline - time.monotonic() > 5.0:
        timed = ok + ([BASELINE] if results.get(BASELINE, {}).get('fsr') else [])
        macs = _add_tflops(results, timed, names, args.steps)
    speedups = None if includes_setup else _speedups(results, ok, names)
    fastest = None if includes_setup or not ok else min(ok, key=lambda p: results[p]['fsr']['seconds_per_epoch'])
    if fastest is not None:
        base = results.get('eager', {}).get('fsr')
        speedup = f' (x{base["seconds_per_epoch"] / results[fastest]["fsr"]["seconds_per_epoch"]:.2f} vs eager)' \
            if base and fastest != 'eager' else ''
        print(f'fastest: {fastest}{speedup}: {results[fastest]["fsr"]["seconds_per_epoch"]:.2f} s per epoch for '
              f'{names["fsr"]}')
    if args.json:
        doc = {
            'device': hardware_name(dev), 'cpu_bf16_isa': cpu_bf16_isa() if dev.type == 'cpu' else None,
            'torch': torch.__version__, 'model': names['fsr'],
            'vanilla_model': names['vanilla'], 'batch_size': args.batch_size, 'attack_steps': args.steps,
            'amp': amp, 'channels_last': cl, 'warmup': args.warmup, 'includes_setup': includes_setup,
            'paths': {p: {'status': r['status'],
                          **({k: r['fsr'][k] for k in ('seconds_per_epoch', 'images_per_second', 'warmup_seconds',
                                                      'warmup_steps', 'timed_steps')} if r.get('fsr') else {}),
                          'vanilla': r.get('vanilla'), 'vanilla_status': r.get('vanilla_status', 'ok'),
                          'fsr_over_vanilla': ratios.get(p)}
                      for p, r in results.items()},
            'speedup_over_fp32_eager': speedups, 'fastest': fastest, 'eval': evaluation, 'macs_per_image': macs,
            'seconds': round(time.monotonic() - t_start, 3),
        }
        with open(args.json, 'w') as f:
            json.dump(doc, f, indent=2)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
