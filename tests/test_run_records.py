"""What a run records about itself: manifest.json, TensorBoard events, deterministic mode, and
tools/compare_results.py's account of two manifests."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import test_clipreid
import train_clipreid
from reporting import tensorboard
from reporting.manifest import manifest_differences
from tests.helpers import ROOT, tiny_opts
from utils.device import set_deterministic
from utils.errors import UserError

pytest.importorskip('tensorboard')
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

DETERMINISTIC = ['SOLVER.DETERMINISTIC', 'True']


@pytest.fixture(autouse=True)
def back_to_default_determinism():
    yield
    set_deterministic(False)


@pytest.fixture(scope='module')
def trained(tiny_mssl, tmp_path_factory):
    out = tmp_path_factory.mktemp('records')
    try:
        train_clipreid.main(tiny_opts(tiny_mssl, str(out), *DETERMINISTIC))
    finally:
        set_deterministic(False)
    return out


def scalars(folder) -> dict:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()['scalars']}


def jsonl(folder, event):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()
            if json.loads(line)['event'] == event]


def test_manifest_names_code_packages_device_config_data_seed_times(trained, tiny_mssl):
    manifest = json.loads((trained / 'manifest.json').read_text())
    assert manifest['status'] == 'finished' and manifest['run'] == 'train'
    assert set(manifest['packages']) == {'torch', 'torchvision', 'timm', 'open_clip_torch', 'numpy'}
    assert manifest['packages']['torch'] == torch.__version__.split('+')[0]
    head = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    assert manifest['git']['commit'] == head and isinstance(manifest['git']['dirty'], bool)
    assert manifest['device']['type'] == 'cpu' and manifest['device']['count'] >= 1
    assert manifest['config']['SOLVER']['STAGE2']['MAX_EPOCHS'] == 2 and manifest['deterministic'] is True
    assert manifest['seed'] == manifest['config']['SOLVER']['SEED'] == 1234
    splits = manifest['datasets']['train']['splits']
    assert (splits['train']['images'], splits['train']['identities']) == (64, 8)
    assert (splits['query']['images'], splits['gallery']['images']) == (8, 24)
    assert len({split['files_sha256'] for split in splits.values()}) == 3
    times = manifest['wall_time_s']
    assert {'setup', 'stage1', 'stage2', 'evaluation', 'total'} <= set(times)
    assert 0 < times['evaluation'] <= times['stage2'] <= times['total']
    assert manifest['peak_memory_mib']['process_rss'] > 100


def test_tensorboard_holds_the_metrics_jsonl_numbers(trained):
    tags = scalars(trained / 'tensorboard')
    for view in ('sky', 'ground'):
        assert [step for step, _ in tags[f'stage1/{view}/loss']] == [1, 2, 3]
        assert f'stage1/{view}/lr' in tags
    epochs = jsonl(trained, 'stage2_epoch')
    assert tags['stage2/loss'] == [(r['epoch'], pytest.approx(r['loss'], rel=1e-6)) for r in epochs]
    for name in ('acc', 'lr', 'loss_id', 'loss_triplet', 'loss_i2t_0', 'loss_i2t_1'):
        assert [step for step, _ in tags[f'stage2/{name}']] == [1, 2]
    for mode in ('S2G', 'G2S', 'DDC'):
        final = json.loads((trained / f'results_{mode}.json').read_text())
        for metric in ('mAP', 'rank1', 'rank5', 'rank10', 'mINP'):
            assert tags[f'eval/{mode}/{metric}'] == [(2, pytest.approx(final[metric], rel=1e-6))]


def test_iterations_are_plotted_at_their_global_step():
    record = {'event': 'stage2_iter', 'epoch': 3, 'iter': 5, 'iters': 10, 'loss': 1.5, 'loss_id': 0.5, 'acc': 0.25,
              'lr': 1e-4, 'time': 0.0}
    assert sorted(tensorboard.scalars(record)) == [('stage2_iter/acc', 0.25, 25), ('stage2_iter/loss', 1.5, 25),
                                                   ('stage2_iter/loss_id', 0.5, 25), ('stage2_iter/lr', 1e-4, 25)]
    assert tensorboard.scalars({'event': 'eval', 'mode': 'agreid/A2G', 'mAP': 0.5, 'num_query': 3, 'time': 0}) == \
        [('eval/agreid/A2G/mAP', 0.5, 0)]


def test_deterministic_runs_give_identical_weights(trained, tiny_mssl, tmp_path):
    train_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path), *DETERMINISTIC))
    assert torch.are_deterministic_algorithms_enabled()
    first = torch.load(trained / 'ViT-Tiny-16_2.pth', weights_only=True)['model']
    second = torch.load(tmp_path / 'ViT-Tiny-16_2.pth', weights_only=True)['model']
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_deterministic_mode_sets_what_pytorch_needs(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_a_resumed_run_keeps_the_earlier_manifest_and_continues_tensorboard(trained, tiny_mssl, tmp_path):
    out = tmp_path / 'resumed'
    shutil.copytree(trained, out)
    train_clipreid.main(tiny_opts(tiny_mssl, str(out), *DETERMINISTIC, 'SOLVER.RESUME', 'auto',
                                  'SOLVER.STAGE2.MAX_EPOCHS', '3'))
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['resumed_from_epoch'] == 2 and manifest['status'] == 'finished'
    assert [earlier['status'] for earlier in manifest['earlier']] == ['finished']
    assert 'stage1' not in manifest['wall_time_s']  # the text features came from the resume state
    assert [step for step, _ in scalars(out / 'tensorboard')['stage2/loss']] == [1, 2, 3]


def test_tensorboard_off_and_a_test_run_manifest(trained, tiny_mssl, tmp_path):
    test_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path), 'LOG.TENSORBOARD', 'False',
                                 'TEST.WEIGHT', str(trained / 'ViT-Tiny-16_2.pth')))
    assert not (tmp_path / 'tensorboard').exists()
    manifest = json.loads((tmp_path / 'manifest.json').read_text())
    assert manifest['run'] == 'test' and manifest['status'] == 'finished'
    assert manifest['wall_time_s']['evaluation'] > 0
    differences = {key: (a, b) for key, a, b in manifest_differences(
        json.loads((trained / 'manifest.json').read_text()), manifest)}
    assert differences['run'] == ('train', 'test')
    assert differences['config.LOG.TENSORBOARD'] == (True, False)
    assert 'config.TEST.WEIGHT' in differences and 'wall_time_s.total' not in differences


def test_a_run_failing_in_a_stage_says_so_and_one_stopping_before_leaves_the_manifest(trained, tiny_mssl, tmp_path):
    out = tmp_path / 'copy'
    shutil.copytree(trained, out)
    before = (out / 'manifest.json').read_bytes()
    with pytest.raises(SystemExit):  # a missing checkpoint: stops while setting up
        test_clipreid.main(tiny_opts(tiny_mssl, str(out), 'TEST.WEIGHT', str(tmp_path / 'none.pth')))
    assert (out / 'manifest.json').read_bytes() == before
    assert not list((out / 'tensorboard').glob('*'))[1:]  # still the training's one event file

    data = tmp_path / 'data'
    shutil.copytree(tiny_mssl, data)
    sorted((data / 'bounding_box_test').iterdir())[0].write_bytes(b'not an image')
    with pytest.raises(SystemExit):  # an unreadable gallery image: stops in the evaluation
        test_clipreid.main(tiny_opts(str(data), str(tmp_path / 'failed')))
    manifest = json.loads((tmp_path / 'failed' / 'manifest.json').read_text())
    assert manifest['status'] == 'failed' and manifest['ended'] and 'evaluation' in manifest['wall_time_s']


@pytest.mark.slow
def test_compare_results_lists_what_differs(trained, tiny_mssl, tmp_path):
    train_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path), 'SOLVER.SEED', '7'))
    result = subprocess.run([sys.executable, 'tools/compare_results.py', str(trained), str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('protocol') and len(lines) == 4 + 1 + 4
    assert 'the manifests differ in 4 entries' in lines[4]
    differing = sorted(line.split()[0] for line in lines[5:])
    assert differing == ['config.SOLVER.DETERMINISTIC', 'config.SOLVER.SEED', 'deterministic', 'seed']


def test_without_the_tensorboard_package_the_run_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # makes its import fail
    with pytest.raises(UserError, match=r'LOG.TENSORBOARD True needs the tensorboard package .*LOG.TENSORBOARD False'):
        tensorboard.open_writer(str(tmp_path))
    assert not (tmp_path / 'tensorboard').exists()
