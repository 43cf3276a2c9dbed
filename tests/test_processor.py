import logging
import re

import pytest
import torch

from config import load_config
from datasets import init_dataset
from model import make_model
from processor import stage1 as stage1
from loss.make_loss import image_view_mask
from processor import stage2
from processor.stage2 import i2t_terms
from tests.helpers import HostSyncs, tiny_opts
from utils.errors import UserError
from processor.settings import loader_settings, model_settings

LOGGER = logging.getLogger('test')


def _setup(root, out, *extra):
    cfg = load_config('', tiny_opts(root, str(out), *extra))
    dataset = init_dataset('mssl', root)
    torch.manual_seed(cfg.SOLVER.SEED)
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
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
    # only the prompts learn: the text tower's weight gradients are neither computed nor kept
    assert all(param.grad is None for param in model.text_encoder.parameters())


def test_stage1_under_fp16_skips_a_step_whose_gradients_are_not_finite(tiny_mssl, tmp_path, monkeypatch):
    """Under fp16 stage 1 steps through a gradient scaler: a step whose gradients overflow is skipped (the
    prompts keep their values, the scale halves) and the next one trains."""
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'SOLVER.STAGE1.MAX_EPOCHS', '1',
                                 'SOLVER.STAGE1.IMS_PER_BATCH', '8')
    scalers, prompts_before_step = [], []
    real_grad_scaler, real_step, real_text_features = stage1.grad_scaler, stage1.prompt_step, model.text_features
    monkeypatch.setattr(stage1, 'grad_scaler', lambda *a: scalers.append(real_grad_scaler(*a)) or scalers[-1])
    monkeypatch.setattr(stage1, 'prompt_step', lambda model, view, *a, **k: (
        prompts_before_step.append(model.prompt_learners[view].cls_ctx.detach().clone())
        or real_step(model, view, *a, **k)))

    def overflowing_first_backward(view, labels):  # the loss stays finite, its first gradients do not
        text = real_text_features(view, labels)
        if len(prompts_before_step) == 1:
            text.register_hook(lambda grad: grad * float('inf'))
        return text

    monkeypatch.setattr(model, 'text_features', overflowing_first_backward)
    items = stage1.stage1_items(dataset.train, 'sky')
    feats, _ = stage1.learn_view(cfg, model, 'sky', items, dataset.num_train_pids, torch.device('cpu'), LOGGER,
                                 amp_dtype=torch.float16)
    scaler, = scalers
    # halved for each skipped step (fp16 text-tower gradients may overflow at the first scales too)
    assert scaler.is_enabled() and scaler.get_scale() < 2.0 ** 16
    assert torch.equal(prompts_before_step[1], prompts_before_step[0])  # the infinite gradients were skipped
    learned = model.prompt_learners['sky'].cls_ctx
    assert not torch.equal(learned, prompts_before_step[0])  # later steps trained
    assert bool(torch.isfinite(learned).all()) and bool(torch.isfinite(feats).all())


def test_stage1_stops_on_a_non_finite_loss_before_caching(tiny_mssl, tmp_path, monkeypatch):
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'SOLVER.STAGE1.MAX_EPOCHS', '2')
    real_text_features = model.text_features
    monkeypatch.setattr(model, 'text_features', lambda view, labels: real_text_features(view, labels) * float('nan'))
    with pytest.raises(UserError, match=r"stage 1 \[ground\] loss became non-finite .* in epoch 1"):
        stage1.run_stage1(cfg, model, dataset.train, dataset.num_train_pids, torch.device('cpu'), LOGGER)
    assert not (tmp_path / stage1.CACHE_NAME).exists()


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


def _changed(value):
    """Another valid value of a stage-1 solver key."""
    if isinstance(value, str):
        return {'Adam': 'AdamW'}.get(value, value + 'x')
    return value + 1 if isinstance(value, int) else value * 2


STAGE1_SOLVER_KEYS = [f'SOLVER.STAGE1.{key}' for key in load_config().SOLVER.STAGE1 if key != 'LOG_PERIOD']


