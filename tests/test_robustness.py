"""Bad input, untrusted files and interrupted runs, through the real command-line entry points.

Every mistake must end the run with exit code 2 and one line `error: ...` on stderr, and leave no
half-written output. The kill test runs the training script in subprocesses and SIGKILLs it.
"""
import errno
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import test_clipreid
import train_clipreid
from config import load_config
from datasets import init_dataset
from model import make_model
from loss import make_loss
from tests.helpers import ROOT, fails, tiny_opts
from processor import resume as training_state
from utils import atomic_io
from utils.errors import UserError
from processor.settings import model_settings

MODEL = 'ViT-Tiny-16'
SHORT = ('SOLVER.STAGE1.MAX_EPOCHS', '1', 'SOLVER.STAGE2.MAX_EPOCHS', '1')  # one epoch of each stage


def written_outputs(out: Path) -> list:
    """Checkpoints, caches, results and temporary files in an output folder (logs and manifest.json, the
    record of what ran, do not count)."""
    return sorted(p.name for p in out.glob('*') if p.suffix in ('.pth', '.pt', '.json', '.npz', '.tmp')
                  and p.name != 'manifest.json') + \
        sorted(p.name for p in out.glob('.*.tmp'))


@pytest.fixture
def data(tiny_mssl, tmp_path) -> Path:
    """A private copy of the tiny dataset, to damage."""
    root = tmp_path / 'data'
    shutil.copytree(tiny_mssl, root)
    return root


def first_image(root: Path, split: str) -> Path:
    return sorted((root / split).iterdir())[0]


# ---------------------------------------------------------------------------------------------
# Bad datasets
# ---------------------------------------------------------------------------------------------

def test_missing_dataset_root(tmp_path, capsys):
    line = fails(test_clipreid.main, tiny_opts(str(tmp_path / 'nowhere'), str(tmp_path / 'out')), capsys)
    assert line == f"error: DATASETS.ROOT_DIR '{tmp_path / 'nowhere'}' does not exist"


def test_missing_and_empty_split_folders(data, tmp_path, capsys):
    shutil.rmtree(data / 'query')
    line = fails(test_clipreid.main, tiny_opts(str(data), str(tmp_path / 'out')), capsys)
    assert f"dataset folder '{data / 'query'}' does not exist" in line
    (data / 'query').mkdir()
    (data / 'query' / 'notes.txt').write_text('not an image')
    line = fails(test_clipreid.main, tiny_opts(str(data), str(tmp_path / 'out')), capsys)
    assert f"dataset folder '{data / 'query'}' contains no usable images" in line


@pytest.mark.parametrize('name, message', [
    ('person.jpg', "MSSL file name 'person.jpg' has 1 '_'-separated fields"),
    ('abcd_0311pm_3_G032_c07_p0061_00.jpg', "does not start with a numeric person id"),
    ('0061_0311pm_3_G032_c16_p0061_00.jpg', "has the unknown camera 'c16'"),
])
def test_file_names_that_do_not_parse(data, tmp_path, capsys, name, message):
    shutil.copy(first_image(data, 'bounding_box_test'), data / 'bounding_box_test' / name)
    line = fails(test_clipreid.main, tiny_opts(str(data), str(tmp_path / 'out')), capsys)
    assert message in line and name in line


@pytest.mark.parametrize('workers', [0, 1])
def test_corrupt_gallery_image_names_its_path(data, tmp_path, capsys, workers):
    bad = first_image(data, 'bounding_box_test')
    bad.write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    out = tmp_path / 'out'
    line = fails(test_clipreid.main, tiny_opts(str(data), str(out), 'DATALOADER.NUM_WORKERS', str(workers)),
                 capsys)
    assert line.startswith(f"error: cannot read image '{bad}'")
    assert written_outputs(out) == []


def test_truncated_training_image_stops_training_before_anything_is_saved(data, tmp_path, capsys):
    bad = first_image(data, 'bounding_box_train')
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / 'out'
    line = fails(train_clipreid.main, tiny_opts(str(data), str(out)), capsys)
    assert line.startswith(f"error: cannot read image '{bad}'")
    assert written_outputs(out) == []


