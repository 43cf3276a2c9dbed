"""The two scripts, run as a user runs them."""
import csv
import json

import numpy as np
import pytest

from datasets import camera_name, init_dataset
from datasets.synthetic_mssl import generate
from tests.helpers import assert_results_are_the_evaluators, run_script, tiny_opts
from utils.vocabulary import MSSL_REMOVAL, SAME_CAMERA, breakdown_file

pytestmark = pytest.mark.slow  # subprocess runs of the scripts

SEED_OPTS = ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '0.5', 'MODEL.SIE_VIEW', 'True',
             'MODEL.STRIDE_SIZE', '[12, 12]']


@pytest.fixture(scope='module')
def trained_run(tiny_mssl, tmp_path_factory):
    out = tmp_path_factory.mktemp('train')
    result = run_script('train_clipreid.py', *tiny_opts(tiny_mssl, str(out), 'TEST.SAVE_FEATURES', 'True'))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_training_writes_log_cache_checkpoint_and_results(trained_run, tiny_mssl):
    names = {p.name for p in trained_run.iterdir()}
    assert {'train_log.txt', 'stage1_text_features.pt', 'ViT-Tiny-16_2.pth'} <= names
    assert_results_are_the_evaluators(trained_run, ('S2G', 'G2S', 'DDC'), init_dataset('mssl', tiny_mssl))
    assert 'Stage 1 [sky] epoch 3/3' in (trained_run / 'train_log.txt').read_text()


@pytest.mark.parametrize('mode', ['S2G', 'G2S', 'DDC'])
def test_testing_a_checkpoint_reproduces_the_training_evaluation(tiny_mssl, trained_run, tmp_path, mode):
    result = run_script('test_clipreid.py', *tiny_opts(tiny_mssl, str(tmp_path)), 'TEST.EVAL_MODE', mode,
                        'TEST.WEIGHT', str(trained_run / 'ViT-Tiny-16_2.pth'), 'TEST.SAVE_FEATURES', 'True')
    assert result.returncode == 0, result.stderr[-2000:]
    tested = assert_results_are_the_evaluators(tmp_path, [mode], init_dataset('mssl', tiny_mssl))[mode]
    trained = json.loads((trained_run / f'results_{mode}.json').read_text())
    assert tested['mAP'] == pytest.approx(trained['mAP'], abs=1e-6)
    assert tested['rank1'] == pytest.approx(trained['rank1'], abs=1e-6)
    features = np.load(tmp_path / f'features_{mode}.npz', allow_pickle=False)
    assert features['qf'].shape[0] == tested['num_query'] == len(features['q_paths'])
    assert features['gf'].shape[0] == tested['num_gallery'] == len(features['g_views'])
    expected_views = {'S2G': {1}, 'G2S': {0}, 'DDC': {0, 1}}[mode]
    assert set(features['q_views'].tolist()) == expected_views


def direct_camera_pair(features, removal, query_camera, gallery_camera):
    """(valid queries, mAP, Rank-1) of one camera's queries against one camera's gallery, from the saved
    features: float64 distances of the L2-normalised features, a stable sort, the removal rule."""
    q = features['q_camids'] == query_camera
    g = features['g_camids'] == gallery_camera
    qf, gf = (features[k][m].astype(np.float64) for k, m in (('qf', q), ('gf', g)))
    qf, gf = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None] - 2 * qf @ gf.T
    attribute = 'camids' if removal == SAME_CAMERA else 'views'
    aps, hits = [], []
    for i in range(len(qf)):
        order = np.argsort(dist[i], kind='stable')
        same = features['g_pids'][g][order] == features['q_pids'][q][i]
        removed = same & (features[f'g_{attribute}'][g][order] == features[f'q_{attribute}'][q][i])
        ranks = np.flatnonzero(same[~removed])
        if len(ranks):
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
            hits.append(ranks[0] == 0)
    return len(aps), (np.mean(aps) if aps else None), (np.mean(hits) if hits else None)