@pytest.mark.parametrize('key', ['SOLVER.SEED', 'INPUT.SIZE_TEST', 'INPUT.PIXEL_MEAN', 'INPUT.PIXEL_STD',
                                 *STAGE1_SOLVER_KEYS])
def test_stage1_cache_fingerprint_changes_with_what_the_text_features_depend_on(tiny_mssl, key):
    base = load_config('', tiny_opts(tiny_mssl, 'out'))
    section, name = key.rsplit('.', 1)
    value = base
    for part in section.split('.'):
        value = value[part]
    value = value[name]
    new = {'INPUT.SIZE_TEST': '[96, 48]', 'INPUT.PIXEL_MEAN': '[0.4, 0.5, 0.6]', 'INPUT.PIXEL_STD': '[0.2, 0.3, 0.4]'}
    also = ['INPUT.SIZE_TRAIN', '[96, 48]'] if key == 'INPUT.SIZE_TEST' else []  # the two must be equal
    changed = load_config('', tiny_opts(tiny_mssl, 'out', key, new.get(key, str(_changed(value))), *also))
    items = init_dataset('mssl', tiny_mssl).train
    assert stage1.cache_fingerprint(changed, 'sky', items) != stage1.cache_fingerprint(base, 'sky', items)
    logging_only = load_config('', tiny_opts(tiny_mssl, 'out', 'SOLVER.STAGE1.LOG_PERIOD', '7'))
    assert stage1.cache_fingerprint(logging_only, 'sky', items) == stage1.cache_fingerprint(base, 'sky', items)


def test_stage1_cache_is_rebuilt_when_the_precision_it_resolves_to_changes(tiny_mssl, tmp_path, monkeypatch):
    """SOLVER.AMP 'auto' is fp32 on a CPU and bf16 on most GPUs: a CPU cache is not reused on such a GPU,
    while 'auto' and 'off' on a CPU (both fp32) share it."""
    cfg, dataset, model = _setup(tiny_mssl, tmp_path)
    learned = []

    def fake_learn_view(cfg, model, view, items, num_classes, device, logger, amp_dtype=None):
        learned.append((view, amp_dtype))
        return torch.zeros(num_classes, 4), []

    monkeypatch.setattr(stage1, 'learn_view', fake_learn_view)
    run = lambda cfg, amp_dtype: stage1.run_stage1(cfg, model, dataset.train, dataset.num_train_pids,  # noqa: E731
                                                   torch.device('cpu'), LOGGER, amp_dtype)
    run(cfg, None)
    run(load_config('', tiny_opts(tiny_mssl, str(tmp_path), 'SOLVER.AMP', 'off')), None)
    assert learned == [('ground', None), ('sky', None)]
    run(cfg, torch.bfloat16)
    assert learned[2:] == [('ground', torch.bfloat16), ('sky', torch.bfloat16)]


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

def _tiny_model_for_steps():
    cfg = load_config('', tiny_opts('unused', 'unused'))
    torch.manual_seed(0)
    model = make_model(model_settings(cfg), 4, camera_num=3, view_num=2, text_views=stage1.text_views_to_learn(cfg),
                       load_pretrained=False)
    embed = model.text_encoder.text_projection.shape[1]
    text_features = {view: torch.randn(4, embed) for view in model.prompt_learners}
    images, pids = torch.randn(8, 3, 64, 32), torch.tensor([0, 0, 0, 0, 2, 2, 2, 2])
    camids, viewids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return cfg, model, text_features, (images, pids, camids, viewids)


@pytest.mark.parametrize('accum_steps', [1, 2])
def test_training_steps_never_make_the_host_wait(accum_steps):
    """No value is read on the host and no shape depends on values in either stage's step: on a GPU the
    host queues the next step while this one runs (checked on a CPU by recording the operations)."""
    cfg, model, text_features, (images, pids, camids, viewids) = _tiny_model_for_steps()
    cpu = torch.device('cpu')
    optimizer, _, scaler = stage1.stage1_solver(cfg, model, 'sky', cpu)
    with HostSyncs() as syncs:
        syncs.ignore_optimizer_steps(optimizer)
        stage1.prompt_step(model, 'sky', optimizer, scaler, torch.randn(8, text_features['sky'].shape[1]), pids)
    assert syncs.found == []
    optimizer, _, scaler = stage2.stage2_solver(cfg, model, cpu)
    criterion = stage2.build_criterion(cfg, 4, text_features)
    model.train()
    with HostSyncs() as syncs:
        syncs.ignore_optimizer_steps(optimizer)
        stage2.train_step(model, criterion, optimizer, scaler, images, pids, camids, viewids,
                          accum_steps=accum_steps)
    assert syncs.found == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason='counts the synchronisations of a CUDA device')
