import logging
import re

import pytest
import torch

from config import load_config
from datasets import init_dataset
from model import make_model
from processor import stage1 as stage1
from loss.make_loss import image_view_mask
from processor.stage2 import i2t_terms
from tests.helpers import tiny_opts
from utils.errors import UserError

LOGGER = logging.getLogger('test')


def _setup(root, out, *extra):
    cfg = load_config('', tiny_opts(root, str(out), *extra))
    dataset = init_dataset('mssl', root)
    torch.manual_seed(cfg.SOLVER.SEED)
    model = make_model(cfg, dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       text_views=stage1.text_views_to_learn(cfg))
    return cfg, dataset, model


def test_views_to_learn_follow_the_nonzero_terms():
    assert stage1.text_views_to_learn(load_config()) == ['ground', 'sky']
    clip_reid = load_config('', ['MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)",
                                 'MODEL.I2T_LOSS_WEIGHTS', '(1.0,)'])
    assert stage1.text_views_to_learn(clip_reid) == ['all']
    no_text = load_config('', ['MODEL.I2T_LOSS_WEIGHTS', '(0.0, 0.0, 0.0)'])
    assert stage1.text_views_to_learn(no_text) == []


def test_identity_without_images_of_a_view_learns_from_the_other_view():
    items = [('a.jpg', 0, 0, 0), ('b.jpg', 0, 3, 1), ('c.jpg', 1, 0, 0), ('d.jpg', 1, 1, 0)]
    assert stage1.stage1_items(items, 'sky') == [items[1], items[2], items[3]]
    assert stage1.stage1_items(items, 'ground') == [items[0], items[2], items[3]]
    assert stage1.stage1_items(items, 'all') == items


def test_stage1_lowers_its_loss(tiny_mssl, tmp_path):
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'SOLVER.STAGE1.MAX_EPOCHS', '6')
    items = stage1.stage1_items(dataset.train, 'sky')
    feats, losses = stage1.learn_view(cfg, model, 'sky', items, dataset.num_train_pids, torch.device('cpu'),
                                      LOGGER)
    assert feats.shape == (dataset.num_train_pids, model.text_encoder.text_projection.shape[1])
    assert losses[-1] < 0.9 * losses[0]


def test_stage1_cache_is_reused_and_rebuilt_when_the_config_changes(tiny_mssl, tmp_path, monkeypatch):
    device = torch.device('cpu')
    cfg, dataset, model = _setup(tiny_mssl, tmp_path)
    first = stage1.run_stage1(cfg, model, dataset.train, dataset.num_train_pids, device, LOGGER)
    assert set(first) == {'ground', 'sky'}
    assert (tmp_path / stage1.CACHE_NAME).is_file()

    def must_not_train(*args, **kwargs):
        raise AssertionError('stage 1 ran although the cache matches')

    with monkeypatch.context() as patch:
        patch.setattr(stage1, 'learn_view', must_not_train)
        again = stage1.run_stage1(cfg, model, dataset.train, dataset.num_train_pids, device, LOGGER)
    for view in first:
        assert torch.equal(first[view], again[view])

    changed_cfg, _, changed_model = _setup(tiny_mssl, tmp_path, 'MODEL.PROMPT_TEMPLATE_SKY',
                                           'A drone photo of a X X X X person.')
    trained = []
    real_learn_view = stage1.learn_view
    monkeypatch.setattr(stage1, 'learn_view', lambda cfg, model, view, *a, **k: (
        trained.append(view) or real_learn_view(cfg, model, view, *a, **k)))
    rebuilt = stage1.run_stage1(changed_cfg, changed_model, dataset.train, dataset.num_train_pids, device, LOGGER)
    assert trained == ['sky']
    assert torch.equal(rebuilt['ground'], first['ground'])
    assert not torch.equal(rebuilt['sky'], first['sky'])


