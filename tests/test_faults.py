"""Fault injection through the real entry points: two runs on one folder, damaged state, odd images,
out of memory. Each case ends in one `error:` line (exit code 2) or a run that works, and leaves what
the user had readable and unchanged.
"""
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import test_clipreid
import train_clipreid
from datasets.sampler import RandomIdentitySampler
from model.make_model_clipreid import ReIDModel
from loss import make_loss
from tests.helpers import tiny_opts
from tests.test_images import ODD_KINDS, write_odd_image
from tests.helpers import ROOT, fails
from utils.errors import UserError

pytestmark = pytest.mark.slow

MODEL = 'ViT-Tiny-16'
NO_STAGE1 = ('MODEL.I2T_LOSS_WEIGHTS', '(0.0, 0.0, 0.0)')  # stage 2 only: the fastest real training
ONE_EPOCH = ('SOLVER.STAGE1.MAX_EPOCHS', '1', 'SOLVER.STAGE2.MAX_EPOCHS', '1')

# Holds a lock of OUTPUT_DIR the way a run does, until killed.
HOLDER = r'''
import sys, time
from utils.run_lock import DirectoryLock
lock = DirectoryLock(sys.argv[1], sys.argv[2]).acquire(wait=False)
print('HELD', flush=True)
time.sleep(600)
'''


def start_holder(out: Path, name: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(out), name], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == 'HELD'
    return holder


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def snapshot(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope='module')
def trained(tiny_mssl, tmp_path_factory) -> Path:
    """Two stage-2 epochs: checkpoints 1 and 2, resume.pth (epoch 2), resume.prev.pth (epoch 1), cache."""
    out = tmp_path_factory.mktemp('trained')
    train_clipreid.main(tiny_opts(tiny_mssl, str(out), 'SOLVER.STAGE1.MAX_EPOCHS', '1',
                                  'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1'))
    return out


def assert_kept(before: dict, after: dict) -> None:
    """Every file is still there and unchanged; the training log only grew (this run's lines)."""
    for name, content in before.items():
        assert after[name].startswith(content) if name == 'train_log.txt' else after[name] == content, name


def copy_of(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / 'out'
    shutil.copytree(trained, out)
    return out


# ---------------------------------------------------------------------------------------------
# One writer per OUTPUT_DIR
# ---------------------------------------------------------------------------------------------

def test_second_training_run_stops_and_a_dead_runs_lock_is_taken_over(trained, tiny_mssl, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    before = snapshot(out)
    holder = start_holder(out, 'train.lock')
    try:
        line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), *NO_STAGE1), capsys)
        assert line.startswith(f"error: OUTPUT_DIR '{out}' is in use by another training run (process "
                               f"{holder.pid} on host {socket.gethostname()}, started ")
        assert 'wait for it to end, or give this run another OUTPUT_DIR' in line
        after = snapshot(out)
        del after['train.lock']
        assert after == before  # nothing of the first run's was touched, not even its log
        # A test run only reads a checkpoint and writes results: it does not need the training lock.
        metrics = test_clipreid.main(tiny_opts(tiny_mssl, str(out), 'TEST.EVAL_MODE', 'DDC',
                                               'TEST.WEIGHT', str(out / f'{MODEL}_2.pth')))
        assert set(metrics) == {'DDC'}
    finally:
        kill(holder)
    assert (out / 'train.lock').exists()  # a killed run leaves its lock file behind
    train_clipreid.main(tiny_opts(tiny_mssl, str(out), *NO_STAGE1, *ONE_EPOCH))
    log = (out / 'train_log.txt').read_text()
    assert f"took over the lock file {out / 'train.lock'} left by process {holder.pid} on host" in log
    assert not (out / 'train.lock').exists()  # released at the end