def test_training_steps_never_synchronise_a_gpu():
    cfg, model, text_features, batch = _tiny_model_for_steps()
    gpu = torch.device('cuda')
    model.to(gpu)
    images, pids, camids, viewids = (tensor.pin_memory() for tensor in batch)
    optimizer, _, scaler = stage2.stage2_solver(cfg, model, gpu)
    criterion = stage2.build_criterion(cfg, 4, text_features).to(gpu)
    model.train()
    for check in (False, True):  # the first step allocates and initialises; the second is checked
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error' if check else 'default')
        try:
            on_gpu = [tensor.to(gpu, non_blocking=True) for tensor in (images, pids, camids, viewids)]
            stage2.train_step(model, criterion, optimizer, scaler, *on_gpu)
        finally:
            torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('smoothing, epsilon', [('on', 0.1), ('off', 0.0)])
def test_trainer_criterion_smooths_labels_as_model_if_labelsmooth_says(smoothing, epsilon):
    """The criterion the trainer builds: label smoothing 0.1 ('on', the published value) or none ('off') in
    both the identity and the image-to-text terms."""
    generator = torch.Generator().manual_seed(0)
    targets, views = torch.tensor([0, 0, 1, 1, 3, 3]), torch.tensor([0, 1, 0, 1, 0, 0])
    out = {'cls_scores': [torch.randn(6, 4, generator=generator) * 3 for _ in range(2)],
           'feats': [torch.randn(6, 8, generator=generator)], 'proj': torch.randn(6, 8, generator=generator)}
    text = {view: torch.randn(4, 8, generator=generator) for view in ('ground', 'sky')}
    criterion = stage2.build_criterion(load_config('', ['MODEL.IF_LABELSMOOTH', smoothing]), 4, text)
    _, parts = criterion(out, targets, views)

    def smoothed_ce(logits, labels):  # torch's smoothing: the target (1 - epsilon) one-hot + epsilon / classes
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=epsilon)

    assert float(parts['id']) == pytest.approx(float(sum(smoothed_ce(score, targets) for score in out['cls_scores'])),
                                               rel=1e-6)
    ground = views == 0  # the recipe's second term: ground images against the sky text
    assert float(parts['i2t_0']) == pytest.approx(float(smoothed_ce(out['proj'] @ text['ground'].T, targets)), rel=1e-6)
    assert float(parts['i2t_1']) == pytest.approx(
        float(smoothed_ce(out['proj'][ground] @ text['sky'].T, targets[ground])), rel=1e-6)


def _stage2_run(tiny_mssl, out, *extra, evaluate=True):
    """Stage 2 of the tiny recipe (2 epochs) on random text features, as train_clipreid.py runs it."""
    from datasets.make_dataloader import make_train_loader
    from processor.test_sets import build_test_sets, evaluate_test_sets
    from utils.device import seed_everything
    out.mkdir()
    cfg, dataset, model = _setup(tiny_mssl, out, 'MODEL.SIE_CAMERA', 'False', 'MODEL.SIE_VIEW', 'False', *extra)
    cpu = torch.device('cpu')
    embed = model.text_encoder.text_projection.shape[1]
    text = {view: torch.randn(dataset.num_train_pids, embed, generator=torch.Generator().manual_seed(5))
            for view in model.prompt_learners}
    loader = make_train_loader(loader_settings(cfg), dataset.train, cpu)
    test_sets = build_test_sets(cfg, dataset, LOGGER)
    seed_everything(cfg.SOLVER.SEED)
    evaluate_fn = (lambda trained: evaluate_test_sets(cfg, trained, test_sets, cpu, LOGGER)) if evaluate else None
    stage2.train_stage2(cfg, model, text, loader, dataset.num_train_pids, cpu, LOGGER, evaluate_fn=evaluate_fn)
    return model


