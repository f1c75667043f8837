#!/usr/bin/env python3
"""A short GPU run on a rented machine = one release (train, verify, release), in two device calls; a later run
verifies fully. The job itself lives in jobs/device/ (not part of the package).

Here (the checkout that is sent to the machine, on the CPU):
    python tools/device_job.py prepare [--source ../shared/data/cifar10] [--model fsr_resnet18 --tag at_cifar10]
        fills the ignored carry folders .data/a and .data/b (data, md5 list, job settings, wheels), checks each
        call's tree + carry against what a call may carry, and prints the two device calls (command, carry,
        timeout_s) as JSON
    python tools/device_job.py prepare-verify model_cards/fsr_resnet18.at_cifar10 [--transfer-from MODEL:WEIGHTS]
        the one call of a full verification (weights + test set), continued from the release's results.json;
        a transfer source (e.g. cifar_resnet18:pyautoattack) needs a call of its own first (verify-source)
    python tools/device_job.py prepare --epochs N [--continue-from .data/lease_state]
        a run of N epochs over several leases: a lease that cannot finish it leaves the run's state, staged in
        parts by b and the c calls after it; join-state joins them, and the next lease's r calls carry it back
    python tools/device_job.py join-state FILES_B FILES_C... --out .data/lease_state
    python tools/device_job.py join FILES_DIR --out model_cards/fsr_resnet18.at_cifar10
        reassembles the staged weight parts, checks the sha256, validates the release folder
    python tools/device_job.py rehearse
        prepare, a and b end to end on the CPU against a synthetic CIFAR-10 source, with a fake $OUT

On the machine ($OUT is the folder whose files come back from the call):
    python tools/device_job.py a          # wheels, first half of the data, pytest -m cuda, benchmark
    python tools/device_job.py b [--lease-left-s S]   # rest of the data, md5, budgeted training, quick verify,
                                                       # release; S = the device time left when a returned
    python tools/device_job.py r K        # before a, continuing a run: checks the state parts it carried
    python tools/device_job.py c          # after b left its run unfinished: the next state parts (repeat)
    python tools/device_job.py verify-source   # lands the transfer source, if prepare-verify was given one
    python tools/device_job.py verify     # the full suite under a deadline, results.json staged as it grows

Released weights in model_cards/ travel with the tree: move them out of the checkout during the calls.
The minute-by-minute plan of a run is in model_cards/README.md (and printed by prepare).
"""
import time

STARTED = time.time()  # before the imports below: the call's budget counts from here

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # jobs/ is not packaged: it is imported from this checkout

from jobs.device import (  # noqa: E402
    CALL_LIMIT_MIB, JobError, JobSettings, job_a, job_b, job_c, job_r, job_verify, job_verify_source, join,
    join_state, prepare, prepare_verify, rehearse,
)

DEFAULT_SOURCE = ROOT.parent / 'shared' / 'data' / 'cifar10'