@pytest.mark.slow
def test_skip_bad_images_drops_them_up_front_and_counts_them(data, tmp_path, capsys):
    bad_train = first_image(data, 'bounding_box_train')
    bad_train.write_bytes(bad_train.read_bytes()[:200])
    bad_gallery = first_image(data, 'bounding_box_test')
    bad_gallery.write_bytes(b'garbage')
    num_gallery = len(list((data / 'bounding_box_test').iterdir()))
    out = tmp_path / 'out'
    train_clipreid.main(tiny_opts(str(data), str(out), 'DATALOADER.SKIP_BAD_IMAGES', 'True', *SHORT))
    log = (out / 'train_log.txt').read_text()
    assert '2 of ' in log and 'images are unreadable and skipped' in log
    assert str(bad_train) in log and str(bad_gallery) in log
    # Evaluation saw every other gallery image, each with its own label.
    for mode in ('S2G', 'G2S', 'DDC'):
        assert json.loads((out / f'results_{mode}.json').read_text())['num_gallery'] == num_gallery - 1


# ---------------------------------------------------------------------------------------------
# Bad configuration
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('main, args, message', [
    (test_clipreid.main, ['MODEL.NOT_A_KEY', '1'], 'unknown config key MODEL.NOT_A_KEY'),
    (test_clipreid.main, ['SOLVER.STAGE2.MAX_EPOCHS', 'many'], 'SOLVER.STAGE2.MAX_EPOCHS'),
    (test_clipreid.main, ['INPUT.PROB', '1.5'], "INPUT.PROB = 1.5: must be a number in [0, 1]"),
    (test_clipreid.main, ['TEST.EVAL_MODE', 'S2S'], "TEST.EVAL_MODE = 'S2S': must be one of S2G, G2S, DDC, ALL"),
    (test_clipreid.main, ['MODEL.STRIDE_SIZE', '[20, 20]'],
     'MODEL.STRIDE_SIZE [20, 20] must be between 1 and the patch size [16, 16]'),
    (test_clipreid.main, ['INPUT.SIZE_TRAIN', '[8, 8]', 'INPUT.SIZE_TEST', '[8, 8]'],
     'INPUT.SIZE_TRAIN [8, 8] is smaller than the patch size [16, 16]'),
    (test_clipreid.main, ['INPUT.SIZE_TEST', '[96, 32]'], 'INPUT.SIZE_TEST = [96, 32]: must equal INPUT.SIZE_TRAIN'),
    (train_clipreid.main, ['DATALOADER.NUM_INSTANCE', '3'],
     'DATALOADER.NUM_INSTANCE = 3: must divide SOLVER.STAGE2.IMS_PER_BATCH (16)'),
    (train_clipreid.main, ['SOLVER.STAGE2.IMS_PER_BATCH', '64'],
     'needs 16 identities per batch, but the training set has only 8'),
    (train_clipreid.main, ['SOLVER.KEEP_CHECKPOINTS', '-1'], 'SOLVER.KEEP_CHECKPOINTS = -1: must be an integer >= 0'),
    (test_clipreid.main, ['TEST.WEIGHT', '/nowhere/model.pth'], "TEST.WEIGHT '/nowhere/model.pth' does not exist"),
    (train_clipreid.main, ['SOLVER.RESUME', '/nowhere/resume.pth'],
     "SOLVER.RESUME '/nowhere/resume.pth' does not exist"),
    (train_clipreid.main, ['MODEL.NAME', 'ViT-B-16', 'MODEL.PRETRAIN_PATH', '/nowhere/ViT-B-16.pt'],
     "MODEL.PRETRAIN_PATH '/nowhere/ViT-B-16.pt' does not exist"),
])
def test_config_mistakes(tiny_mssl, tmp_path, capsys, main, args, message):
    out = tmp_path / 'out'
    line = fails(main, tiny_opts(tiny_mssl, str(out), *args), capsys)
    assert message in line
    assert written_outputs(out) == []