def test_camera_breakdowns_equal_a_direct_computation_from_the_saved_features(tiny_mssl, trained_run, tmp_path):
    result = run_script('test_clipreid.py', *tiny_opts(tiny_mssl, str(tmp_path)), 'TEST.EVAL_MODE', 'ALL',
                        'TEST.WEIGHT', str(trained_run / 'ViT-Tiny-16_2.pth'), 'TEST.SAVE_FEATURES', 'True',
                        'TEST.VISUALIZE', 'True', 'TEST.ATTENTION_MAPS', 'True', 'TEST.EMBEDDING_MAP', 'True')
    assert result.returncode == 0, result.stderr[-2000:]
    for mode in MSSL_REMOVAL:  # the pictures asked for besides the breakdowns
        assert (tmp_path / f'embedding_{mode}.png').is_file() and (tmp_path / f'ranked_{mode}.png').is_file()
    cells = 0
    for mode, removal in MSSL_REMOVAL.items():
        features = np.load(tmp_path / f'features_{mode}.npz', allow_pickle=False)
        written = (tmp_path / breakdown_file(mode, 'cameras')).read_text()
        # the evaluation during training wrote the same table
        assert (trained_run / breakdown_file(mode, 'cameras')).read_text() == written
        rows = list(csv.DictReader(written.splitlines()))
        query_cameras, gallery_cameras = np.unique(features['q_camids']), np.unique(features['g_camids'])
        assert len(rows) == len(query_cameras) * len(gallery_cameras)
        for row, (a, b) in zip(rows, [(a, b) for a in query_cameras for b in gallery_cameras]):
            assert (row['query_camera'], row['gallery_camera']) == (camera_name('mssl', a), camera_name('mssl', b))
            assert int(row['queries']) == (features['q_camids'] == a).sum()
            valid, mAP, rank1 = direct_camera_pair(features, removal, a, b)
            assert int(row['valid_queries']) == valid, (mode, row)
            if valid:
                assert float(row['mAP']) == pytest.approx(mAP, abs=2e-6), (mode, row)
                assert float(row['rank1']) == pytest.approx(rank1, abs=2e-6), (mode, row)
                cells += 1
            else:
                assert row['mAP'] == row['rank1'] == ''
        for kind in ('views', 'hours'):
            assert (tmp_path / breakdown_file(mode, kind)).is_file()
        assert (tmp_path / f'breakdown_{mode}_cameras.png').stat().st_size > 10_000
    assert cells > 20


def test_all_mode_and_untrained_backbone(tiny_mssl, tmp_path):
    result = run_script('test_clipreid.py', *tiny_opts(tiny_mssl, str(tmp_path)), 'TEST.EVAL_MODE', 'ALL')
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob('results_*.json')) == [
        'results_DDC.json', 'results_G2S.json', 'results_S2G.json']


def test_seed_commands_without_clip_weights_stop_with_the_weights_message(tmp_path):
    # Enough identities for the recipe's 16 x 4 batches, so the commands run exactly as the seed writes them.
    root = str(tmp_path / 'mssl')
    generate(root, train_ids=16, test_ids=2, images_per_view=2, seed=1)
    env = {**__import__('os').environ, 'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf'),
           'XDG_CACHE_HOME': str(tmp_path / 'cache')}
    common = ['--config_file', 'configs/person/vit_clipreid.yml', *SEED_OPTS,
              'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', str(tmp_path / 'out'), 'MODEL.DEVICE', 'cpu']
    for script, extra in (('train_clipreid.py', []), ('test_clipreid.py', ['TEST.EVAL_MODE', 'S2G'])):
        result = run_script(script, *common, *extra, env=env)
        assert result.returncode == 2
        assert 'Traceback' not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and 'MODEL.PRETRAIN_PATH' in lines[0]


@pytest.mark.parametrize('args, message', [
    (['MODEL.NOT_A_KEY', '1'], 'unknown config key MODEL.NOT_A_KEY'),
    (['TEST.EVAL_MODE', 'S2S'], 'TEST.EVAL_MODE'),
    (['TEST.WEIGHT', 'missing.pth'], "TEST.WEIGHT 'missing.pth' does not exist"),
    (['DATASETS.ROOT_DIR', '/nonexistent/mssl'], '/nonexistent/mssl'),
])
def test_user_mistakes_give_one_line_and_exit_2(tiny_mssl, tmp_path, args, message):
    opts = tiny_opts(tiny_mssl, str(tmp_path))
    result = run_script('test_clipreid.py', *opts, *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and 'Traceback' not in result.stderr


def test_a_resnet_trains_both_stages_and_its_checkpoint_tests_the_same(tiny_mssl, tmp_path):
    """CLIP-ReID's CNN recipe shape (RN-Tiny for RN50; its single 'all' prompt): stage 1, stage 2, and
    test_clipreid.py on the checkpoint reproduces the training's last evaluation."""
    resnet = ['MODEL.NAME', 'RN-Tiny', 'MODEL.SIE_CAMERA', 'False', 'MODEL.SIE_VIEW', 'False',
              'MODEL.STRIDE_SIZE', '[16, 16]', 'MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)",
              'MODEL.I2T_LOSS_WEIGHTS', '(1.0,)', 'TEST.EVAL_MODE', 'DDC']
    train, test = tmp_path / 'train', tmp_path / 'test'
    result = run_script('train_clipreid.py', *tiny_opts(tiny_mssl, str(train), *resnet))
    assert result.returncode == 0, result.stderr[-2000:]
    log = (train / 'train_log.txt').read_text()
    assert 'Stage 1 [all] epoch 3/3' in log and 'Stage 2 epoch 2/2' in log
    result = run_script('test_clipreid.py', *tiny_opts(tiny_mssl, str(test), *resnet),
                        'TEST.WEIGHT', str(train / 'RN-Tiny_2.pth'))
    assert result.returncode == 0, result.stderr[-2000:]
    trained, tested = (json.loads((folder / 'results_DDC.json').read_text()) for folder in (train, test))
    assert tested['mAP'] == pytest.approx(trained['mAP'], abs=1e-6)