def _split_args(text: str) -> list:
    return shlex.split(text or '')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default=str(ROOT), help='the checkout (default: the one holding this script)')
    sub = p.add_subparsers(dest='cmd', required=True,
                           metavar='{prepare,prepare-verify,r,a,b,c,join-state,verify-source,verify,join,rehearse}')
    pr = sub.add_parser('prepare', help='fill the carry folders and print the device calls')
    pr.add_argument('--source', default=str(DEFAULT_SOURCE), help='CIFAR-10 mosaic folder (default ../shared/...)')
    pr.add_argument('--md5', default=None, help='JSON file of md5 sums of the unpacked batches (default: the '
                                                'canonical CIFAR-10 sums; a synthetic source brings its own)')
    pr.add_argument('--model', default='fsr_resnet18')
    pr.add_argument('--tag', default='at_cifar10')
    pr.add_argument('--train-args', default='', help='extra tools/train.py arguments, one string')
    pr.add_argument('--verify-args', default='', help='extra tools/verify.py arguments, one string')
    pr.add_argument('--limit-mib', type=float, default=CALL_LIMIT_MIB)
    pr.add_argument('--epochs', type=int, default=None,
                    help='a run of this many epochs, continued over as many leases as it takes (default: what one '
                         'lease allows, by --time-budget)')
    pr.add_argument('--continue-from', default=None, metavar='DIR',
                    help='the joined state of the unfinished run of an earlier lease (join-state --out DIR); its '
                         'parts travel with r calls made before a')
    pr.add_argument('--floors', default='clean=78,pgd20=46', metavar='METRIC=PCT,...',
                    help='least accuracies on all test images for a release; a run below any is not released '
                         '(default: %(default)s, the GPU queue\'s floors; "" for none)')
    pv = sub.add_parser('prepare-verify', help='fill .data/v and print the device call of a full verification')
    pv.add_argument('release', help='release folder model_cards/<arch>.<tag>')
    pv.add_argument('--source', default=str(DEFAULT_SOURCE))
    pv.add_argument('--md5', default=None)
    pv.add_argument('--deadline-minutes', type=float, default=8.5)
    pv.add_argument('--limit-mib', type=float, default=CALL_LIMIT_MIB)
    pv.add_argument('--transfer-from', default=None, metavar='MODEL:WEIGHTS',
                    help='source of the transfer attack: a safetensors file or cifar_resnet18:pyautoattack (carried '
                         'by a verify-source call of its own, made right before verify)')
    pa = sub.add_parser('a', help='first device call')
    pa.add_argument('--benchmark-seconds', type=float, default=None)
    pb = sub.add_parser('b', help='second device call, right after a')
    pb.add_argument('--lease-left-s', type=float, default=None,
                    help="device seconds left when call a returned (its reply's lease.budget_left_s): b plans its "
                         "end from it; without it, from a's start and an assumed 2-minute machine start-up")
    sub.add_parser('c', help='device call right after b when b left its run unfinished: the next state parts')
    pr_ = sub.add_parser('r', help='device call before a: checks the run state parts its carry folder brought')
    pr_.add_argument('k', type=int, help='which r call (its folder .data/rK)')
    ps = sub.add_parser('join-state', help='join the run state parts staged by b and the c calls')
    ps.add_argument('src', nargs='+', help='the files_at folders of b and of each c call')
    ps.add_argument('--out', required=True, help='folder to write run_state.tar and its manifest to')
    sub.add_parser('verify-source', help='device call before verify: lands and checks the transfer source')
    vv = sub.add_parser('verify', help='device call of a full verification')
    vv.add_argument('--deadline-minutes', type=float, default=None)
    pj = sub.add_parser('join', help='reassemble staged weight parts and check the sha256')
    pj.add_argument('src', help='folder of the staged files (e.g. the device files_at folder)')
    pj.add_argument('--out', default=None, help='folder to write (default: SRC itself)')
    ph = sub.add_parser('rehearse', help='prepare, a and b on the CPU with synthetic data and a fake $OUT')
    ph.add_argument('--work', default=None, help='scratch folder (default: a temporary one)')
    ph.add_argument('--budget-minutes', type=float, default=1.0, help='what call b gets (as its command limit)')
    ph.add_argument('--verify-minutes', type=float, default=0.5, help='what the verify call gets (0: no verify call)')
    ph.add_argument('--json', default=None, help='also write the rehearsal record here')
    ph.add_argument('--transfer-from', default=None, metavar='MODEL:WEIGHTS',
                    help='a transfer source for the verify call (e.g. cifar_resnet18:pyautoattack)')
    return p


def _md5(path):
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise JobError(f'--md5 {path}: not a readable JSON object ({e}).') from e


def _floors(text: str) -> dict:
    floors = {}
    for item in filter(None, (t.strip() for t in (text or '').split(','))):
        metric, sep, value = item.partition('=')
        try:
            floors[metric.strip()] = float(value)
        except ValueError:
            raise ValueError(f'--floors {text!r}: each item is METRIC=PERCENT, e.g. clean=78,pgd20=46') from None
        if not sep or not metric.strip():
            raise ValueError(f'--floors {text!r}: each item is METRIC=PERCENT, e.g. clean=78,pgd20=46')
    return floors


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    try:
        if args.cmd == 'prepare':
            if args.epochs is not None and args.epochs < 1:
                raise ValueError(f'--epochs must be a positive number, got {args.epochs}.')
            settings = JobSettings(model=args.model, tag=args.tag, train_args=_split_args(args.train_args),
                                   verify_args=_split_args(args.verify_args), epochs=args.epochs,
                                   floors=_floors(args.floors))
            if args.md5:
                settings.md5 = _md5(args.md5)
            result = prepare(root, args.source, settings, args.limit_mib, continue_from=args.continue_from)
        elif args.cmd == 'prepare-verify':
            result = prepare_verify(root, args.source, args.release, args.deadline_minutes, _md5(args.md5),
                                    args.limit_mib, transfer_from=args.transfer_from)
        elif args.cmd == 'a':
            result = job_a(root, args.benchmark_seconds, started=STARTED)
        elif args.cmd == 'b':
            result = job_b(root, started=STARTED, lease_left=args.lease_left_s)
        elif args.cmd == 'c':
            result = job_c(root)
        elif args.cmd == 'r':
            result = job_r(root, f'r{args.k}')
        elif args.cmd == 'join-state':
            result = join_state(args.src, args.out)
        elif args.cmd == 'verify-source':
            result = job_verify_source(root)
        elif args.cmd == 'verify':
            result = job_verify(root, args.deadline_minutes, started=STARTED)
        elif args.cmd == 'join':
            result = join(args.src, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix='fsr-rehearse-') as tmp:
                result = rehearse(root, Path(args.work or tmp), args.budget_minutes, args.verify_minutes,
                                  transfer_from=args.transfer_from)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
            return 0
    except (JobError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
