"""Every dataset trains and evaluates each of its protocols through the scripts, on fixtures in the
published layouts; training on the synthetic MSSL and testing on AG-ReID runs from one command."""
import json
import os

import numpy as np
import pytest

from datasets import init_dataset
from datasets.fixtures import generate
import test_clipreid
import train_clipreid
from tests.helpers import ROOT, TINY_OPTS, assert_results_are_the_evaluators, run_script, tiny_opts

pytestmark = pytest.mark.slow


def tiny_run(name: str, root: str, out: str, *extra: str) -> list:
    return [*TINY_OPTS, 'DATASETS.NAMES', name, 'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', out,
            'TEST.SAVE_FEATURES', 'True', *extra]


def read_results(folder, protocols, dataset):
    """The run's results, checked against the evaluator on the features it saved."""
    return assert_results_are_the_evaluators(folder, protocols, dataset)


@pytest.mark.parametrize('name', ['agreid_v2', 'cargo', 'g2aps_reid', 'lagper', 'csv'])
def test_dataset_trains_and_evaluates_every_protocol(tmp_path, name):
    root = generate(name, str(tmp_path / 'data'), train_ids=8, test_ids=4, seed=2)
    dataset = init_dataset(name, root)
    protocols = dataset.supported_modes
    out = tmp_path / 'train'
    result = run_script('train_clipreid.py', *tiny_run(name, root, str(out)))
    assert result.returncode == 0, result.stderr[-2000:]
    trained = read_results(out, protocols, dataset)
    # The checkpoint evaluated by test_clipreid.py in one protocol gives the training's figures.
    protocol = protocols[-1]
    tested = tmp_path / 'test'
    result = run_script('test_clipreid.py', *tiny_run(name, root, str(tested), 'TEST.EVAL_MODE', protocol,
                                                       'TEST.WEIGHT', str(out / 'ViT-Tiny-16_2.pth')))
    assert result.returncode == 0, result.stderr[-2000:]
    tested_mAP = read_results(tested, [protocol], dataset)[protocol]['mAP']
    assert tested_mAP == pytest.approx(trained[protocol]['mAP'], abs=1e-6)
    assert sorted(p.name for p in tested.glob('results_*.json')) == [f'results_{protocol}.json']

def test_train_on_mssl_and_test_on_agreid_in_one_command(tiny_mssl, tmp_path):
    agreid = generate('agreid', str(tmp_path / 'agreid'), seed=4)
    out = tmp_path / 'cross'
    result = run_script('train_clipreid.py', *tiny_opts(tiny_mssl, str(out), 'DATASETS.TEST_NAMES', 'agreid',
                                                         'DATASETS.TEST_ROOT_DIR', agreid,
                                                         'TEST.SAVE_FEATURES', 'True'))
    assert result.returncode == 0, result.stderr[-2000:]
    read_results(out / 'test_agreid', ('S2G', 'G2S', 'DDC'), init_dataset('agreid', agreid))
    assert not list(out.glob('results_*.json'))  # reported per test dataset, not as MSSL's
    log = (out / 'train_log.txt').read_text()
    assert "test dataset 'agreid': its cameras are not the training cameras of 'mssl'" in log
    evals = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines() if '"eval"' in line]
    assert sorted(record['mode'] for record in evals) == ['agreid/DDC', 'agreid/G2S', 'agreid/S2G']

    # A protocol the test dataset does not declare: one line naming the valid ones, exit code 2.
    result = run_script('test_clipreid.py', *tiny_opts(tiny_mssl, str(tmp_path / 'bad'), 'DATASETS.TEST_NAMES',
                                                        'lagper', 'DATASETS.TEST_ROOT_DIR', agreid,
                                                        'TEST.EVAL_MODE', 'S2G'))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: TEST.EVAL_MODE = 'S2G': must be one of A2G, G2A, G2AG, ALL (the protocols of dataset 'lagper')"]


def test_bad_csv_row_stops_the_script_with_one_line(tmp_path):
    root = generate('csv', str(tmp_path / 'data'), seed=5)
    csv_path = os.path.join(root, 'dataset.csv')
    with open(csv_path, 'a') as handle:
        handle.write('images/person_1/0.jpg,person_1,front,ground,train\n')
    result = run_script('train_clipreid.py', *tiny_run('csv', root, str(tmp_path / 'out')))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {csv_path} line ')
    assert "camera 'front' is not an integer" in lines[0]


# ---- CLIP-ReID's datasets, configs and README commands, shape-wise: the tiny model on the fixtures ----

def tiny_shapes(name: str, root: str, out, model: str = 'ViT-Tiny-16') -> list:
    """Small images, batches and one epoch of each stage, after a config's own values (no SIE, which
    the commands set themselves)."""
    return ['MODEL.NAME', model, 'MODEL.DEVICE', 'cpu', 'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]',
            'INPUT.PADDING', '4', 'DATALOADER.NUM_WORKERS', '0', 'SOLVER.STAGE1.IMS_PER_BATCH', '16',
            'SOLVER.STAGE1.MAX_EPOCHS', '1', 'SOLVER.STAGE1.WARMUP_EPOCHS', '1', 'SOLVER.STAGE2.IMS_PER_BATCH', '16',
            'SOLVER.STAGE2.MAX_EPOCHS', '1', 'SOLVER.STAGE2.BASE_LR', '0.0005', 'SOLVER.STAGE2.EVAL_PERIOD', '1',
            'SOLVER.STAGE2.CHECKPOINT_PERIOD', '1', 'TEST.IMS_PER_BATCH', '32', 'TEST.SAVE_FEATURES', 'True',
            'DATASETS.NAMES', name, 'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', str(out)]