def test_unknown_key_in_a_yaml_file(tiny_mssl, tmp_path, capsys):
    config = tmp_path / 'run.yml'
    config.write_text('SOLVER:\n  STAGE2:\n    MAX_EPOCH: 10\n')
    line = fails(train_clipreid.main, ['--config_file', str(config), *tiny_opts(tiny_mssl, str(tmp_path))], capsys)
    assert line == f"error: --config_file '{config}': unknown config key SOLVER.STAGE2.MAX_EPOCH (see config/defaults.py)"


def test_clip_weights_missing_offline(tiny_mssl, tmp_path, capsys, monkeypatch):
    for var, value in (('HF_HUB_OFFLINE', '1'), ('HF_HOME', tmp_path / 'hf'), ('XDG_CACHE_HOME', tmp_path / 'cache'),
                       ('HOME', tmp_path)):
        monkeypatch.setenv(var, str(value))
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(tmp_path / 'out'), 'MODEL.NAME', 'ViT-B-16'), capsys)
    assert "no weights for MODEL.NAME 'ViT-B-16'" in line and 'pass MODEL.PRETRAIN_PATH' in line


def test_output_dir_that_cannot_be_created_or_written(tiny_mssl, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / 'file'
    blocker.write_text('')
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(blocker / 'out')), capsys)
    assert line == f"error: OUTPUT_DIR '{blocker / 'out'}' cannot be created: Not a directory"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system')

    # The write probe is what catches a read-only folder for root, to whom os.access says yes.
    monkeypatch.setattr('processor.run.tempfile.TemporaryFile', read_only)
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(tmp_path / 'out')), capsys)
    assert line == f"error: OUTPUT_DIR '{tmp_path / 'out'}' is not writable: Read-only file system"


@pytest.mark.skipif(os.geteuid() == 0, reason='root may write into a read-only folder')
def test_read_only_output_dir(tiny_mssl, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir(mode=0o500)
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(out)), capsys)
    assert line == f"error: OUTPUT_DIR '{out}' is not writable"


def test_grid_that_misses_pixels_is_noted_in_the_log(tiny_mssl, tmp_path):
    # 32 px wide at patch 16, stride 12: columns 0-27 are seen, the last 4 are not (CLIP-ReID floors too).
    out = tmp_path / 'out'
    test_clipreid.main(tiny_opts(tiny_mssl, str(out), 'TEST.EVAL_MODE', 'DDC'))
    assert 'a 5x2 patch grid; the last 0 pixel row(s) and 4 column(s) are not seen' in (out / 'test_log.txt').read_text()


# ---------------------------------------------------------------------------------------------
# Untrusted and mismatched checkpoints
# ---------------------------------------------------------------------------------------------

