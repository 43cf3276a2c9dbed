"""One stage-1 and one stage-2 step of this project's trainer against the same steps of the published MSP
code on the tiny reference model (tests/data/published_reference/training_steps.*, README "One training
step of each stage"): the batch, loss parts, which tensors are optimized and which frozen, gradients,
learning rate and weight decay of every tensor, updates and BN-neck statistics.

The steps are the trainer's own: `processor.stage1.stage1_solver` / `prompt_step` and
`processor.stage2.stage2_solver` / `build_criterion` / `train_step`, on a model built by `make_model`.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from config import load_config
from datasets import init_dataset
from datasets.make_dataloader import make_ordered_loader
from model import clip_loader, make_model
from model.published_format import to_published
from processor import stage1, stage2
from solver.scheduler import begin_epoch
from tests.test_published_reference import REF, REF_ARCH, RECIPE, SEED_OVERRIDES, relative_difference
from processor.settings import loader_settings, model_settings

CPU = torch.device('cpu')
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
# Gradients that are zero in exact arithmetic (the attention's key bias: a softmax ignores a constant added
# to every key) come out as rounding noise, ~1e-8 of the tensor's largest gradient and different in each
# implementation. Adam's first step, lr * g / (|g| + eps), turns such noise into an arbitrary fraction of
# lr, so the updates of those entries are not compared.
NOISE_GRADIENT = 1e-7


@pytest.fixture(scope='module')
def steps():
    arrays = dict(np.load(REF / 'training_steps.npz', allow_pickle=False))
    return arrays, json.loads((REF / 'training_steps.json').read_text())


@pytest.fixture(scope='module')
def published_state():
    return torch.load(REF / 'msp_tiny_stage2.pth', map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def cfg():
    return load_config(str(RECIPE), [*SEED_OVERRIDES, 'MODEL.NAME', REF_ARCH, 'MODEL.DEVICE', 'cpu',
                                     'DATALOADER.NUM_WORKERS', '0'])


@pytest.fixture(scope='module')
def dataset():
    return init_dataset('mssl', str(REF / 'mssl_tiny'))


@pytest.fixture(scope='module')
def batch(dataset, cfg):
    """The published batch: the 15 training images sorted by file name, through this project's test loader."""
    items = sorted(dataset.train, key=lambda item: Path(item[0]).name)
    images = torch.cat([chunk for chunk, *_ in make_ordered_loader(loader_settings(cfg), items, CPU)])
    pids, camids, views = (torch.tensor([item[k] for item in items]) for k in (1, 2, 3))
    return items, images, pids, camids, views


def build_model(cfg, dataset, published_state, text_views):
    with pytest.MonkeyPatch.context() as patch:  # the reference's tiny sizes under the recipe's config
        patch.setattr(clip_loader, 'supported_models', lambda: [REF_ARCH])
        model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                           text_views=text_views, load_pretrained=False)
    model.load_image_state_dict(published_state, for_test=False)
    return model


def published_name(name: str) -> str:
    """A parameter's name in the published model."""
    if name.startswith('prompt_learners.'):
        return 'prompt_learner.' + name.split('.', 2)[2]
    if name.startswith('text_encoder.resblocks.'):
        return 'text_encoder.transformer.' + name[len('text_encoder.'):]
    return next(iter(to_published({name: None})))


def load_published_text_side(model, state: dict, view: str) -> None:
    """The published text tower and prompt learner (committed prompt) into `model`'s text side."""
    text = {published_name('text_encoder.' + key).split('.', 1)[1]: key
            for key in model.text_encoder.state_dict()}
    model.text_encoder.load_state_dict({ours: state['text_encoder.' + theirs] for theirs, ours in text.items()})
    learner = model.prompt_learners[view]
    for key in ('cls_ctx', 'token_prefix', 'token_suffix'):
        getattr(learner, key).data.copy_(state['prompt_learner.' + key])


def group_of(optimizer) -> dict:
    """{parameter: its param group} of an optimizer."""
    return {param: group for group in optimizer.param_groups for param in group['params']}


def snapshot(model) -> dict:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def assert_updates_match(model, before: dict, expected: dict) -> int:
    """Each parameter's change in the step against the published one; returns the entries compared.
    The published change is `after - before` in float32, so it is known to 2 ulp of the parameter."""
    compared = 0
    for name, param in model.named_parameters():
        key = published_name(name)
        if key not in expected:
            continue
        reference = torch.from_numpy(expected[key])
        grad = param.grad.abs()
        determined = (grad == 0) | (grad >= NOISE_GRADIENT * grad.max())
        tolerance = GRAD_RTOL * reference.abs().max() + 2 * torch.finfo(torch.float32).eps * before[name].abs()
        error = (param.detach() - before[name] - reference).abs()
        assert bool((error <= tolerance)[determined].all()), (key, float((error / tolerance)[determined].max()))
        compared += int(determined.sum())
        assert determined.sum() >= 0.6 * determined.numel(), key
    return compared


