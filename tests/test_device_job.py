"""The device job (jobs/device/): lease budget, carried wheels, carry folders and size check, staged parts and
join, the synthetic CIFAR-10 source, the CLI's help, and the end-to-end rehearsal on the CPU."""
import hashlib
import json
import subprocess
import sys
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest
import torch

from fsr_hub.attack_registry import CLEAN, PGD20, Kind, spec
from fsr_hub.data import load_dataset
from fsr_hub.evaluate import preset
from fsr_hub.sources import PYAUTOATTACK_SPEC, natural_resnet18
from fsr_hub.weights import read_weights
from jobs.device import (
    CIFAR10_MD5, JobError, JobSettings, LeasePlan, join, job_b, job_verify_source, make_synthetic_source,
    plan_lines, prepare, prepare_verify, rehearse, repack_wheel, split_file, train_seconds,
)
from jobs.device.plan import VERIFY_PRESET, mmss
from tools.device_job import main as device_job_main

REPO = Path(__file__).resolve().parents[1]


def _git_tree(root: Path, files: dict) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / '.gitignore').write_text('/.data/\n')
    subprocess.run(['git', 'init', '-q'], cwd=root, check=True)
    subprocess.run(['git', 'add', '-A'], cwd=root, check=True)
    return root


def test_cli_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        device_job_main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ('prepare', 'prepare-verify', 'join', 'join-state', 'rehearse', ' a ', ' b ', ' c ', ' r K ', 'verify'):
        assert cmd in out
    for cmd in ('prepare', 'b', 'c', 'r', 'join-state', 'rehearse'):
        with pytest.raises(SystemExit) as e:
            device_job_main([cmd, '--help'])
        assert e.value.code == 0


def test_b_verifies_the_floors_on_all_images_within_its_share():
    # the GPU issues' floors are clean and PGD-20 on all 10,000 test images: the lease preset runs them there
    attacks, subsets, masking = preset(VERIFY_PRESET)
    assert {CLEAN, PGD20} <= set(attacks) and not {CLEAN, PGD20} & set(subsets) and not masking
    # its attacks fit the plan's share at the first H200 lease's speed (PGD-20 on 10,000: 21.6 s), AutoAttack aside
    per_unit = 21.6 / (spec(PGD20).cost * 10_000)
    units = sum(spec(a).cost * min(subsets.get(a, 10_000), 10_000) for a in attacks if spec(a).kind is Kind.BATCH)
    quick_units = sum(spec(a).cost * 10_000 for a in preset('quick')[0] if spec(a).kind is Kind.BATCH)
    plan = LeasePlan()
    assert units * per_unit < plan.verify - plan.tool_start < quick_units * per_unit


def test_lease_budget_of_call_b():
    plan = LeasePlan()
    a_start = 1000.0  # the lease began startup (120 s) earlier
    b_start = a_start + 150
    # b must end at the lease's end less the return / idle time and the margin: 1000 - 120 + 900 - 45 - 30 = 1705
    assert plan.b_end(a_start, b_start) == 1705
    assert train_seconds(plan, a_start, b_start, b_start + 20) == 1705 - 1170 - plan.verify - plan.release
    # a late b is bounded by its own 10-minute command limit, and training never gets less than its minimum
    assert plan.b_end(a_start, a_start - 200) == a_start - 200 + 600 - 20
    assert train_seconds(plan, a_start, a_start + 600, a_start + 700) == plan.min_train
    lines = plan_lines(plan)
    assert lines[0].startswith('00:00-02:00') and lines[-1].endswith('margin') and '-15:00' in lines[-1]
    ends = [line[6:11] for line in lines]
    assert ends == sorted(ends)
    # r calls before a take their share of the lease: everything after them moves, b still ends with the lease
    with_r = plan_lines(plan, epochs=80, r_calls=3)
    assert [line.split('  ')[1][:7] for line in with_r[1:4]] == ['call r1', 'call r2', 'call r3']
    assert with_r[4][:5] == mmss(plan.startup + 3 * plan.r) and 'call a' in with_r[4]
    assert with_r[-2][6:11] == lines[-2][6:11]  # b returns when the lease says, r calls or not
    assert [line[6:11] for line in with_r] == sorted(line[6:11] for line in with_r)


