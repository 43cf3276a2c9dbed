"""Against the published MSP code's own numbers (tests/data/published_reference, made with that code;
its README says how): checkpoint loading and test features, the learning rate of every epoch of the
recipe, and the train/test transforms."""
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.random_erasing import RandomErasing

import test_clipreid
from config import load_config
from datasets import init_dataset
from datasets.transforms import build_transforms
from model import clip_loader
from model.make_model_clipreid import ReIDModel
from model.published_format import from_published, to_published
from solver.make_optimizer import make_optimizer_stage1, make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR, begin_epoch, make_stage1_scheduler
from utils.errors import UserError

REF = Path(__file__).parent / 'data' / 'published_reference'
RECIPE = Path(__file__).parent.parent / 'configs' / 'person' / 'vit_clipreid.yml'
SEED_OVERRIDES = ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '0.5', 'MODEL.SIE_VIEW', 'True',
                  'MODEL.STRIDE_SIZE', '[12, 12]']
REF_ARCH = 'ViT-RefTiny-16'  # the sizes of the reference checkpoint (its README)
open_clip.add_model_config(REF / f'{REF_ARCH}.json')


@pytest.fixture(scope='module')
def reference():
    return dict(np.load(REF / 'reference_features.npz', allow_pickle=False))


@pytest.fixture(scope='module')
def published_state():
    return torch.load(REF / 'msp_tiny_stage2.pth', map_location='cpu', weights_only=True)