# CLIP-ReID's CNN configs need MODEL.NAME RN50; its tiny stand-in, where this checkout has it.
TINY_CNN = 'RN-Tiny' if (ROOT / 'model' / 'model_configs' / 'RN-Tiny.json').exists() else 'ViT-Tiny-16'
CLIPREID_MARKET = ['MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)", 'MODEL.I2T_LOSS_WEIGHTS',
                   '(1.0,)', 'SOLVER.STAGE2.BASE_LR', '0.000005', 'SOLVER.STAGE2.EVAL_PERIOD', '60']


@pytest.mark.parametrize('name, config, model, extra', [
    # CLIP-ReID's README: the CNN baseline on Market-1501 (its train.py; stage 2 only here)
    ('market1501', 'configs/person/cnn_base.yml', TINY_CNN, []),
    # the MSP recipe with docs/fidelity.md's overrides for CLIP-ReID's recipe
    ('dukemtmcreid', 'configs/person/vit_clipreid.yml', 'ViT-Tiny-16', CLIPREID_MARKET),
    ('occ_duke', 'configs/person/vit_base.yml', 'ViT-Tiny-16', []),
    # VeRi-776 with SIE on camera and viewpoint: a table of 13 cameras x 8 viewpoints
    ('veri', 'configs/veri/vit_prom.yml', 'ViT-Tiny-16', ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True']),
])
def test_clipreid_dataset_trains_and_evaluates_with_its_config(tmp_path, name, config, model, extra):
    root = generate(name, str(tmp_path / 'data'), train_ids=4, test_ids=3)
    out = tmp_path / 'train'
    train_clipreid.main(['--config_file', config, *tiny_shapes(name, root, out, model), *extra])  # in-process: faster
    read_results(out, ['DDC'], init_dataset(name, root))
    assert (out / f'{model}_1.pth').is_file()
    stage1_ran = 'Stage 1 [all]' in (out / 'train_log.txt').read_text()
    assert stage1_ran == (not config.endswith('_base.yml'))


def test_clipreid_readme_commands_on_msmt17(tmp_path):
    """Its README's ViT CLIP-ReID + SIE + OLP training on MSMT17, then its test command on the checkpoint."""
    root = generate('msmt17', str(tmp_path / 'data'), train_ids=4, test_ids=3)
    readme = ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '1.0', 'MODEL.STRIDE_SIZE', '[12, 12]']
    out = tmp_path / 'train'
    result = run_script('train_clipreid.py', '--config_file', 'configs/person/vit_clipreid.yml', *readme,
                        *tiny_shapes('msmt17', root, out))
    assert result.returncode == 0, result.stderr[-2000:]
    msmt17 = init_dataset('msmt17', root)
    trained = read_results(out, ['DDC'], msmt17)['DDC']
    tested = tmp_path / 'test'
    result = run_script('test_clipreid.py', '--config_file', 'configs/person/vit_clipreid.yml', 'TEST.WEIGHT',
                        str(out / 'ViT-Tiny-16_1.pth'), *readme, *tiny_shapes('msmt17', root, tested))
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_results(tested, ['DDC'], msmt17)['DDC']['mAP'] == pytest.approx(trained['mAP'], abs=1e-6)


def test_vehicleid_reports_the_mean_and_std_over_its_gallery_draws(tmp_path):
    root = generate('vehicleid', str(tmp_path / 'data'), train_ids=4, test_ids=3)
    out = tmp_path / 'train'
    draws = ['TEST.VEHICLEID_TRIALS', '3', 'DATASETS.VEHICLEID_TEST_SIZE', '1600']
    train_clipreid.main(['--config_file', 'configs/VehicleID/vit_clipreid.yml', *tiny_shapes('vehicleid', root, out),
                         *draws])
    tested = tmp_path / 'test'
    test_clipreid.main(['--config_file', 'configs/VehicleID/vit_clipreid.yml', 'TEST.WEIGHT',
                        str(out / 'ViT-Tiny-16_1.pth'), *tiny_shapes('vehicleid', root, tested), *draws])
    trials = read_results(tested, ['trial1', 'trial2', 'trial3'], init_dataset('vehicleid', root))
    summary = json.loads((tested / 'results_trials.json').read_text())
    assert summary['members'] == ['trial1', 'trial2', 'trial3']
    for key in ('mAP', 'rank1'):
        values = [trials[t][key] for t in summary['members']]
        assert summary[key] == pytest.approx(float(np.mean(values)))
        assert summary['std'][key] == pytest.approx(float(np.std(values, ddof=1)))
    assert f"| trials (mean ± std of 3) | {100 * summary['mAP']:.1f} ± {100 * summary['std']['mAP']:.1f} |" in \
        (tested / 'results.md').read_text()
    assert summary['num_query'] == 11 and summary['num_gallery'] == 6  # CLIP-ReID's reader's counts (1600)
    evals = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines() if '"eval"' in line]
    assert [record['mode'] for record in evals] == ['trials']