def test_repacked_pyautoattack_wheel_is_code_only_and_installs(tmp_path):
    wheel = repack_wheel('pyautoattack', tmp_path / 'w', exclude=('pyautoattack/examples/',))
    assert wheel.name == 'pyautoattack-0.2.0-py3-none-any.whl' and wheel.stat().st_size < 100_000
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert 'pyautoattack/autoattack.py' in names and not any('examples' in n or n.endswith('.pyc') for n in names)
        record = z.read('pyautoattack-0.2.0.dist-info/RECORD').decode().splitlines()
        for line in record:
            path, digest, size = line.rsplit(',', 2)
            if digest:  # every file's hash and size are right (pip refuses a wheel otherwise)
                data = z.read(path)
                assert digest == 'sha256=' + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
                assert int(size) == len(data)
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--no-compile',
                    '--target', str(target), str(wheel)], check=True, capture_output=True)
    assert (target / 'pyautoattack' / 'autoattack.py').is_file() and not (target / 'pyautoattack' / 'examples').exists()
    with pytest.raises(JobError, match='not installed'):
        repack_wheel('no-such-distribution-here', tmp_path)


def test_synthetic_source_unpacks_to_the_datasets_format(tmp_path):
    md5 = make_synthetic_source(tmp_path / 'src', per_batch=20)
    assert set(md5) == set(CIFAR10_MD5) and md5 != CIFAR10_MD5
    assert json.loads((tmp_path / 'src' / 'md5.json').read_text()) == md5
    rc = subprocess.run([sys.executable, str(tmp_path / 'src' / 'unpack.py'), str(tmp_path / 'data')]).returncode
    assert rc == 0
    x, y = load_dataset('cifar10', tmp_path / 'data', train=True)
    xt, _ = load_dataset('cifar10', tmp_path / 'data', train=False)
    assert tuple(x.shape) == (100, 32, 32, 3) and len(y) == 100 and len(xt) == 20
    assert hashlib.md5((tmp_path / 'data' / 'cifar-10-batches-py' / 'test_batch').read_bytes()).hexdigest() == \
        md5['test_batch']
    # a call that carries only part of the mosaics: the missing ones are reported and the exit code says so
    (tmp_path / 'part').mkdir()
    for f in ('train_4.webp', 'meta.json.gz'):
        (tmp_path / 'part' / f).write_bytes((tmp_path / 'src' / f).read_bytes())
    rc = subprocess.run([sys.executable, str(tmp_path / 'src' / 'unpack.py'), str(tmp_path / 'd2'), '--src',
                         str(tmp_path / 'part')], capture_output=True).returncode
    assert rc == 1 and (tmp_path / 'd2' / 'cifar-10-batches-py' / 'data_batch_4').is_file()