def test_two_results_writers_do_not_interleave(trained, tiny_mssl, tmp_path):
    out = copy_of(trained, tmp_path)
    for path in out.glob('results_*.json'):
        path.unlink()
    holder = start_holder(out, 'results.lock')  # another run writing its results right now
    argv = tiny_opts(tiny_mssl, str(out), 'TEST.EVAL_MODE', 'DDC', 'TEST.WEIGHT', str(out / f'{MODEL}_2.pth'))
    tester = subprocess.Popen([sys.executable, 'test_clipreid.py', *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        log = out / 'test_log.txt'
        while not (log.exists() and 'DDC: mAP' in log.read_text()) and time.monotonic() < deadline:
            assert tester.poll() is None, tester.stderr.read()
            time.sleep(0.5)
        time.sleep(2)
        assert not (out / 'results_DDC.json').exists()  # evaluated, and waiting for its turn to write
    finally:
        kill(holder)
    _, err = tester.communicate(timeout=120)
    assert tester.returncode == 0, err
    assert json.loads((out / 'results_DDC.json').read_text())['mode'] == 'DDC'


# ---------------------------------------------------------------------------------------------
# Damaged state
# ---------------------------------------------------------------------------------------------

def test_truncated_resume_state_names_the_earlier_one_and_resuming_from_it_works(trained, tiny_mssl, tmp_path,
                                                                                 capsys):
    out = copy_of(trained, tmp_path)
    resume, previous = out / 'resume.pth', out / 'resume.prev.pth'
    resume.write_bytes(resume.read_bytes()[:4000])
    before = snapshot(out)
    argv = tiny_opts(tiny_mssl, str(out), 'SOLVER.STAGE2.MAX_EPOCHS', '3', 'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1')
    line = fails(train_clipreid.main, [*argv, 'SOLVER.RESUME', 'auto'], capsys)
    assert line.startswith(f"error: SOLVER.RESUME auto: '{resume}' is truncated or not a PyTorch checkpoint")
    assert (f"it is left as it is. The resume state before it, '{previous}', is intact and holds the state after "
            f"epoch 1: pass SOLVER.RESUME {previous} to continue from there") in line
    assert_kept(before, snapshot(out))
    # Falling back deliberately: epochs 2 and 3 are trained again from the epoch-1 state.
    result = train_clipreid.main([*argv, 'SOLVER.RESUME', str(previous)])
    assert [record['epoch'] for record in result['history']] == [1, 2, 3]
    assert torch.load(resume, weights_only=True)['epoch'] == 3
    assert torch.load(previous, weights_only=True)['epoch'] == 2


def test_garbage_resume_state_without_an_earlier_one(trained, tiny_mssl, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    (out / 'resume.prev.pth').unlink()
    (out / 'resume.pth').write_bytes(b'\x00' * 100)
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), 'SOLVER.RESUME', 'auto'), capsys)
    assert "No intact earlier resume state (resume.prev.pth) is beside it: copy it again, or pass SOLVER.RESUME '' " \
           "to start afresh (that folder also has" in line
    assert (out / 'resume.pth').read_bytes() == b'\x00' * 100


def test_damaged_stage1_cache_stops_the_run_and_is_kept(trained, tiny_mssl, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    cache = out / 'stage1_text_features.pt'
    damaged = cache.read_bytes()[:3000]
    cache.write_bytes(damaged)
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), 'SOLVER.STAGE1.MAX_EPOCHS', '1'), capsys)
    assert line.startswith(f"error: stage-1 cache '{cache}' is damaged or not a cache")
    assert 'move it away (or delete it) to learn the text features again' in line
    assert cache.read_bytes() == damaged
    assert torch.load(out / f'{MODEL}_2.pth', weights_only=True)['epoch'] == 2  # the run's results stay readable


def test_damaged_checkpoint_names_the_others_in_its_folder(trained, tiny_mssl, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    weights = out / f'{MODEL}_2.pth'
    weights.write_bytes(weights.read_bytes()[:2000])
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(tmp_path / 'test'), 'TEST.WEIGHT', str(weights)),
                 capsys)
    assert line.startswith(f"error: TEST.WEIGHT '{weights}' is truncated or not a PyTorch checkpoint")
    assert 'copy it again, or pass another checkpoint (that folder also has' in line
    assert f'{MODEL}_1.pth' in line


# ---------------------------------------------------------------------------------------------
# Images as they come
# ---------------------------------------------------------------------------------------------