class Payload:
    """Unpickling this would create a file: proof that a checkpoint ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def reid_weights(path: Path, root: str, *overrides: str, num_classes: int = 0) -> Path:
    cfg = load_config('', tiny_opts(root, str(path.parent), *overrides))
    dataset = init_dataset('mssl', root)
    model = make_model(model_settings(cfg), num_classes or dataset.num_train_pids, dataset.num_train_cams,
                       dataset.num_train_views, load_pretrained=False)
    torch.save({'model': model.image_state_dict(), 'epoch': 1}, path)
    return path


@pytest.mark.parametrize('key', ['TEST.WEIGHT', 'SOLVER.RESUME'])
def test_checkpoint_that_needs_pickle_is_refused_without_running_it(tiny_mssl, tmp_path, capsys, key):
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'model': {}, 'extra': Payload(str(marker))}, evil)
    main = test_clipreid.main if key == 'TEST.WEIGHT' else train_clipreid.main
    line = fails(main, tiny_opts(tiny_mssl, str(tmp_path / 'out'), key, str(evil)), capsys)
    assert line.startswith(f"error: {key} '{evil}' was refused: it holds pickled Python objects")
    assert 'weights_only=True' in line
    assert not marker.exists()


def test_truncated_checkpoint(tiny_mssl, tmp_path, capsys):
    weights = reid_weights(tmp_path / 'w.pth', tiny_mssl)
    weights.write_bytes(weights.read_bytes()[:1000])
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(tmp_path / 'out'), 'TEST.WEIGHT', str(weights)), capsys)
    assert line.startswith(f"error: TEST.WEIGHT '{weights}' is truncated or not a PyTorch checkpoint")


@pytest.mark.parametrize('trained_with, tested_with, hint', [
    ((), ('MODEL.SIE_CAMERA', 'False', 'MODEL.SIE_VIEW', 'False'), 'pass MODEL.SIE_CAMERA True MODEL.SIE_VIEW True'),
    (('MODEL.SIE_CAMERA', 'False', 'MODEL.SIE_VIEW', 'False'), (), 'pass MODEL.SIE_CAMERA False MODEL.SIE_VIEW False'),
    (('MODEL.SIE_VIEW', 'False'), (), 'pass MODEL.SIE_CAMERA True MODEL.SIE_VIEW False'),
    (('MODEL.STRIDE_SIZE', '[16, 16]'), (), 'pass the INPUT.SIZE_TRAIN and MODEL.STRIDE_SIZE it was trained with'),
])
def test_mismatched_checkpoint_names_the_override(tiny_mssl, tmp_path, capsys, trained_with, tested_with, hint):
    weights = reid_weights(tmp_path / 'w.pth', tiny_mssl, *trained_with)
    out = tmp_path / 'out'
    line = fails(test_clipreid.main, tiny_opts(tiny_mssl, str(out), *tested_with, 'TEST.WEIGHT', str(weights)),
                 capsys)
    assert hint in line
    assert written_outputs(out) == []


def test_checkpoint_of_another_identity_count_is_tested_without_its_classifiers(tiny_mssl, tmp_path):
    weights = reid_weights(tmp_path / 'w.pth', tiny_mssl, num_classes=5)
    out = tmp_path / 'out'
    result = test_clipreid.main(tiny_opts(tiny_mssl, str(out), 'TEST.EVAL_MODE', 'S2G', 'TEST.WEIGHT', str(weights)))
    assert set(result) == {'S2G'}
    assert 'checkpoint classifier has 5 identities, the dataset 8: classifiers not loaded' in \
        (out / 'test_log.txt').read_text()


# ---------------------------------------------------------------------------------------------
# Training: a diverging loss, resume states
# ---------------------------------------------------------------------------------------------

def test_non_finite_loss_stops_with_the_iteration_and_the_last_good_checkpoint(tiny_mssl, tmp_path, capsys,
                                                                              monkeypatch):
    poisoned = []
    real_loss, real_save = make_loss.msp_stage2_loss, training_state.save_resume_state

    def loss(*args, **kwargs):
        value, parts = real_loss(*args, **kwargs)
        return (value * float('nan') if poisoned else value), parts

    def save_then_poison(*args, **kwargs):
        path = real_save(*args, **kwargs)
        poisoned.append(True)  # the loss turns NaN right after the first epoch is saved
        return path

    monkeypatch.setattr(make_loss, 'msp_stage2_loss', loss)  # what Stage2Criterion calls
    monkeypatch.setattr(training_state, 'save_resume_state', save_then_poison)
    out = tmp_path / 'out'
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), 'SOLVER.STAGE1.MAX_EPOCHS', '1',
                                                'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1'), capsys)
    assert line.startswith(
        f"error: stage 2 loss became non-finite (NaN or Inf) at epoch 2 iteration 1; the last good checkpoint is {out / MODEL}_1.pth, "
        f"and {out / 'resume.pth'} holds the state after epoch 1")
    assert not (out / f'{MODEL}_2.pth').exists()
    assert torch.load(out / 'resume.pth', weights_only=True)['epoch'] == 1


@pytest.fixture(scope='module')
def one_epoch_run(tiny_mssl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('one_epoch')
    train_clipreid.main(tiny_opts(tiny_mssl, str(out), *SHORT))
    return out


def test_resume_state_holds_everything_and_loads_weights_only(one_epoch_run):
    state = torch.load(one_epoch_run / 'resume.pth', map_location='cpu', weights_only=True)
    assert state['epoch'] == 1 and state['stage'] == 2
    assert {'model', 'optimizer', 'scheduler', 'scaler', 'rng', 'text_features', 'stage1_cache',
            'history', 'config'} <= set(state)
    assert set(state['text_features']) == {'ground', 'sky'}
    assert state['optimizer']['state'] and state['scheduler']['last_epoch'] == 1
    assert state['last_checkpoint'] == str(one_epoch_run / f'{MODEL}_1.pth')


@pytest.mark.parametrize('args, message', [
    (['SOLVER.RESUME', '{weights}'], "holds re-ID weights only, not a resume state"),
    (['SOLVER.RESUME', '{resume}', 'MODEL.NAME', 'ViT-B-16'],
     "was trained with MODEL.NAME 'ViT-Tiny-16', this run has 'ViT-B-16'; pass MODEL.NAME ViT-Tiny-16"),
    (['SOLVER.RESUME', '{resume}', 'MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)",
      'MODEL.I2T_LOSS_WEIGHTS', '(1.0,)'], 'holds no stage-1 text features of the view(s) all'),
    (['SOLVER.RESUME', '{resume}', 'MODEL.SIE_CAMERA', 'False', 'MODEL.SIE_VIEW', 'False'],
     'pass MODEL.SIE_CAMERA True MODEL.SIE_VIEW True'),
])
def test_resume_mistakes(one_epoch_run, tiny_mssl, tmp_path, capsys, args, message):
    paths = {'weights': str(one_epoch_run / f'{MODEL}_1.pth'), 'resume': str(one_epoch_run / 'resume.pth')}
    args = [arg.format(**paths) for arg in args]
    out = tmp_path / 'out'
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), 'SOLVER.STAGE2.MAX_EPOCHS', '2', *args), capsys)
    assert message in line
    assert written_outputs(out) == []


def test_damaged_resume_state_is_reported_and_left_alone(one_epoch_run, tiny_mssl, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    damaged = (one_epoch_run / 'resume.pth').read_bytes()[:5000]
    (out / 'resume.pth').write_bytes(damaged)
    line = fails(train_clipreid.main, tiny_opts(tiny_mssl, str(out), 'SOLVER.RESUME', 'auto'), capsys)
    assert line.startswith(f"error: SOLVER.RESUME auto: '{out / 'resume.pth'}' is truncated or not a PyTorch checkpoint")
    assert (out / 'resume.pth').read_bytes() == damaged


def test_resume_state_can_be_tested_like_a_checkpoint(one_epoch_run, tiny_mssl, tmp_path):
    result = test_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path), 'TEST.EVAL_MODE', 'DDC',
                                          'TEST.WEIGHT', str(one_epoch_run / 'resume.pth')))
    expected = json.loads((one_epoch_run / 'results_DDC.json').read_text())
    assert result['DDC']['mAP'] == pytest.approx(expected['mAP'], abs=1e-6)


@pytest.mark.slow
def test_resume_with_loader_workers_gives_the_uninterrupted_weights(tiny_mssl, tmp_path):
    # Workers are seeded per epoch from SOLVER.SEED, so their augmentation does not depend on history.
    opts = ('DATALOADER.NUM_WORKERS', '1', 'MODEL.I2T_LOSS_WEIGHTS', '(0.0, 0.0, 0.0)',  # no stage 1
            'SOLVER.STAGE2.EVAL_PERIOD', '9')
    train_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path / 'straight'), *opts))
    train_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path / 'resumed'), *opts, 'SOLVER.STAGE2.MAX_EPOCHS', '1'))
    train_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path / 'resumed'), *opts, 'SOLVER.RESUME', 'auto'))
    straight = torch.load(tmp_path / 'straight' / f'{MODEL}_2.pth', weights_only=True)['model']
    resumed = torch.load(tmp_path / 'resumed' / f'{MODEL}_2.pth', weights_only=True)['model']
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = training_state.capture_rng(torch.device('cpu'))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({'rng': [state]}, tmp_path / 'rng.pth')
    loaded = torch.load(tmp_path / 'rng.pth', weights_only=True)['rng'][0]
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    training_state.restore_rng(loaded, torch.device('cpu'))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


def test_pruning_keeps_the_newest_checkpoints_of_this_run(tmp_path):
    for epoch in (1, 2, 3, 5, 9):
        (tmp_path / f'{MODEL}_{epoch}.pth').write_bytes(b'x')
    (tmp_path / 'resume.pth').write_bytes(b'x')
    (tmp_path / f'{MODEL}_best.pth').write_bytes(b'x')
    assert training_state.prune_checkpoints(str(tmp_path), MODEL, 0, 5) == []
    removed = training_state.prune_checkpoints(str(tmp_path), MODEL, 2, 5)
    assert sorted(Path(p).name for p in removed) == [f'{MODEL}_1.pth', f'{MODEL}_2.pth']
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f'{MODEL}_3.pth', f'{MODEL}_5.pth', f'{MODEL}_9.pth', 'resume.pth', f'{MODEL}_best.pth'])


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'resume.pth'
    atomic_io.torch_save({'epoch': 1}, str(path))

    def disk_full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(atomic_io.os, 'fsync', disk_full)
    with pytest.raises(UserError, match="cannot write '.*resume.pth': No space left on device; the previous"):
        atomic_io.torch_save({'epoch': 2}, str(path))
    assert torch.load(path, weights_only=True) == {'epoch': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['resume.pth']


class OnAGpu(torch.Tensor):
    """Stands in for a CUDA tensor on a machine without one: it becomes a plain tensor only when moved
    to the CPU (a file holding it cannot be read with torch.load(weights_only=True))."""
    moved = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and torch.device(
            kwargs.get('device', args[1] if len(args) > 1 else 'cpu')).type == 'cpu')
        if to_cpu:
            cls.moved += 1
            with torch._C.DisableTorchFunctionSubclass():
                return args[0].as_subclass(torch.Tensor).clone()
        return super().__torch_function__(func, types, args, kwargs)


def test_files_are_written_with_cpu_tensors(tmp_path):
    """What a GPU run saves (weights, resume state, the published-format export) loads with a plain
    torch.load on a machine without a GPU."""
    OnAGpu.moved = 0
    weights = torch.arange(6.0).reshape(2, 3)
    state = OrderedDict([('layer.weight', weights.as_subclass(OnAGpu)),
                         ('nested', [(weights.as_subclass(OnAGpu),)])])
    path = tmp_path / 'ViT-B-16_60.pth'
    atomic_io.torch_save(state, str(path))
    loaded = torch.load(path, weights_only=True)
    assert OnAGpu.moved == 2
    assert isinstance(loaded, OrderedDict) and type(loaded['layer.weight']) is torch.Tensor
    assert torch.equal(loaded['layer.weight'], weights) and torch.equal(loaded['nested'][0][0], weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device to save from')
def test_checkpoint_saved_from_a_gpu_loads_where_there_is_none(tmp_path):
    cfg = load_config('', tiny_opts('unused', str(tmp_path)))
    model = make_model(model_settings(cfg), 4, camera_num=3, view_num=2, load_pretrained=False).to('cuda')
    from processor.stage2 import save_checkpoint
    path = save_checkpoint(cfg, model, 1)
    code = (f"import torch; state = torch.load({path!r}, weights_only=True); "
            f"print({{tensor.device.type for tensor in state['model'].values()}})")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert done.returncode == 0 and done.stdout.strip() == "{'cpu'}", done.stderr


# ---------------------------------------------------------------------------------------------
# Kill test: SIGKILL mid-epoch and mid-save, resume, same weights as an uninterrupted run
# ---------------------------------------------------------------------------------------------

# Runs train_clipreid.main; HANG_AT makes it stop and wait to be killed at a chosen point:
#   'iter:E:S'    inside stage-2 epoch E, before the loss of iteration S (S-1 steps of E are done);
#   'save:NAME:N' during the N-th save of NAME, with the temporary file half-written.
DRIVER = r'''
import os, sys, time
import torch
import datasets.sampler
import loss.make_loss

def hang(where):
    print('HANGING ' + where, flush=True)
    time.sleep(600)

target = os.environ.get('HANG_AT', '')
if target.startswith('iter:'):
    epoch, step = (int(v) for v in target.split(':')[1:])
    now = {'epoch': 0, 'step': 0}
    real_set_epoch, real_loss = datasets.sampler.RandomIdentitySampler.set_epoch, loss.make_loss.msp_stage2_loss
    def set_epoch(self, e):
        now.update(epoch=e, step=0)
        real_set_epoch(self, e)
    def counting_loss(*args, **kwargs):
        now['step'] += 1
        if (now['epoch'], now['step']) == (epoch, step):
            hang(target)
        return real_loss(*args, **kwargs)
    datasets.sampler.RandomIdentitySampler.set_epoch = set_epoch
    loss.make_loss.msp_stage2_loss = counting_loss
elif target.startswith('save:'):
    name, nth = target.split(':')[1:]
    real_save, seen = torch.save, []
    def save(obj, f, *args, **kwargs):
        if os.path.basename(str(f)).startswith('.' + name + '.'):
            seen.append(f)
            if len(seen) == int(nth):
                real_save(obj, f, *args, **kwargs)
                with open(f, 'r+b') as handle:
                    handle.truncate(os.path.getsize(f) // 2)
                hang(target)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save

import train_clipreid
train_clipreid.main(sys.argv[1:])
'''


def start_training(argv: list, hang_at: str = '') -> subprocess.Popen:
    env = {**os.environ, 'HANG_AT': hang_at}
    return subprocess.Popen([sys.executable, '-c', DRIVER, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_when_hanging(proc: subprocess.Popen, timeout_s: float = 240) -> None:
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, 'the run ended before reaching its hang point:\n' + ''.join(seen[-30:])
            continue
        seen.append(line)
        if line.startswith('HANGING'):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return
    proc.kill()
    raise AssertionError('the run never reached its hang point:\n' + ''.join(seen[-30:]))


def finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]


def assert_every_checkpoint_loads(out: Path) -> None:
    for path in out.iterdir():
        if path.suffix in ('.pth', '.pt') and not path.name.startswith('.'):
            torch.load(path, map_location='cpu', weights_only=True)  # raises on a truncated file


@pytest.mark.slow
def test_killed_mid_epoch_and_mid_save_then_resumed_matches_an_uninterrupted_run(tiny_mssl, tmp_path):
    opts = ['SOLVER.STAGE1.MAX_EPOCHS', '1', 'SOLVER.STAGE2.MAX_EPOCHS', '3', 'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1',
            'SOLVER.KEEP_CHECKPOINTS', '2', 'SOLVER.RESUME', 'auto']
    reference_out, out = tmp_path / 'reference', tmp_path / 'killed'
    reference = start_training(tiny_opts(tiny_mssl, str(reference_out), *opts))
    argv = tiny_opts(tiny_mssl, str(out), *opts)

    kill_when_hanging(start_training(argv, hang_at='iter:2:2'))  # mid-epoch 2: one step of it is done
    assert_every_checkpoint_loads(out)
    assert torch.load(out / 'resume.pth', weights_only=True)['epoch'] == 1

    kill_when_hanging(start_training(argv, hang_at='save:resume.pth:1'))  # epoch 2 redone, killed saving it
    assert_every_checkpoint_loads(out)
    assert torch.load(out / 'resume.pth', weights_only=True)['epoch'] == 1
    assert len(list(out.glob('.resume.pth.*.tmp'))) == 1

    finish(start_training(argv))
    finish(reference)
    assert_every_checkpoint_loads(out)
    assert list(out.glob('.*.tmp')) == []
    assert 'left by a save that was interrupted' in (out / 'train_log.txt').read_text()
    assert sorted(p.name for p in out.glob('*.pth')) == [f'{MODEL}_2.pth', f'{MODEL}_3.pth', 'resume.prev.pth',
                                                         'resume.pth']
    assert torch.load(out / 'resume.prev.pth', weights_only=True)['epoch'] == 2
    resumed = torch.load(out / f'{MODEL}_3.pth', weights_only=True)['model']
    uninterrupted = torch.load(reference_out / f'{MODEL}_3.pth', weights_only=True)['model']
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert json.loads((out / 'results_DDC.json').read_text()) == json.loads(
        (reference_out / 'results_DDC.json').read_text())