def test_prepare_builds_carry_folders_and_checks_sizes(tmp_path):
    make_synthetic_source(tmp_path / 'src', per_batch=20)
    root = _git_tree(tmp_path / 'repo', {'fsr_hub/x.py': b'x = 1\n', 'README.md': b'hi\n'})
    settings = JobSettings(model='fsr_resnet18', tag='at_cifar10', train_args=['--epochs', '1'])
    result = prepare(root, tmp_path / 'src', settings)
    a, b = result['calls']
    assert a['carry'] == ['.data/a'] and b['carry'] == ['.data/b'] and b['timeout_s'] == 600
    assert a['command'].endswith('tools/device_job.py a') and len(b['command']) <= 2000
    assert sorted(p.name for p in (root / '.data' / 'b').iterdir()) == ['test.webp', 'train_4.webp', 'train_5.webp']
    wheels = sorted(p.name.split('-')[0] for p in (root / '.data' / 'a' / 'wheels').iterdir())
    assert wheels == ['fvcore', 'iopath', 'pyautoattack', 'termcolor', 'yacs']
    saved = JobSettings.from_dict(json.loads((root / '.data' / 'a' / 'job.json').read_text()))
    assert saved.train_args == ['--epochs', '1'] and saved.md5 == CIFAR10_MD5 and saved.plan == LeasePlan()
    assert result['sizes_mib']['tree'] < 0.01 and result['sizes_mib']['a'] > result['sizes_mib']['tree']
    # released weights must not travel: prepare lists them to move out (and does not count them)
    (root / 'model_cards' / 'm.t').mkdir(parents=True)
    (root / 'model_cards' / 'm.t' / 'model.safetensors').write_bytes(b'\0' * 300_000)
    result = prepare(root, tmp_path / 'src', settings, limit_mib=0.5)
    assert result['move_out'] == ['model_cards/m.t/model.safetensors'] and result['sizes_mib']['tree'] < 0.01
    assert 'model_cards/m.t/model.safetensors' in result['notes'][0]
    (root / 'fsr_hub' / 'big.bin').write_bytes(b'\1' * 500_000)  # anything else counts
    with pytest.raises(JobError, match=r'over 0.5 MiB; largest files in the tree: fsr_hub/big.bin'):
        prepare(root, tmp_path / 'src', settings, limit_mib=0.5)
    with pytest.raises(JobError, match='source folder'):
        prepare(root, tmp_path / 'nothing', settings)
    with pytest.raises(JobError, match='config.json is missing'):
        prepare_verify(root, tmp_path / 'src', root / 'model_cards' / 'm.t')


def test_prepare_verify_carries_a_transfer_source_in_a_call_of_its_own(tmp_path):
    make_synthetic_source(tmp_path / 'src', per_batch=20)
    root = _git_tree(tmp_path / 'repo', {'fsr_hub/x.py': b'x = 1\n'})
    release = tmp_path / 'rel'
    release.mkdir()
    for f in ('model.safetensors', 'config.json', 'results.json'):
        (release / f).write_text('{}')
    plain = prepare_verify(root, tmp_path / 'src', release)
    assert [c['name'] for c in plain['calls']] == ['verify'] and 'transfer_from' not in json.loads(
        (root / '.data' / 'v' / 'job.json').read_text())
    result = prepare_verify(root, tmp_path / 'src', release, transfer_from=PYAUTOATTACK_SPEC)
    source, verify = result['calls']
    assert source['name'] == 'verify-source' and source['carry'] == ['.data/vs'] and verify['carry'] == ['.data/v']
    assert source['command'].endswith('tools/device_job.py verify-source') and 'make the verify call right after' in (
        ' '.join(result['notes']))
    settings = json.loads((root / '.data' / 'v' / 'job.json').read_text())
    assert settings['transfer_from'] == 'cifar_resnet18:.data/vs/pyautoattack.safetensors'
    assert settings['transfer_origin'] == PYAUTOATTACK_SPEC
    # pyautoattack's checkpoint converted here (the device's wheel lacks it), in float32, exactly its weights
    state = read_weights(root / '.data' / 'vs' / 'pyautoattack.safetensors')
    expected = natural_resnet18().state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert result['sizes_mib']['verify-source'] < 60 and result['sizes_mib']['verify'] < 60
    assert job_verify_source(root)['sha256'] == settings['transfer_sha256']
    with open(root / '.data' / 'vs' / 'pyautoattack.safetensors', 'r+b') as f:
        f.seek(-1, 2)
        f.write(b'\x01')
    with pytest.raises(JobError, match='but prepare-verify recorded'):
        job_verify_source(root)
    with pytest.raises(JobError, match='must be MODEL:WEIGHTS'):
        prepare_verify(root, tmp_path / 'src', release, transfer_from='cifar_resnet18')
    with pytest.raises(JobError, match='not found'):
        prepare_verify(root, tmp_path / 'src', release, transfer_from='cifar_resnet18:/nonexistent.safetensors')


