"""Every dataset trains and evaluates each of its protocols through the scripts, on fixtures in the
published layouts; training on the synthetic MSSL and testing on AG-ReID runs from one command."""
import json
import os

import pytest

from datasets import init_dataset
from datasets.fixtures import generate
from tests.helpers import TINY_OPTS, assert_results_are_the_evaluators, run_script, tiny_opts

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