def test_odd_images_under_a_non_ascii_root_train_and_test_with_loader_workers(tiny_mssl, tmp_path):
    root = tmp_path / 'données_航拍'
    shutil.copytree(tiny_mssl, root)
    for folder, count in (('bounding_box_train', len(ODD_KINDS)), ('bounding_box_test', 3), ('query', 2)):
        for kind, path in zip(ODD_KINDS[:count], sorted((root / folder).iterdir())):
            path.unlink()
            write_odd_image(kind, path.with_suffix(''))
    out = tmp_path / 'out'
    opts = ('DATALOADER.NUM_WORKERS', '1', *ONE_EPOCH)
    result = train_clipreid.main(tiny_opts(str(root), str(out), *opts))
    assert result['history'][0]['loss'] > 0
    metrics = test_clipreid.main(tiny_opts(str(root), str(out), *opts, 'TEST.WEIGHT', str(out / f'{MODEL}_1.pth')))
    assert json.loads((out / 'results_S2G.json').read_text())['num_gallery'] == metrics['S2G']['num_gallery']


# ---------------------------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------------------------

def test_gpu_out_of_memory_in_training_names_the_batch_setting_and_the_last_good_state(tiny_mssl, tmp_path, capsys,
                                                                                       monkeypatch):
    real_loss, real_set_epoch, epoch = make_loss.msp_stage2_loss, RandomIdentitySampler.set_epoch, []

    def set_epoch(self, number):
        epoch.append(number)
        real_set_epoch(self, number)

    def loss(*args, **kwargs):
        if epoch[-1] == 2:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)')
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(RandomIdentitySampler, 'set_epoch', set_epoch)
    monkeypatch.setattr(make_loss, 'msp_stage2_loss', loss)
    out = tmp_path / 'out'
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), *NO_STAGE1, 'SOLVER.STAGE2.CHECKPOINT_PERIOD',
                                                '1'), capsys)
    assert line == (f"error: the GPU ran out of memory in stage 2 epoch 2 iteration 1: set SOLVER.STAGE2.ACCUM_STEPS 2 "
                    f"to train the same batch of SOLVER.STAGE2.IMS_PER_BATCH 16 in smaller pieces, or lower "
                    f"SOLVER.STAGE2.IMS_PER_BATCH; the last good checkpoint is {out / MODEL}_1.pth, and "
                    f"{out / 'resume.pth'} holds the state after epoch 1")
    assert torch.load(out / 'resume.pth', weights_only=True)['epoch'] == 1
    assert not (out / 'train.lock').exists()
    # The advice works: the same batch in two sub-batches, resumed from the last good state.
    monkeypatch.setattr(make_loss, 'msp_stage2_loss', real_loss)
    result = train_clipreid.main(tiny_opts(tiny_mssl, str(out), *NO_STAGE1, 'SOLVER.STAGE2.ACCUM_STEPS', '2',
                                           'SOLVER.RESUME', 'auto'))
    assert [record['epoch'] for record in result['history']] == [1, 2]


@pytest.mark.parametrize('error', [
    MemoryError(),
    RuntimeError('[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to '
                 'allocate 9663676416 bytes.'),
])
def test_cpu_out_of_memory_in_extraction_names_test_ims_per_batch(trained, tiny_mssl, tmp_path, capsys, monkeypatch,
                                                                   error):
    def forward(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(ReIDModel, 'forward', forward)
    out = tmp_path / 'out'
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(out), 'TEST.WEIGHT', str(trained / f'{MODEL}_2.pth')),
                 capsys)
    assert line == 'error: the CPU memory ran out in feature extraction: lower TEST.IMS_PER_BATCH (32)'
    assert not list(out.glob('results_*.json'))


def test_out_of_memory_in_the_evaluation_during_training_adds_the_last_good_state(tiny_mssl, tmp_path, capsys,
                                                                                  monkeypatch):
    real_forward = ReIDModel.forward

    def forward(self, *args, **kwargs):
        if not self.training:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 1.00 GiB')
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(ReIDModel, 'forward', forward)
    out = tmp_path / 'out'
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), *NO_STAGE1, 'SOLVER.STAGE2.MAX_EPOCHS', '1'),
                 capsys)
    assert line == (f"error: the GPU ran out of memory in feature extraction: lower TEST.IMS_PER_BATCH (32); "
                    f"the last good checkpoint is {out / MODEL}_1.pth")


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(tiny_mssl, tmp_path, monkeypatch):
    def forward(self, *args, **kwargs):
        raise RuntimeError('mat1 and mat2 shapes cannot be multiplied')

    monkeypatch.setattr(ReIDModel, 'forward', forward)
    with pytest.raises(RuntimeError, match='shapes cannot be multiplied') as raised:
        test_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path / 'out'), 'TEST.EVAL_MODE', 'DDC'))
    assert not isinstance(raised.value, UserError)