@pytest.mark.slow  # two short trainings with evaluations
def test_evaluating_during_training_leaves_the_training_unchanged(tiny_mssl, tmp_path):
    """Two runs that differ only in SOLVER.STAGE2.EVAL_PERIOD end with the same weights: evaluating draws
    no random number the training would have drawn."""
    every_epoch = _stage2_run(tiny_mssl, tmp_path / 'every', 'SOLVER.STAGE2.EVAL_PERIOD', '1')
    at_the_end = _stage2_run(tiny_mssl, tmp_path / 'end', 'SOLVER.STAGE2.EVAL_PERIOD', '2')
    assert (tmp_path / 'every' / 'metrics.jsonl').read_text().count('"eval"') > \
        (tmp_path / 'end' / 'metrics.jsonl').read_text().count('"eval"')
    ours, theirs = every_epoch.state_dict(), at_the_end.state_dict()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_each_stage2_epoch_sees_other_batches(tiny_mssl, tmp_path, monkeypatch):
    batches = {}

    def recording_step(net, criterion, optimizer, scaler, images, pids, *args, **kwargs):
        batches.setdefault(epoch_of[0], []).append(pids.tolist())
        return stage2.StepResult(torch.zeros(()), {}, torch.zeros((), dtype=torch.int64), len(pids))

    epoch_of = [0]
    real_begin_epoch = stage2.begin_epoch
    monkeypatch.setattr(stage2, 'begin_epoch', lambda scheduler, epoch: (
        epoch_of.__setitem__(0, epoch), real_begin_epoch(scheduler, epoch))[1])
    monkeypatch.setattr(stage2, 'train_step', recording_step)
    _stage2_run(tiny_mssl, tmp_path / 'out', 'SOLVER.STAGE2.MAX_EPOCHS', '3', evaluate=False)
    assert sorted(batches) == [1, 2, 3]
    assert all(len(batches[epoch]) > 1 for epoch in batches)
    assert batches[1] != batches[2] and batches[2] != batches[3] and batches[1] != batches[3]


def test_cross_dataset_images_get_the_features_of_an_unknown_camera(tiny_mssl, tmp_path):
    """A DATASETS.TEST_NAMES dataset's camera ids name other cameras than the training set's: its test
    features are those computed with the camera unknown (no camera SIE term), not with the row of the
    training camera that happens to share the id."""
    import numpy as np
    from datasets.fixtures import generate
    from datasets.make_dataloader import make_ordered_loader
    from processor.test_sets import build_test_sets, evaluate_test_sets
    agreid = generate('agreid', str(tmp_path / 'agreid'), seed=4)
    cfg, dataset, model = _setup(tiny_mssl, tmp_path, 'DATASETS.TEST_NAMES', 'agreid', 'DATASETS.TEST_ROOT_DIR', agreid,
                                 'TEST.EVAL_MODE', 'S2G')
    cpu = torch.device('cpu')
    test_sets = build_test_sets(cfg, dataset, LOGGER)
    evaluate_test_sets(cfg, model, test_sets, cpu, LOGGER, save_features=True)
    saved = np.load(tmp_path / 'test_agreid' / 'features_S2G.npz', allow_pickle=False)
    items = {item[0]: item for item in test_sets[0].dataset.query + test_sets[0].dataset.gallery}
    query = [items[path] for path in saved['q_paths']]
    assert 0 <= min(item[2] for item in query) and max(item[2] for item in query) < dataset.num_train_cams

    @torch.no_grad()
    def features(camera_of):
        return torch.cat([model.eval()(images, cam_label=camera_of(camids), view_label=views)
                          for images, _, camids, views, _ in make_ordered_loader(loader_settings(cfg), query, cpu)]).numpy()

    unknown = features(lambda camids: torch.full_like(camids, -1))
    assert np.allclose(saved['qf'], unknown, atol=1e-6, rtol=0)
    assert not np.allclose(unknown, features(lambda camids: camids), atol=1e-3)  # the camera term would show