@pytest.mark.parametrize('content, message', [
    (b'not a checkpoint', 'is damaged or not a cache'),
    (None, 'holds no cache (a list)'),
])
def test_damaged_cache_stops_and_is_left_alone(tiny_mssl, tmp_path, content, message):
    cache = tmp_path / stage1.CACHE_NAME
    if content is None:
        torch.save([1, 2], cache)
        content = cache.read_bytes()
    cache.write_bytes(content)
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'SOLVER.STAGE1.MAX_EPOCHS', '1')
    with pytest.raises(UserError, match=f"stage-1 cache '{cache}' {re.escape(message)}.*move it away"):
        stage1.run_stage1(cfg, model, dataset.train, dataset.num_train_pids, torch.device('cpu'), LOGGER)
    assert cache.read_bytes() == content


def test_image_view_masks_and_published_terms():
    views = torch.tensor([0, 1, 1, 0])
    assert image_view_mask(views, 'all').tolist() == [True] * 4
    assert image_view_mask(views, 'sky').tolist() == [False, True, True, False]
    assert image_view_mask(views, 'ground').tolist() == [True, False, False, True]
    text = {'ground': torch.zeros(3, 2), 'sky': torch.ones(3, 2)}
    terms = i2t_terms(load_config(), text, torch.device('cpu'))
    assert [(image_view, weight) for _, image_view, weight in terms] == [('all', 1.0), ('ground', 0.1)]
    assert torch.equal(terms[0][0], text['ground']) and torch.equal(terms[1][0], text['sky'])


def test_all_modes_ranked_together_equal_each_mode_alone(tiny_mssl, tmp_path):
    from processor.inference import evaluate_model
    from evaluation.rank import evaluate
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'TEST.EVAL_MODE', 'ALL')
    outcome = evaluate_model(cfg, model, dataset, torch.device('cpu'), LOGGER)
    assert sorted(outcome) == sorted(dataset.supported_modes)
    for mode, result in outcome.items():
        q, g = result['query'], result['gallery']
        alone = evaluate(result['qf'], result['gf'], q['pids'], g['pids'], q['camids'], g['camids'], q['views'],
                         g['views'], mode, return_per_query=True)
        for key in ('mAP', 'mINP', 'rank1', 'num_query', 'num_valid_query', 'num_gallery'):
            # the same ranks; sums over queries may differ in the last bit with the order of the chunks
            assert result['metrics'][key] == pytest.approx(alone[key], rel=1e-12, abs=0), (mode, key)
        assert (result['metrics']['cmc'] == alone['cmc']).all()
        assert (result['valid_query_index'] == alone['valid_query_index']).all()


def test_a_summary_is_the_mean_and_sample_std_of_its_members():
    from processor.inference import summarize_protocols
    from reporting.visualize import results_table

    def run(mAP, rank1):
        return {'metrics': {'mAP': mAP, 'rank1': rank1, 'rank5': 1.0, 'rank10': 1.0, 'mINP': mAP, 'num_query': 6,
                            'num_valid_query': 6, 'num_gallery': 3, 'cmc': [rank1, 1.0]}}

    outcome = {'trial1': run(0.5, 0.2), 'trial2': run(0.7, 0.4), 'trial3': run(0.6, 0.3)}
    summaries = summarize_protocols(outcome, {'trials': ('trial1', 'trial2', 'trial3'), 'more': ('trial1', 'trial4')})
    assert list(summaries) == ['trials']  # a summary whose members were not all evaluated is left out
    trials = summaries['trials']
    assert trials['mAP'] == pytest.approx(0.6) and trials['std']['mAP'] == pytest.approx(0.1)  # n - 1
    assert trials['rank5'] == 1.0 and trials['std']['rank5'] == 0.0
    assert trials['num_query'] == 6 and list(trials['cmc']) == pytest.approx([0.3, 1.0])
    assert results_table(summaries).splitlines()[-1] == ('| trials (mean ± std of 3) | 60.0 ± 10.0 | 30.0 ± 10.0 | '
                                                         '100.0 ± 0.0 | 100.0 ± 0.0 | 60.0 ± 10.0 | 6 | 3 |')
    single = summarize_protocols({'trial1': run(0.5, 0.2)}, {'trials': ('trial1',)})['trials']
    assert single['std']['mAP'] is None and '| 50.0 |' in results_table({'trials': single})