def test_the_batch_is_the_published_one(steps, batch):
    arrays, _ = steps
    items, images, pids, camids, views = batch
    assert [Path(item[0]).name for item in items] == arrays['names'].tolist()
    assert pids.tolist() == arrays['labels'].tolist()
    assert camids.tolist() == arrays['cameras'].tolist() and views.tolist() == arrays['views'].tolist()
    # the loader's input is (x / 255 - 0.5) / 0.5 of the published resize, so x is recovered exactly
    pixels = (images * 0.5 + 0.5) * 255
    as_uint8 = pixels.round().to(torch.uint8)
    assert float((pixels - as_uint8).abs().max()) < 1e-3
    digest = hashlib.sha256(as_uint8.permute(0, 2, 3, 1).contiguous().numpy().tobytes()).hexdigest()
    assert digest == str(arrays['images_resized_uint8_sha256'])


# ---------------------------------------------------------------------------------------------
# Stage 1: one prompt step of the per-view run, epoch 1 iteration 1
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def stage1_step(cfg, dataset, published_state, batch):
    view = 'all'  # the published committed prompt, 'A photo of a X X X X person.'
    model = build_model(cfg, dataset, published_state, [view])
    load_published_text_side(model, published_state, view)
    items, _, pids, _, _ = batch
    image_feats = stage1.view_image_features(model, cfg, items, CPU)
    optimizer, scheduler, scaler = stage1.stage1_solver(cfg, model, view, CPU)
    begin_epoch(scheduler, 1)
    model.prompt_learners[view].train()
    before = snapshot(model)
    loss, parts = stage1.prompt_step(model, view, optimizer, scaler, image_feats, pids)
    return {'model': model, 'optimizer': optimizer, 'image_feats': image_feats, 'loss': loss, 'parts': parts,
            'before': before}


def test_stage1_image_features_and_loss_are_the_published_ones(steps, stage1_step):
    arrays, reference = steps
    assert relative_difference(stage1_step['image_feats'], arrays['stage1_image_features']) < LOSS_RTOL
    published = reference['stage1']
    assert float(stage1_step['loss']) == pytest.approx(published['loss'], rel=LOSS_RTOL)
    assert float(stage1_step['parts']['i2t']) == pytest.approx(published['loss_i2t'], rel=LOSS_RTOL)
    assert float(stage1_step['parts']['t2i']) == pytest.approx(published['loss_t2i'], rel=LOSS_RTOL)


def test_stage1_optimizes_the_published_tensors_and_computes_no_text_tower_gradient(steps, stage1_step):
    """The published stage 1 also computes the text tower's gradients, which nothing uses
    (`with_grad_not_in_optimizer`): here the tower is frozen, so no tensor but the prompts has one."""
    _, reference = steps
    model, optimizer = stage1_step['model'], stage1_step['optimizer']
    names = {param: published_name(name) for name, param in model.named_parameters()}
    optimized = sorted(names[param] for param in group_of(optimizer))
    assert optimized == reference['stage1']['trainable'] == ['prompt_learner.cls_ctx']
    with_grad = sorted(name for param, name in names.items() if param.grad is not None)
    assert with_grad == optimized
    wasted = reference['stage1']['with_grad_not_in_optimizer']
    assert wasted and all(not param.requires_grad for param, name in names.items() if name in wasted)


def test_stage1_gradient_rate_and_update_are_the_published_ones(steps, stage1_step):
    arrays, reference = steps
    model, optimizer = stage1_step['model'], stage1_step['optimizer']
    prompts = model.prompt_learners['all'].cls_ctx
    assert relative_difference(prompts.grad, arrays['stage1_grad/prompt_learner.cls_ctx']) < GRAD_RTOL
    group, = reference['stage1']['param_groups']
    ours = group_of(optimizer)[prompts]
    assert type(optimizer).__name__ == reference['stage1']['optimizer']
    for key in ('lr', 'weight_decay', 'eps', 'amsgrad'):
        assert ours[key] == pytest.approx(group[key], rel=1e-12), key
    assert list(ours['betas']) == group['betas']
    expected = {'prompt_learner.cls_ctx': arrays['stage1_update/prompt_learner.cls_ctx']}
    assert assert_updates_match(model, stage1_step['before'], expected) == prompts.numel()