def test_split_parts_and_join_check_the_sha256(tmp_path):
    data = bytes(range(256)) * 5  # 1,280 bytes -> parts of 500, 500, 280
    src = tmp_path / 'w.bin'
    src.write_bytes(data)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'model.safetensors.part-07').write_bytes(b'stale')
    parts = split_file(src, out, part_bytes=500)
    assert [p.stat().st_size for p in parts] == [500, 500, 280] and not (out / 'model.safetensors.part-07').exists()
    summary = {'weights': {'best': {'sha256': hashlib.sha256(data).hexdigest()}}}
    (out / 'train_summary.json').write_text(json.dumps(summary))
    info = join(out, tmp_path / 'joined')
    assert (tmp_path / 'joined' / 'model.safetensors').read_bytes() == data
    assert info['checked_against'] == 'train_summary.json' and (tmp_path / 'joined' / 'train_summary.json').is_file()
    parts[1].write_bytes(b'\1' * 500)  # a part of another checkpoint
    with pytest.raises(JobError, match='sha256'):
        join(out, tmp_path / 'joined2')
    assert not (tmp_path / 'joined2' / 'model.safetensors').exists()


def test_call_b_needs_call_a_on_the_same_machine(tmp_path, monkeypatch):
    root = tmp_path / 'machine'
    (root / '.data' / 'a').mkdir(parents=True)
    (root / '.data' / 'a' / 'job.json').write_text(json.dumps(JobSettings().to_dict()))
    monkeypatch.setenv('OUT', str(tmp_path / 'out'))
    with pytest.raises(JobError, match="call a's record"):
        job_b(root)
    monkeypatch.delenv('OUT')
    assert device_job_main(['--root', str(root), 'b']) == 2


@pytest.mark.slow
def test_rehearsal_of_a_lease_on_the_cpu(tmp_path, capsys):
    report = rehearse(REPO, tmp_path / 'work', budget_minutes=0.8, verify_minutes=0.4,
                      transfer_from=PYAUTOATTACK_SPEC)
    out = capsys.readouterr().out
    phases = {(r['call'], r['phase'].split(' (')[0]) for r in report['phases']}
    assert {('a', 'install wheels'), ('a', 'cuda tests'), ('a', 'benchmark'), ('b', 'train'), ('b', 'verify'),
            ('b', 'release folder'), ('verify', 'verify --preset full')} <= phases
    assert all(r['ok'] and r['cpu_s'] >= 0 for r in report['phases'])
    assert report['join']['release'] == 'fsr_resnet18.at_cifar10' and report['join']['checked_against'] == 'config.json'
    assert {'config.json', 'results.json', 'README.md', 'model.safetensors.part-00'} <= set(report['staged'])
    assert len(report['staged']) <= 8 and report['verify']['results']
    # the transfer source came with its own call and reached verify (run, or listed as not run at the deadline)
    assert report['verify']['transfer_from'] == 'cifar_resnet18:.data/vs/pyautoattack.safetensors'
    assert 'transfer' in report['verify']['results'] or 'transfer' in report['verify']['not_run']
    assert 'The lease plan (device, 15 min):' in out and 'measured per phase' in out and 'cpu' in out


def test_the_package_does_not_ship_the_device_job():
    tomllib = pytest.importorskip('tomllib')
    setuptools = pytest.importorskip('setuptools')
    config = tomllib.loads((REPO / 'pyproject.toml').read_text())
    found = setuptools.find_packages(str(REPO), include=config['tool']['setuptools']['packages']['find']['include'])
    assert 'fsr_hub' in found and not any(p.split('.')[0] in ('jobs', 'tools', 'tests') for p in found)
    assert not (REPO / 'fsr_hub' / 'device_job.py').exists()
