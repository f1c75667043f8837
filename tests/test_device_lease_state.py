"""A run of fixed epochs over several leases (jobs/device/lease_state.py and call b's handling of it): the state
packed, staged in parts over b and c within what comes back from a call, joined, carried by r calls and landed;
call b's choice between finishing and leaving the state; floors that stop a release. The trainer, verifier and
card maker are stand-ins here (their own tests cover them); everything of the job around them is real."""
import hashlib
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

import jobs.device.calls as calls
import jobs.device.lease_state as lease_state
from jobs.device import JobError, JobSettings, LeasePlan, join_state, prepare
from jobs.device.lease_state import (
    MANIFEST, STATE, carry_state, check_carried, clear_carried, land_state, pack_state, stage_state_parts,
)
from jobs.device.plan import CARRY_A, JOB, RUN, SITE
from jobs.device.staging import Log
from tools.device_job import main as device_job_main

from test_device_job import _git_tree


def _run_dir(folder: Path, done: int, epochs: int, size: int = 5000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'last.pt').write_bytes(bytes(range(256)) * (size // 256) + b'x' * done)
    (folder / 'best.safetensors').write_bytes(b'best' * 100)
    history = [{'epoch': e + 1, 'epoch_seconds': 2.0} for e in range(done)]
    (folder / 'train_summary.json').write_text(json.dumps({
        'complete': done == epochs, 'history': history, 'config': {'model': 'fsr_resnet18', 'epochs': epochs}}))
    return folder


def test_state_round_trip_in_parts_over_calls(tmp_path, monkeypatch):
    run = _run_dir(tmp_path / 'run', done=3, epochs=10)
    manifest = pack_state(run, tmp_path / 'parts', part_bytes=4000)
    assert manifest['epochs_done'] == 3 and manifest['epochs'] == 10 and len(manifest['parts']) >= 6
    assert not (tmp_path / 'parts' / STATE).exists()  # only its parts stay
    # what comes back from a call: here 4 files of which b's log is one
    monkeypatch.setattr(lease_state, 'OUT_MAX_FILES', 4)
    log = Log(tmp_path / 'log.txt')
    outs = []
    left = ['start']
    while left:
        out = tmp_path / f'out{len(outs)}'
        out.mkdir()
        (out / 'job.log').write_text('b')
        left = stage_state_parts(tmp_path / 'parts', out, log)
        assert len(list(out.iterdir())) <= 4
        outs.append(out)
    assert len(outs) == -(-len(manifest['parts']) // 2)  # two parts beside the log and the manifest
    with pytest.raises(JobError, match='in none of'):
        join_state(outs[:-1], tmp_path / 'joined')
    info = join_state(outs, tmp_path / 'joined')
    assert info['epochs_done'] == 3
    with tarfile.open(tmp_path / 'joined' / STATE) as t:
        assert sorted(t.getnames()) == ['best.safetensors', 'last.pt', 'train_summary.json']
    # the next lease: r carry folders within a room, checked on the machine, landed by b
    machine = tmp_path / 'machine'
    (machine / RUN).mkdir(parents=True)
    (machine / RUN / 'keep').write_text('not touched by clear_carried')
    folders = carry_state(machine, tmp_path / 'joined', room_bytes=9000, part_bytes=4000)
    assert [f.name for f in folders] == [f'r{i + 1}' for i in range(len(folders))] and len(folders) >= 3
    for f in folders:
        assert sum(p.stat().st_size for p in (machine / f).iterdir() if p.name != MANIFEST) <= 9000
        assert check_carried(machine, f.name)['state_sha256'] == manifest['sha256']
    landed = land_state(machine, log)
    assert landed['epochs_done'] == 3
    for name in ('last.pt', 'best.safetensors', 'train_summary.json'):
        assert (machine / RUN / name).read_bytes() == (run / name).read_bytes()
    # b again on the same machine, after the run went on there: the older carried state is not landed over it
    _run_dir(machine / RUN, done=5, epochs=10)
    newer = (machine / RUN / 'last.pt').read_bytes()
    assert land_state(machine, log)['epochs_done'] == 3 and (machine / RUN / 'last.pt').read_bytes() == newer
    clear_carried(machine)
    assert not any((machine / '.data').glob('r[0-9]*')) and (machine / RUN / 'keep').is_file()
    assert land_state(machine, log) is None


def test_a_damaged_or_foreign_state_is_refused(tmp_path):
    log = Log(tmp_path / 'log.txt')
    pack_state(_run_dir(tmp_path / 'run', 2, 10), tmp_path / 'parts', part_bytes=1000)
    out = tmp_path / 'out'
    out.mkdir()
    stage_state_parts(tmp_path / 'parts', out, log)
    part = sorted(out.glob(f'{STATE}.part-*'))[1]
    part.write_bytes(b'y' + part.read_bytes()[1:])
    with pytest.raises(JobError, match='size or sha256'):
        join_state([out], tmp_path / 'joined')
    with pytest.raises(JobError, match='nothing to continue from'):
        pack_state(tmp_path / 'empty', tmp_path / 'parts2')
    # a state with an entry outside the run's files is not unpacked
    machine = tmp_path / 'machine'
    r1 = machine / '.data' / 'r1'
    r1.mkdir(parents=True)
    tar = tmp_path / 'evil.tar'
    (tmp_path / 'evil').write_text('x')
    with tarfile.open(tar, 'w') as t:
        t.add(tmp_path / 'evil', arcname='../evil')
    data = tar.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (r1 / f'{STATE}.part-00').write_bytes(data)
    (r1 / MANIFEST).write_text(json.dumps({'sha256': sha, 'epochs_done': 1, 'epochs': 2, 'parts': [
        {'name': f'{STATE}.part-00', 'bytes': len(data), 'sha256': sha}]}))
    with pytest.raises(JobError, match='unexpected entries'):
        land_state(machine, log)


def test_fixed_epochs_budget_finishes_or_leaves_the_state():
    plan = LeasePlan()
    b_end, now = 1000.0, 0.0
    full = b_end - plan.verify - plan.release
    # 40 epochs of 11.45 s (+10 %, + capture) fit; 80 do not: train to b's end less the packing
    assert plan.fixed_epochs_budget(b_end, now, 40, 11.45) == (full, True)
    assert plan.fixed_epochs_budget(b_end, now, 80, 11.45) == (b_end - plan.pack, False)
    assert plan.fixed_epochs_budget(b_end, now, 1, None) == (b_end - plan.pack, False)  # no estimate
    # an unfinished run ends earlier when c calls must follow it; a finishing one keeps the whole call
    assert plan.fixed_epochs_budget(b_end, now, 80, 11.45, leave_end=900.0) == (900.0 - plan.pack, False)
    assert plan.fixed_epochs_budget(b_end, now, 40, 11.45, leave_end=900.0) == (full, True)
    # b's end keeps the c call's share of the lease when asked
    assert plan.b_end(0, 0, 700, reserve=plan.c) == min(700 - plan.gap - plan.after - plan.margin - plan.c,
                                                         plan.command_limit - plan.command_margin)


FAKE_TRAIN = '''
import json, sys, os
from pathlib import Path
args = sys.argv[1:]
epochs, out = int(args[args.index('--epochs') + 1]), Path(args[args.index('--out') + 1])
out.mkdir(parents=True, exist_ok=True)
s = out / 'train_summary.json'
hist = json.loads(s.read_text())['history'] if s.is_file() else []
for _ in range(int(os.environ['FAKE_EPOCHS_PER_CALL'])):
    if len(hist) == epochs:
        break
    hist.append({'epoch': len(hist) + 1, 'epoch_seconds': 1.0})
(out / 'last.pt').write_bytes(b'state' * 200 + bytes([len(hist)]))
(out / 'best.safetensors').write_bytes(b'best')
s.write_text(json.dumps({'complete': len(hist) == epochs, 'history': hist, 'command': ' '.join(args),
                         'config': {'model': args[args.index('--model') + 1], 'epochs': epochs}}))
'''
FAKE_VERIFY = '''
import json, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index('--out') + 1])
out.write_text(json.dumps({'results': {'clean': {'accuracy': 75.25, 'subset': 'all 10000'},
                                       'pgd20': {'accuracy': 47.34, 'subset': 'all 10000'}}}))
'''


def _machine(tmp_path: Path, settings: JobSettings, name: str) -> Path:
    root = tmp_path / name
    for script, text in (('train.py', FAKE_TRAIN), ('verify.py', FAKE_VERIFY), ('make_card.py', 'raise SystemExit(3)')):
        (root / 'tools').mkdir(parents=True, exist_ok=True)
        (root / 'tools' / script).write_text(text)
    (root / CARRY_A).mkdir(parents=True)
    (root / CARRY_A / 'job.json').write_text(json.dumps(settings.to_dict()))
    (root / SITE).mkdir(parents=True)
    (root / JOB).mkdir(parents=True)
    (root / JOB / 'a.json').write_text(json.dumps({'a_start': time.time(), 'step': 'eager',
                                                   'seconds_per_epoch': {'eager': 1.0}}))
    return root


def test_call_b_leaves_the_state_then_a_later_lease_finishes_and_checks_floors(tmp_path, monkeypatch):
    monkeypatch.setattr(calls, 'unpack', lambda *a, **k: None)  # the data: covered by the rehearsal
    monkeypatch.setattr(lease_state, 'OUT_MAX_FILES', 3)  # b's log, summary and manifest: its part goes with c
    plan = LeasePlan(command_limit=200, command_margin=0, verify=20, release=10, pack=5, capture=0, min_train=5)
    settings = JobSettings(epochs=5, floors={'clean': 78.0, 'pgd20': 46.0}, plan=plan)
    # lease 1: 5 epochs of ~1 s do not fit a call b of 30 s less verify and release: b trains to its end
    plan1 = LeasePlan(**{**plan.__dict__, 'command_limit': 30})
    m1 = _machine(tmp_path, JobSettings(**{**settings.__dict__, 'plan': plan1}), 'lease1')
    monkeypatch.setenv('FAKE_EPOCHS_PER_CALL', '2')
    monkeypatch.setenv('OUT', str(tmp_path / 'out_b1'))
    state = calls.job_b(m1)
    assert state['finishes'] is False and state['continue']['epochs_done'] == 2
    assert 'released' not in state and not (tmp_path / 'out_b1' / 'model.safetensors.part-00').exists()
    outs = [tmp_path / 'out_b1']
    assert state['continue']['parts_left']
    while state.get('continue', state).get('parts_left'):
        out = tmp_path / f'out_c{len(outs)}'
        monkeypatch.setenv('OUT', str(out))
        state = calls.job_c(m1)
        outs.append(out)
    assert device_job_main(['join-state', *map(str, outs), '--out', str(tmp_path / 'state')]) == 0
    # lease 2, a fresh machine: prepare carries the state with r calls, b lands it and finishes the run
    repo = _git_tree(tmp_path / 'repo', {'README.md': b'x'})
    source = tmp_path / 'source'
    source.mkdir()
    for f in ('train_1.webp', 'train_2.webp', 'train_3.webp', 'meta.json.gz', 'unpack.py', 'train_4.webp',
              'train_5.webp', 'test.webp'):
        (source / f).write_bytes(b'0')
    monkeypatch.setattr(sys.modules['jobs.device.prepare'], '_wheels', lambda folder: [])
    with pytest.raises(JobError, match='run of 5 epochs, not'):
        prepare(repo, source, JobSettings(epochs=6), continue_from=tmp_path / 'state')
    prepared = prepare(repo, source, settings, continue_from=tmp_path / 'state')
    names = [c['name'] for c in prepared['calls']]
    assert names[-2:] == ['a', 'b'] and names[0] == 'r1' and all(n.startswith('r') for n in names[:-2])
    assert any('make call c' in n for n in prepared['notes'])
    m2 = _machine(tmp_path, settings, 'lease2')
    for call in prepared['calls'][:-2]:
        folder = repo / call['carry'][0]
        (m2 / call['carry'][0]).parent.mkdir(parents=True, exist_ok=True)
        (m2 / call['carry'][0]).mkdir()
        for p in folder.iterdir():
            (m2 / call['carry'][0] / p.name).write_bytes(p.read_bytes())
        assert calls.job_r(m2, call['name'])['epochs_done'] == 2
    monkeypatch.setenv('FAKE_EPOCHS_PER_CALL', '10')
    monkeypatch.setenv('OUT', str(tmp_path / 'out_b2'))
    state = calls.job_b(m2)
    assert state['epochs_done_before'] == 2 and state['finishes'] is True and state['progress']['complete']
    # the verify stand-in reports clean 75.25: below the floor, so no release folder is built (make_card would
    # have failed the call)
    assert state['floors_missed'] == {'clean': '75.25 < 78'} and 'released' not in state
    assert (tmp_path / 'out_b2' / 'results.json').is_file()
    assert '--epochs 5' in json.loads((m2 / RUN / 'train_summary.json').read_text())['command']
    # and a state of another run is refused by b itself
    (m2 / CARRY_A / 'job.json').write_text(json.dumps(JobSettings(epochs=7, plan=plan).to_dict()))
    for call in prepared['calls'][:-2]:
        assert (m2 / call['carry'][0]).is_dir()
    monkeypatch.setenv('OUT', str(tmp_path / 'out_b3'))
    with pytest.raises(JobError, match='not the fsr_resnet18 run of 7'):
        calls.job_b(m2)


def test_a_run_expected_to_stay_unfinished_that_completes_is_staged_and_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(calls, 'unpack', lambda *a, **k: None)
    plan = LeasePlan(command_limit=200, command_margin=0, verify=20, release=10, pack=5, capture=0, min_train=5)
    settings = JobSettings(epochs=3, floors={'clean': 78.0}, plan=plan)
    machine = _machine(tmp_path, settings, 'lease')
    # a's benchmark estimated 100 s per epoch: 3 epochs do not fit, yet the (fake) trainer completes them
    (machine / JOB / 'a.json').write_text(json.dumps({'a_start': time.time(), 'step': 'eager',
                                                      'seconds_per_epoch': {'eager': 100.0}}))
    monkeypatch.setenv('FAKE_EPOCHS_PER_CALL', '10')
    monkeypatch.setenv('OUT', str(tmp_path / 'out'))
    state = calls.job_b(machine)
    assert state['finishes'] is False and state['progress']['complete'] and 'continue' not in state
    # its weights came back before the verification (which might overrun the call), then the report
    assert (tmp_path / 'out' / 'model.safetensors.part-00').read_bytes() == b'best'
    assert state['floors_missed'] == {'clean': '75.25 < 78'}
    assert (tmp_path / 'out' / 'results.json').is_file()


@pytest.mark.parametrize('text, ok', [('clean=78,pgd20=46', True), ('', True), ('clean', False), ('x=y', False)])
def test_floors_flag(tmp_path, text, ok):
    from tools.device_job import _floors
    if ok:
        assert _floors(text) == ({'clean': 78.0, 'pgd20': 46.0} if text else {})
    else:
        with pytest.raises(ValueError, match='METRIC=PERCENT'):
            _floors(text)
    assert device_job_main(['prepare', '--source', str(tmp_path / 'none'), '--epochs', '0']) == 2