def relative_difference(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def reference_model(neck_feat='before') -> ReIDModel:
    clip = open_clip.create_model(REF_ARCH, pretrained=None, force_quick_gelu=True).float()
    return ReIDModel(clip, num_classes=5, camera_num=15, view_num=2, image_size=(256, 128), stride=(12, 12),
                     sie_camera=True, sie_view=True, sie_coe=0.5, neck_feat=neck_feat, model_name=REF_ARCH)


def reference_batch(reference):
    """The six images through this project's test transform, with the cameras and views its MSSL reader
    parses from their names (the reference's order)."""
    dataset = init_dataset('mssl', str(REF / 'mssl_tiny'))
    by_name = {Path(item[0]).name: item for item in dataset.query + dataset.gallery}
    transform = build_transforms([256, 128], [256, 128], is_train=False)
    items = [by_name[name] for name in reference['names']]
    images = torch.stack([transform(Image.open(path).convert('RGB')) for path, *_ in items])
    camids = torch.tensor([item[2] for item in items])
    views = torch.tensor([item[3] for item in items])
    return images, camids, views


@pytest.mark.parametrize('wrapped', [False, True], ids=['plain', 'DataParallel'])
@pytest.mark.parametrize('neck_feat, key', [('before', 'features'), ('after', 'features_after_bn')])
def test_published_checkpoint_gives_the_published_features(reference, published_state, wrapped, neck_feat, key):
    state = published_state
    if wrapped:  # what nn.DataParallel saves
        state = OrderedDict(('module.' + k, v) for k, v in state.items())
    model = reference_model(neck_feat)
    model.load_image_state_dict(state, for_test=True)
    images, camids, views = reference_batch(reference)
    assert camids.tolist() == reference['camids'].tolist() and views.tolist() == reference['views'].tolist()
    with torch.no_grad():
        features = model.eval()(images, cam_label=camids, view_label=views)
    assert relative_difference(features, reference[key]) < 1e-4


def test_a_wrong_camera_index_would_be_caught(reference, published_state):
    """The fixture is sensitive: the same check fails with the camera index off by one."""
    model = reference_model()
    model.load_image_state_dict(published_state, for_test=True)
    images, camids, views = reference_batch(reference)
    with torch.no_grad():
        features = model.eval()(images, cam_label=(camids + 1) % 15, view_label=views)
    assert relative_difference(features, reference['features']) > 1e-2


def test_test_resize_matches_the_published_pixels(reference):
    dataset = init_dataset('mssl', str(REF / 'mssl_tiny'))
    paths = {Path(item[0]).name: item[0] for item in dataset.query + dataset.gallery}
    resize = build_transforms([256, 128], [256, 128], is_train=False).transforms[0]
    for name, expected in zip(reference['names'], reference['resized_uint8']):
        got = np.asarray(resize(Image.open(paths[name]).convert('RGB')))
        assert np.array_equal(got, expected), name


def test_published_layout_round_trip(published_state):
    image_state, dropped = from_published(published_state)
    assert 'image_encoder.sie_embed' in image_state and 'cv_embed' not in image_state
    assert all(k.startswith(('prompt_learner.', 'text_encoder.')) for k in dropped) and len(dropped) == 31
    back = to_published(image_state)
    expected = {k: v for k, v in published_state.items() if not k.startswith(('prompt_learner.', 'text_encoder.'))}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_a_resnet_checkpoint_for_a_vit_config_names_model_name():
    state = {'image_encoder.conv1.weight': torch.zeros(1), 'image_encoder.layer1.0.conv1.weight': torch.zeros(1)}
    with pytest.raises(UserError, match=f"ResNet .* image encoder, but MODEL.NAME '{REF_ARCH}' is a ViT"):
        reference_model().load_image_state_dict(state)


def test_sie_mismatch_names_the_override(published_state):
    clip = open_clip.create_model(REF_ARCH, pretrained=None, force_quick_gelu=True).float()
    model = ReIDModel(clip, num_classes=5, camera_num=15, view_num=2, image_size=(256, 128), stride=(12, 12),
                      model_name=REF_ARCH)
    with pytest.raises(UserError, match='MODEL.SIE_CAMERA True MODEL.SIE_VIEW True'):
        model.load_image_state_dict(published_state)


def test_test_clipreid_evaluates_a_published_checkpoint_as_the_readme_says(reference, tmp_path, monkeypatch):
    """The seed's test command, with the reference's architecture and dataset: the features it saves are
    the published ones."""
    monkeypatch.setattr(clip_loader, 'supported_models', lambda: [REF_ARCH])
    out = tmp_path / 'out'
    metrics = test_clipreid.main([
        '--config_file', str(RECIPE), *SEED_OVERRIDES, 'TEST.EVAL_MODE', 'DDC',
        'TEST.WEIGHT', str(REF / 'msp_tiny_stage2.pth'), 'MODEL.NAME', REF_ARCH, 'MODEL.DEVICE', 'cpu',
        'DATASETS.ROOT_DIR', str(REF / 'mssl_tiny'), 'OUTPUT_DIR', str(out), 'DATALOADER.NUM_WORKERS', '0',
        'TEST.SAVE_FEATURES', 'True'])
    assert set(metrics) == {'DDC'}
    saved = np.load(out / 'features_DDC.npz', allow_pickle=False)
    row_of = {name: i for i, name in enumerate(reference['names'])}
    for paths, feats in (('q_paths', 'qf'), ('g_paths', 'gf')):
        rows = [row_of[Path(p).name] for p in saved[paths]]
        assert relative_difference(saved[feats], reference['features'][rows]) < 1e-4
    assert 'text-side tensors' in (out / 'test_log.txt').read_text()


# ---------------------------------------------------------------------------------------------
# Learning rates of the recipe, epoch by epoch
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def schedules():
    return json.loads((REF / 'lr_schedules.json').read_text())


@pytest.fixture(scope='module')
def recipe():
    return load_config(str(RECIPE), SEED_OVERRIDES)


def test_stage1_lr_of_every_epoch_is_the_published_one(schedules, recipe):
    solver = recipe.SOLVER.STAGE1
    for key, value in schedules['stage1']['config'].items():
        assert solver[key] == value, key
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer_stage1([param], solver.BASE_LR, solver.WEIGHT_DECAY, solver.OPTIMIZER_NAME)
    scheduler = make_stage1_scheduler(optimizer, solver.MAX_EPOCHS, solver.WARMUP_EPOCHS, solver.WARMUP_LR_INIT,
                                      solver.LR_MIN)
    expected = schedules['stage1']['epochs']
    assert len(expected) == solver.MAX_EPOCHS == 120
    for row in expected:
        begin_epoch(scheduler, row['epoch'])
        assert optimizer.param_groups[0]['lr'] == pytest.approx(row['lr'], rel=1e-9), row


def test_stage2_lr_of_every_epoch_is_the_published_one(schedules, recipe):
    solver = recipe.SOLVER.STAGE2
    config = schedules['stage2']['config']
    for ours, theirs in (('BASE_LR', 'BASE_LR'), ('BIAS_LR_FACTOR', 'BIAS_LR_FACTOR'), ('GAMMA', 'GAMMA'),
                         ('WARMUP_FACTOR', 'WARMUP_FACTOR'), ('WARMUP_EPOCHS', 'WARMUP_ITERS'),
                         ('WARMUP_METHOD', 'WARMUP_METHOD'), ('MAX_EPOCHS', 'MAX_EPOCHS'),
                         ('WEIGHT_DECAY', 'WEIGHT_DECAY'), ('WEIGHT_DECAY_BIAS', 'WEIGHT_DECAY_BIAS')):
        assert solver[ours] == config[theirs], ours
    assert list(solver.STEPS) == config['STEPS']
    params = [('image_encoder.proj', torch.nn.Parameter(torch.zeros(2))),
              ('image_encoder.ln_pre.bias', torch.nn.Parameter(torch.zeros(2)))]
    optimizer = make_optimizer_stage2(params, solver.BASE_LR, solver.WEIGHT_DECAY,
                                      bias_lr_factor=solver.BIAS_LR_FACTOR, weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
                                      optimizer_name=solver.OPTIMIZER_NAME)
    scheduler = WarmupMultiStepLR(optimizer, milestones=list(solver.STEPS), gamma=solver.GAMMA,
                                  warmup_factor=solver.WARMUP_FACTOR, warmup_iters=solver.WARMUP_EPOCHS,
                                  warmup_method=solver.WARMUP_METHOD)
    expected = schedules['stage2']['epochs']
    assert len(expected) == 60
    for row in expected:
        begin_epoch(scheduler, row['epoch'])
        optimizer.step()
        base, bias = (group['lr'] for group in optimizer.param_groups)
        assert base == pytest.approx(row['lr_base'], rel=1e-9), row
        assert bias == pytest.approx(row['lr_bias'], rel=1e-9), row


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
def test_recipe_normalises_as_published(recipe):
    assert list(recipe.INPUT.PIXEL_MEAN) == [0.5, 0.5, 0.5] and list(recipe.INPUT.PIXEL_STD) == [0.5, 0.5, 0.5]


def test_train_transform_is_the_published_one(recipe):
    """Resize (bicubic), flip, pad, crop, to tensor, normalise, then timm's random erasing with the
    published parameters; on a fixed image with flip certain and no padding, the pixels are the
    published pipeline's."""
    train = build_transforms(recipe.INPUT.SIZE_TRAIN, recipe.INPUT.SIZE_TEST, is_train=True,
                             prob_flip=recipe.INPUT.PROB, padding=recipe.INPUT.PADDING, re_prob=recipe.INPUT.RE_PROB,
                             mean=recipe.INPUT.PIXEL_MEAN, std=recipe.INPUT.PIXEL_STD).transforms
    assert [type(t) for t in train] == [T.Resize, T.RandomHorizontalFlip, T.Pad, T.RandomCrop, T.ToTensor,
                                        T.Normalize, RandomErasing]
    assert train[0].interpolation == T.InterpolationMode.BICUBIC and train[0].size == [256, 128]
    assert train[1].p == 0.5 and train[2].padding == 10
    erasing = train[-1]
    assert (erasing.probability, erasing.mode, erasing.min_count, erasing.max_count) == (0.5, 'pixel', 1, 1)
    assert (erasing.min_area, erasing.max_area) == (0.02, pytest.approx(1 / 3))

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 150, 3), dtype=np.uint8))
    ours = build_transforms([256, 128], [256, 128], is_train=True, prob_flip=1.0, padding=0, re_prob=0.0)(image)
    published = T.Compose([T.Resize([256, 128], interpolation=3), T.RandomHorizontalFlip(p=1.0),
                           T.ToTensor(), T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])(image)
    assert torch.equal(ours, published)
