"""A short GPU run on a rented machine: one release (train, verify, release) in two calls, or a full verification
of a release in a later run. Behind ``tools/device_job.py``.

The machine is rented for a few minutes at a time: a run has a fixed device-time budget (start-up, transfers and
idle time included), each command has a time limit, and only so much travels with a call and comes back from it
(the figures the job plans with are in :mod:`jobs.device.plan`). So the work is split into calls that each carry
what they need, and nothing is left to decide on the machine:

* ``prepare`` (here, :mod:`jobs.device.prepare`): fills the ignored carry folders ``.data/a`` (the first half of
  CIFAR-10's mosaics, meta, unpack.py, the md5 list, the job's settings and the wheels the GPU image lacks) and
  ``.data/b`` (the rest), checks that each call's tree plus carry stays under the limit, and returns the calls.
* ``a`` and ``b`` (on the machine, :mod:`jobs.device.calls`): a installs the wheels, unpacks the first half, runs
  ``pytest -m cuda`` and a short benchmark that picks the training path; b unpacks the rest, checks every md5,
  trains for what is left of the run, verifies the best checkpoint under a deadline and builds the release folder.
  Whatever a call produces is staged in ``$OUT`` as it appears (weights in parts), by :mod:`jobs.device.staging`.
* ``verify-source`` and ``verify`` (a later run): the full suite on a release's weights under a deadline,
  resumable, with an optional transfer source carried by a call of its own.
* a run of fixed ``--epochs`` over several leases (:mod:`jobs.device.lease_state`): b trains to its end and
  stages the state of the unfinished run in parts, ``c`` calls stage the rest, ``join-state`` (here) joins them,
  and the next lease's ``r`` calls, made before a, carry it back; b lands it and continues the run.
* ``join`` (here): reassembles the staged parts and checks the sha256.
* ``rehearse`` (here, on the CPU, :mod:`jobs.device.rehearsal`): all of the above against a synthetic CIFAR-10
  source, with a fake ``$OUT``.

Everything the machine keeps between the calls lives in the ignored folder ``.data/`` of the checkout there.
"""
from .calls import job_a, job_b, job_c, job_r, job_verify, job_verify_source
from .lease_state import join_state
from .plan import (
    CALL_LIMIT_MIB, CIFAR10_MD5, PART_BYTES, WHEELS, JobError, JobSettings, LeasePlan, plan_lines, train_seconds,
)
from .prepare import prepare, prepare_verify, repack_wheel, tree_files
from .rehearsal import make_synthetic_source, rehearse
from .staging import join, split_file

__all__ = [
    'JobError', 'LeasePlan', 'JobSettings', 'CIFAR10_MD5', 'WHEELS', 'CALL_LIMIT_MIB', 'PART_BYTES',
    'prepare', 'prepare_verify', 'job_a', 'job_b', 'job_c', 'job_r', 'job_verify_source', 'job_verify', 'join',
    'join_state', 'rehearse',
    'repack_wheel', 'tree_files', 'split_file', 'train_seconds', 'plan_lines', 'make_synthetic_source',
]