# ---------------------------------------------------------------------------------------------
# Stage 2: one step of epoch 1
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def stage2_step(steps, cfg, dataset, published_state, batch):
    arrays, _ = steps
    model = build_model(cfg, dataset, published_state, stage1.text_views_to_learn(cfg))
    # the published per-view files: 'air' is the sky view
    text_features = {'sky': arrays['stage2_text_features_air'], 'ground': arrays['stage2_text_features_ground'],
                     'all': arrays['stage2_text_features_joint']}
    text_features = {view: torch.from_numpy(features) for view, features in text_features.items()}
    _, images, pids, camids, views = batch
    optimizer, scheduler, scaler = stage2.stage2_solver(cfg, model, CPU)
    criterion = stage2.build_criterion(cfg, dataset.num_train_pids, text_features)
    begin_epoch(scheduler, 1)
    model.train()
    before = snapshot(model)
    result = stage2.train_step(model, criterion, optimizer, scaler, images, pids, camids, views)
    return {'model': model, 'optimizer': optimizer, 'result': result, 'before': before}


def test_stage2_loss_parts_are_the_published_ones(steps, stage2_step):
    _, reference = steps
    published, result = reference['stage2'], stage2_step['result']
    assert float(result.loss) == pytest.approx(published['loss'], rel=LOSS_RTOL)
    # i2t_0: every image against the ground text (the published 'air' term); i2t_1: ground images against
    # the sky text (its 'ground' term)
    expected = {'id': published['id_loss_sum'], 'triplet': published['triplet_loss_sum'],
                'i2t_0': published['air_loss'], 'i2t_1': published['ground_loss']}
    assert {name: float(part) for name, part in result.parts.items()} == pytest.approx(expected, rel=LOSS_RTOL)


def test_stage2_optimizes_and_freezes_the_published_tensors(steps, stage2_step):
    _, reference = steps
    model, optimizer = stage2_step['model'], stage2_step['optimizer']
    names = {param: published_name(name) for name, param in model.named_parameters()}
    optimized = {names[param] for param in group_of(optimizer)}
    assert optimized == {group['name'] for group in reference['stage2']['param_groups']}
    assert {name for param, name in names.items() if not param.requires_grad} == set(reference['stage2']['frozen'])
    assert {name for param, name in names.items() if param.grad is not None} == optimized


def test_stage2_learning_rate_and_weight_decay_of_every_tensor(steps, stage2_step):
    _, reference = steps
    model, optimizer = stage2_step['model'], stage2_step['optimizer']
    groups, params = group_of(optimizer), {published_name(name): param for name, param in model.named_parameters()}
    assert type(optimizer).__name__ == reference['stage2']['optimizer']
    for published in reference['stage2']['param_groups']:
        ours = groups[params[published['name']]]
        for key in ('lr', 'weight_decay', 'eps', 'amsgrad'):
            assert ours[key] == pytest.approx(published[key], rel=1e-12), (published['name'], key)
        assert list(ours['betas']) == published['betas']


def test_stage2_gradients_are_the_published_ones(steps, stage2_step):
    """Every optimized tensor: whole gradients where the fixture keeps them, else products with random
    sign vectors on each side and 4096 sampled values (the fixture's README)."""
    arrays, reference = steps
    grads = {published_name(name): param.grad for name, param in stage2_step['model'].named_parameters()}
    for name in (group['name'] for group in reference['stage2']['param_groups']):
        grad = grads[name].double()
        if f'stage2_grad/{name}' in arrays:
            assert relative_difference(grad, arrays[f'stage2_grad/{name}']) < GRAD_RTOL, name
            continue
        matrix = grad.reshape(grad.shape[0], -1)
        column_signs = torch.from_numpy(arrays[f'stage2_grad_column_signs/{name}']).double()
        row_signs = torch.from_numpy(arrays[f'stage2_grad_row_signs/{name}']).double()
        assert relative_difference(matrix @ column_signs, arrays[f'stage2_grad_times_column_signs/{name}']) < GRAD_RTOL
        assert relative_difference(row_signs @ matrix, arrays[f'stage2_grad_row_signs_times/{name}']) < GRAD_RTOL
        sample = grad.reshape(-1)[arrays[f'stage2_grad_sample_positions/{name}']]
        assert relative_difference(sample, arrays[f'stage2_grad_sample/{name}']) < GRAD_RTOL, name


def test_stage2_updates_and_bn_neck_statistics_are_the_published_ones(steps, stage2_step):
    arrays, _ = steps
    model = stage2_step['model']
    prefix = 'stage2_update/'
    expected = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
    assert assert_updates_match(model, stage2_step['before'], expected) > 0.99 * sum(v.size for v in expected.values())
    buffers = to_published(model.state_dict())
    prefix = 'stage2_buffer_after/'
    for key in (key[len(prefix):] for key in arrays if key.startswith(prefix)):
        assert relative_difference(buffers[key], arrays[prefix + key]) < LOSS_RTOL, key
