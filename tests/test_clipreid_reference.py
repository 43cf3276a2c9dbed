"""Against CLIP-ReID's own numbers (tests/data/clipreid_reference, made with its code; its README says
how): its released checkpoint kinds (RN50 and ViT-B/16, with and without SIE, person and vehicle) give
its test features here, through every way in, and one RN50 stage-2 step of its trainer is this
project's step."""
import json
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import processor.stage2 as stage2
import search_clipreid
import test_clipreid
from config import load_config
from datasets.transforms import build_transforms
from loss.make_loss import image_to_text_loss, stage2_loss
from model import clip_loader, make_model, resnet_encoder
from model.feature_api import FeatureExtractor, load_reid_model
from model.make_model_clipreid import ReIDModel
from processor.settings import model_settings
from solver.make_optimizer import make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR, begin_epoch
from tests.helpers import fails
from tools import convert_published, export_onnx
from utils.errors import UserError

REF = Path(__file__).parent / 'data' / 'clipreid_reference'
RN_ARCH, VIT_ARCH = 'RN-RefTiny', 'ViT-RefTiny2-16'  # the sizes of the reference checkpoints (README)
for _arch in (RN_ARCH, VIT_ARCH):
    open_clip.add_model_config(REF / f'{_arch}.json')
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
HALF = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
MARKET = REF / 'market1501_tiny' / 'Market-1501-v15.09.15'
VERI = REF / 'veri_tiny' / 'VeRi'

# Each reference checkpoint: its CLIP-ReID config and the settings that config gives this project.
CASES = {
    'rn50_person': dict(arch=RN_ARCH, size=(256, 128), stride=(16, 16), norm=IMAGENET, root=MARKET,
                        classes=3, cameras=6, views=1, sie=(False, False), coe=3.0,
                        config='configs/person/cnn_clipreid.yml'),
    'rn50_vehicle': dict(arch=RN_ARCH, size=(256, 256), stride=(16, 16), norm=IMAGENET, root=VERI,
                         classes=4, cameras=20, views=8, sie=(False, False), coe=3.0,
                         config='configs/veri/cnn_prom.yml'),
    'vit_person_sie': dict(arch=VIT_ARCH, size=(256, 128), stride=(12, 12), norm=HALF, root=MARKET,
                           classes=3, cameras=6, views=1, sie=(True, False), coe=1.0,
                           config='configs/person/vit_clipreid.yml'),
    'vit_vehicle_sie': dict(arch=VIT_ARCH, size=(256, 256), stride=(16, 16), norm=HALF, root=VERI,
                            classes=4, cameras=20, views=8, sie=(True, True), coe=1.0,
                            config='configs/veri/vit_prom.yml'),
}


@pytest.fixture(scope='module')
def reference():
    return dict(np.load(REF / 'clipreid_reference.npz', allow_pickle=False))


def checkpoint(name: str) -> dict:
    return torch.load(REF / f'{name}.pth', map_location='cpu', weights_only=True)


def relative_difference(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def case_model(name: str, neck_feat='before', sie=None) -> ReIDModel:
    case = CASES[name]
    camera, view = case['sie'] if sie is None else sie
    clip = open_clip.create_model(case['arch'], pretrained=None, force_quick_gelu=True).float()
    return ReIDModel(clip, case['classes'], camera_num=case['cameras'], view_num=case['views'],
                     image_size=case['size'], stride=case['stride'], sie_camera=camera, sie_view=view,
                     sie_coe=case['coe'], neck_feat=neck_feat, model_name=case['arch'])


def image_paths(name: str, reference) -> list:
    root = CASES[name]['root']
    return [root / folder / file for folder, file in zip(reference[f'{name}/folders'], reference[f'{name}/names'])]


def case_batch(name: str, reference) -> torch.Tensor:
    """The reference images through this project's test transform (CLIP-ReID's val transform)."""
    case = CASES[name]
    transform = build_transforms(list(case['size']), list(case['size']), is_train=False, **case['norm'])
    return torch.stack([transform(Image.open(path).convert('RGB')) for path in image_paths(name, reference)])


def features(model, images, name, reference) -> torch.Tensor:
    labels = {'cam_label': torch.from_numpy(reference[f'{name}/camids']),
              'view_label': torch.from_numpy(reference[f'{name}/views'])}
    with torch.no_grad():
        return model.eval()(images, **labels)


# ---------------------------------------------------------------------------------------------
# Every kind of released checkpoint, loaded into the model directly
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(CASES))
def test_clipreid_checkpoint_gives_clipreid_features(reference, name):
    model = case_model(name)
    model.load_image_state_dict(checkpoint(name), for_test=True)
    images = case_batch(name, reference)
    for neck_feat, key in (('before', 'features'), ('after', 'features_after_bn')):
        model.neck_feat = neck_feat  # TEST.NECK_FEAT
        got = features(model, images, name, reference)
        assert relative_difference(got, reference[f'{name}/{key}']) < 1e-4, neck_feat


@pytest.mark.parametrize('name', ['vit_person_sie', 'vit_vehicle_sie'])
def test_clipreid_checkpoint_without_sie(reference, name):
    """The same ViT without its SIE table is a CLIP-ReID checkpoint of the plain kind."""
    state = {k: v for k, v in checkpoint(name).items() if k != 'cv_embed'}
    model = case_model(name, sie=(False, False))
    model.load_image_state_dict(state, for_test=True)
    got = features(model, case_batch(name, reference), name, reference)
    assert relative_difference(got, reference[f'{name}/features_without_sie']) < 1e-4


@pytest.mark.parametrize('name', ['rn50_person', 'vit_vehicle_sie'])
def test_data_parallel_and_baseline_layouts(reference, name):
    """What nn.DataParallel saves (`module.` keys), and CLIP-ReID's baseline models (train.py), which
    store the same image side without the text side (the README shows their features are the same)."""
    state = checkpoint(name)
    for variant in (OrderedDict(('module.' + k, v) for k, v in state.items()),
                    {k: v for k, v in state.items() if not k.startswith(('prompt_learner.', 'text_encoder.'))}):
        model = case_model(name)
        model.load_image_state_dict(variant, for_test=True)
        got = features(model, case_batch(name, reference), name, reference)
        assert relative_difference(got, reference[f'{name}/features']) < 1e-4


def test_resnet_checkpoint_with_an_unused_sie_table(reference, caplog):
    """CLIP-ReID builds `cv_embed` for a ResNet asked for SIE and never reads it: it is ignored."""
    state = dict(checkpoint('rn50_person'), cv_embed=torch.randn(6, 128))
    model = case_model('rn50_person')
    with caplog.at_level('INFO'):
        model.load_image_state_dict(state, for_test=True)
    assert 'cv_embed was ignored' in caplog.text
    got = features(model, case_batch('rn50_person', reference), 'rn50_person', reference)
    assert relative_difference(got, reference['rn50_person/features']) < 1e-4


@pytest.mark.parametrize('change', ['stride-2 last stage', 'unresized positions', 'attention pool query'])
def test_the_resnet_fixture_catches_a_wrong_build(reference, change, monkeypatch):
    """The RN50 fixture is sensitive to what CLIP-ReID changes in CLIP's ResNet."""
    model = case_model('rn50_person')
    model.load_image_state_dict(checkpoint('rn50_person'), for_test=True)
    encoder = model.image_encoder
    if change == 'stride-2 last stage':
        encoder.layer4[0].avgpool = torch.nn.AvgPool2d(2)
        setattr(encoder.layer4[0].downsample, '-1', torch.nn.AvgPool2d(2))
        pool = encoder.attnpool
        with torch.no_grad():  # positions for the 8x4 map a stride-2 last stage gives
            pool.positional_embedding = torch.nn.Parameter(resnet_encoder.resize_position_embedding(
                pool.positional_embedding.detach(), (16, 8), (8, 4)))
    elif change == 'unresized positions':
        pool = encoder.attnpool
        table = pool.positional_embedding.detach()
        with torch.no_grad():  # the 7x7 table read row-major into the 16x8 grid, as if never resized
            pool.positional_embedding = torch.nn.Parameter(torch.cat([table[:1], table[1:].roll(8, 0)]))
    else:
        monkeypatch.setattr(resnet_encoder.ReIDAttentionPool, 'forward', _pool_from_first_position)
    got = features(model, case_batch('rn50_person', reference), 'rn50_person', reference)
    assert relative_difference(got, reference['rn50_person/features']) > 1e-3


def _pool_from_first_position(self, x):
    tokens = x.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1) + self.positional_embedding
    batch, _, width = tokens.shape
    heads = self.num_heads

    def split(t):
        return t.view(batch, t.shape[1], heads, width // heads).transpose(1, 2)

    query = split(self.q_proj(tokens[:, 1:2]))  # the first map position instead of the mean token
    out = torch.nn.functional.scaled_dot_product_attention(query, split(self.k_proj(tokens)),
                                                           split(self.v_proj(tokens)))
    return self.c_proj(out.transpose(1, 2).reshape(batch, width))


# ---------------------------------------------------------------------------------------------
# The other backbone's checkpoint: one line naming MODEL.NAME
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('weights, name', [('rn50_person', 'vit_person_sie'), ('vit_person_sie', 'rn50_person')])
def test_a_checkpoint_of_the_other_backbone_names_model_name(weights, name):
    with pytest.raises(UserError, match=f"but MODEL.NAME '{CASES[name]['arch']}' is a"):
        case_model(name).load_image_state_dict(checkpoint(weights), for_test=True)


def test_a_resnet_checkpoint_of_another_input_size_names_the_size():
    with pytest.raises(UserError, match=r'256 positions in image_encoder.attnpool.positional_embedding, the model 128 '
                                        r'\(16x8\): pass the INPUT.SIZE_TRAIN it was trained with$'):
        case_model('rn50_person').load_image_state_dict(checkpoint('rn50_vehicle'), for_test=True)


# ---------------------------------------------------------------------------------------------
# Every way in: test_clipreid.py (TEST.WEIGHT), load_reid_model, search, ONNX export, conversion
# ---------------------------------------------------------------------------------------------
# What a user passes with each checkpoint (besides MODEL.NAME, here the tiny reference archs).
OVERRIDES = {
    'rn50_person': ['DATASETS.NAMES', 'market1501'],
    'rn50_vehicle': ['DATASETS.NAMES', 'veri'],
    'vit_person_sie': ['DATASETS.NAMES', 'market1501', 'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '1.0',
                       'MODEL.STRIDE_SIZE', '[12, 12]'],
    'vit_vehicle_sie': ['DATASETS.NAMES', 'veri', 'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True',
                        'MODEL.SIE_COE', '1.0'],
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def reference_archs(monkeypatch):
    monkeypatch.setattr(clip_loader, 'supported_models', lambda: [RN_ARCH, VIT_ARCH])


def user_options(name: str) -> list:
    return [str(ROOT / CASES[name]['config']), 'MODEL.NAME', CASES[name]['arch'], *OVERRIDES[name]]


def rows_by_name(reference, name: str, paths) -> list:
    row_of = {file: i for i, file in enumerate(reference[f'{name}/names'])}
    return [row_of[Path(p).name] for p in paths]


@pytest.mark.parametrize('name', list(CASES))
def test_test_clipreid_with_a_clipreid_checkpoint(reference, reference_archs, tmp_path, name):
    """CLIP-ReID's evaluation command with its checkpoint (TEST.WEIGHT): the features it saves are
    CLIP-ReID's."""
    config, *opts = user_options(name)
    out = tmp_path / 'out'
    metrics = test_clipreid.main([
        '--config_file', config, *opts, 'TEST.WEIGHT', str(REF / f'{name}.pth'), 'MODEL.DEVICE', 'cpu',
        'DATASETS.ROOT_DIR', str(CASES[name]['root']), 'OUTPUT_DIR', str(out), 'DATALOADER.NUM_WORKERS', '0',
        'TEST.SAVE_FEATURES', 'True'])
    assert set(metrics) == {'DDC'}
    saved = np.load(out / 'features_DDC.npz', allow_pickle=False)
    for paths, feats in (('q_paths', 'qf'), ('g_paths', 'gf')):
        rows = rows_by_name(reference, name, saved[paths])
        assert relative_difference(saved[feats], reference[f'{name}/features'][rows]) < 1e-4


@pytest.mark.parametrize('name', list(CASES))
def test_load_reid_model_with_a_clipreid_checkpoint(reference, reference_archs, name):
    """A VeRi model's cameras x viewpoints table is split by VeRi-776's 20 cameras (8 viewpoints)."""
    config, *opts = user_options(name)
    model = load_reid_model(str(REF / f'{name}.pth'), device='cpu', config_file=config, opts=opts)
    if name == 'vit_vehicle_sie':
        assert (model.reid_meta['camera_num'], model.reid_meta['view_num']) == (20, 8)
    extract = FeatureExtractor(model, normalize=False)
    got = extract([str(p) for p in image_paths(name, reference)], cameras=reference[f'{name}/camids'].tolist(),
                  views=reference[f'{name}/views'].tolist())
    assert relative_difference(got, reference[f'{name}/features']) < 1e-4


@pytest.mark.parametrize('name', ['rn50_person', 'vit_person_sie'])
def test_search_with_a_clipreid_checkpoint(reference, reference_archs, tmp_path, name):
    """search_clipreid.py reads the cameras from Market-1501 names; its features are CLIP-ReID's, normalised."""
    config, *opts = user_options(name)
    out = tmp_path / 'search'
    search_clipreid.main(['--weight', str(REF / f'{name}.pth'), '--query', str(MARKET / 'query'),
                          '--gallery', str(MARKET / 'bounding_box_test'), '--output', str(out), '--workers', '0',
                          '--picture-queries', '0', '--device', 'cpu', '--config_file', config, *opts])
    saved = np.load(out / 'search_features.npz', allow_pickle=False)
    expected = torch.nn.functional.normalize(torch.from_numpy(reference[f'{name}/features']), dim=1).numpy()
    for paths, feats in (('query_paths', 'query_features'), ('gallery_paths', 'gallery_features')):
        assert relative_difference(saved[feats], expected[rows_by_name(reference, name, saved[paths])]) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('name, side', [('rn50_person', []), ('vit_person_sie', ['--side', 'inputs'])])
def test_onnx_export_of_a_clipreid_checkpoint(reference, reference_archs, tmp_path, name, side):
    import onnxruntime as ort
    config, *opts = user_options(name)
    path = tmp_path / 'reid.onnx'
    result = export_onnx.main(['--weight', str(REF / f'{name}.pth'), '--output', str(path), '--raw-features',
                               *side, '--config_file', config, *opts])
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    inputs = {'images': case_batch(name, reference).numpy()}
    if side:
        inputs['camera'] = reference[f'{name}/camids']
    got = session.run(['features'], {k: v for k, v in inputs.items() if k in result['input_names']})[0]
    assert relative_difference(got, reference[f'{name}/features']) < 1e-4


@pytest.mark.parametrize('name', ['rn50_person', 'vit_person_sie'])
def test_convert_a_clipreid_checkpoint_both_ways(reference, reference_archs, tmp_path, name):
    config, *opts = user_options(name)
    project, published = tmp_path / 'project.pth', tmp_path / 'published.pth'
    convert_published.main(['--to', 'project', '--weight', str(REF / f'{name}.pth'), '--output', str(project),
                            '--config_file', config, *opts])
    model = load_reid_model(str(project), device='cpu')  # self-describing now: no config
    got = FeatureExtractor(model, normalize=False)([str(p) for p in image_paths(name, reference)],
                                                   cameras=reference[f'{name}/camids'].tolist())
    assert relative_difference(got, reference[f'{name}/features']) < 1e-4
    convert_published.main(['--to', 'published', '--weight', str(project), '--output', str(published)])
    back = torch.load(published, weights_only=True)
    original = {k: v for k, v in checkpoint(name).items() if not k.startswith(('prompt_learner.', 'text_encoder.'))}
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


@pytest.mark.parametrize('weights, name', [('rn50_person', 'vit_person_sie'), ('vit_person_sie', 'rn50_person')])
def test_test_clipreid_refuses_the_other_backbone_in_one_line(reference_archs, tmp_path, capsys, weights, name):
    config, *opts = user_options(name)
    line = fails(test_clipreid.main, [
        '--config_file', config, *opts, 'TEST.WEIGHT', str(REF / f'{weights}.pth'), 'MODEL.DEVICE', 'cpu',
        'DATASETS.ROOT_DIR', str(MARKET), 'OUTPUT_DIR', str(tmp_path / 'out'), 'DATALOADER.NUM_WORKERS', '0'], capsys)
    assert f"MODEL.NAME '{CASES[name]['arch']}'" in line and 'pass the MODEL.NAME it was trained with' in line


# ---------------------------------------------------------------------------------------------
# One RN50 stage-2 step of CLIP-ReID's trainer, through this project's trainer
# ---------------------------------------------------------------------------------------------
PUBLISHED_TEXT_NAMES = (('prompt_learners.all.', 'prompt_learner.'), ('text_encoder.resblocks.', 'text_encoder.transformer.resblocks.'))


def published_name(name: str) -> str:
    for ours, theirs in PUBLISHED_TEXT_NAMES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


class _OneBatchLoader:
    """What train_stage2 asks of its loader, yielding the reference batch once."""

    class _Sampler:
        def set_epoch(self, epoch):
            pass

    def __init__(self, batch):
        self.batch, self.sampler, self.generator = batch, self._Sampler(), None

    def __len__(self):
        return 1

    def __iter__(self):
        return iter([self.batch])


@pytest.fixture(scope='module')
def stage2_step(tmp_path_factory):
    """train_stage2 (configs/person/cnn_clipreid.yml, one epoch of the reference batch) from the RN50
    checkpoint, recording what the reference recorded."""
    ref = dict(np.load(REF / 'clipreid_reference.npz', allow_pickle=False))
    notes = json.loads((REF / 'clipreid_reference.json').read_text())['step']
    out = tmp_path_factory.mktemp('stage2')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clip_loader, 'supported_models', lambda: [RN_ARCH, VIT_ARCH])
        cfg = load_config(str(ROOT / 'configs/person/cnn_clipreid.yml'), [
            'MODEL.NAME', RN_ARCH, 'MODEL.DEVICE', 'cpu', 'OUTPUT_DIR', str(out), 'SOLVER.STAGE2.MAX_EPOCHS', '1',
            'SOLVER.STAGE2.IMS_PER_BATCH', '12', 'SOLVER.AMP', 'off'])
        model = make_model(model_settings(cfg), notes['num_classes'], 6, 2, text_views=['all'], load_pretrained=False)
        model.load_image_state_dict(checkpoint('rn50_person'), for_test=False)
        names = {id(p): n for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        recorded = {}
        make_optimizer = stage2.make_optimizer_stage2

        def recording_optimizer(*args, **kwargs):
            optimizer = make_optimizer(*args, **kwargs)

            def before_step(opt, *_):
                recorded['groups'] = {names[id(p)]: (g['lr'], g['weight_decay'], p.grad.detach().clone())
                                      for g in opt.param_groups for p in g['params']}
            optimizer.register_step_pre_hook(before_step)
            return optimizer

        step = stage2.train_step

        def recording_step(*args, **kwargs):
            recorded['result'] = step(*args, **kwargs)
            return recorded['result']

        patch.setattr(stage2, 'make_optimizer_stage2', recording_optimizer)
        patch.setattr(stage2, 'train_step', recording_step)
        images = torch.stack([TF.normalize(TF.to_tensor(image), cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
                              for image in ref['step/images_resized_uint8']])
        batch = (images, torch.from_numpy(ref['step/labels']), torch.from_numpy(ref['step/cameras']),
                 torch.from_numpy(ref['step/views']), list(ref['step/names']))
        text = {'all': torch.from_numpy(ref['step/text_features'])}
        stage2.train_stage2(cfg, model, text, _OneBatchLoader(batch), notes['num_classes'], torch.device('cpu'),
                            logging.getLogger('test.stage2_step'))
    after = dict(model.named_parameters())
    updates = {n: (after[n].detach() - before[n]).numpy() for n in recorded['groups']}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    return {'ref': ref, 'notes': notes, 'recorded': recorded, 'updates': updates, 'frozen': frozen,
            'buffers': dict(model.named_buffers())}


def test_rn50_stage2_step_loss_parts_are_clipreids(stage2_step):
    notes, result = stage2_step['notes'], stage2_step['recorded']['result']
    parts = {name: float(value) for name, value in result.parts.items()}
    expected = {'id': notes['parts']['id'], 'triplet': notes['parts']['triplet'], 'i2t_0': notes['parts']['i2t']}
    assert parts.keys() == expected.keys()
    for name, value in expected.items():
        assert parts[name] == pytest.approx(value, rel=1e-5), name
    assert float(result.loss) == pytest.approx(notes['loss'], rel=1e-5)


def test_rn50_stage2_step_optimizes_and_freezes_clipreids_tensors(stage2_step):
    notes, groups = stage2_step['notes'], stage2_step['recorded']['groups']
    expected = {row['name']: (row['lr'], row['weight_decay']) for row in notes['optimized']}
    assert {published_name(n) for n in groups} == set(expected)
    assert {published_name(n) for n in stage2_step['frozen']} == set(notes['frozen'])
    for name, (lr, decay, _) in groups.items():
        assert (lr, decay) == pytest.approx(expected[published_name(name)], rel=1e-12), name


def _largest_gradient(ref) -> float:
    return max(np.abs(ref[k]).max() for k in ref if k.startswith('step64/grad/'))


def test_rn50_stage2_step_gradients_are_clipreids(stage2_step):
    """Each gradient is within 1e-4 of CLIP-ReID's (relative to the tensor's largest), or, where CLIP-ReID's
    own fp32 step is further than that from its float64 step (train-mode BatchNorm of a 12-image batch
    amplifies rounding in the stem), within 3x that rounding."""
    ref, groups = stage2_step['ref'], stage2_step['recorded']['groups']
    largest = _largest_gradient(ref)
    for name, (_, _, grad) in groups.items():
        key = published_name(name)
        expected, exact = ref[f'step/grad/{key}'], ref[f'step64/grad/{key}']
        if np.abs(exact).max() < 1e-9 * largest:  # the key bias: zero in exact arithmetic, rounding in both
            assert np.abs(grad.numpy()).max() < 1e-5 * largest, name
            continue
        scale = np.abs(exact).max()
        own_rounding = np.abs(expected - exact).max() / scale
        assert np.abs(grad.numpy() - expected).max() / scale < max(1e-4, 3 * own_rounding), name


def test_rn50_stage2_updates_from_clipreids_gradients_are_clipreids(stage2_step):
    """This project's optimizer and schedule (two groups, epoch 1), given CLIP-ReID's gradients, make
    CLIP-ReID's updates. (Adam's first update is about lr x the sign of gradient + decay x weight, so
    from this project's own gradients an element whose gradient is at the level of rounding may differ.)"""
    ref, notes = stage2_step['ref'], stage2_step['notes']
    solver = load_config(str(ROOT / 'configs/person/cnn_clipreid.yml')).SOLVER.STAGE2
    start = checkpoint('rn50_person')
    params = {row['name']: torch.nn.Parameter(start[row['name']].clone()) for row in notes['optimized']}
    optimizer = make_optimizer_stage2(params.items(), solver.BASE_LR, solver.WEIGHT_DECAY,
                                      bias_lr_factor=solver.BIAS_LR_FACTOR, weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
                                      optimizer_name=solver.OPTIMIZER_NAME)
    scheduler = WarmupMultiStepLR(optimizer, list(solver.STEPS), solver.GAMMA, solver.WARMUP_FACTOR,
                                  solver.WARMUP_EPOCHS, solver.WARMUP_METHOD)
    begin_epoch(scheduler, 1)
    for name, param in params.items():
        param.grad = torch.from_numpy(ref[f'step/grad/{name}']).clone()
    optimizer.step()
    for name, param in params.items():
        expected = ref[f'step/update/{name}']
        got = (param.detach() - start[name]).numpy()
        assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max(), name


def test_rn50_stage2_gradients_in_float64_are_clipreids(stage2_step):
    """The same forward, loss and backward in float64 (no fp32 rounding to hide behind): every gradient
    equals CLIP-ReID's float64 one to its float32 storage."""
    ref, notes = stage2_step['ref'], stage2_step['notes']
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clip_loader, 'supported_models', lambda: [RN_ARCH, VIT_ARCH])
        cfg = load_config(str(ROOT / 'configs/person/cnn_clipreid.yml'), ['MODEL.NAME', RN_ARCH])
        model = make_model(model_settings(cfg), notes['num_classes'], 6, 2, load_pretrained=False)
    model.load_image_state_dict(checkpoint('rn50_person'), for_test=False)
    model.double().train()
    text = torch.from_numpy(ref['step/text_features']).double()
    criterion = stage2.build_criterion(cfg, notes['num_classes'], {'all': text})
    images = torch.stack([TF.normalize(TF.to_tensor(image).double(), cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
                          for image in ref['step/images_resized_uint8']])
    labels = torch.from_numpy(ref['step/labels'])
    out = model(images)
    total, _ = stage2_loss(out['cls_scores'], out['feats'], labels, criterion.id_loss, criterion.triplet, 1.0, 1.0)
    total = total + image_to_text_loss(out['proj'], text, labels, torch.ones_like(labels, dtype=torch.bool),
                                       criterion.id_loss)
    # (CLIP-ReID's label-smoothing targets are float32 even in a float64 step: 1e-9 apart)
    assert float(total.detach()) == pytest.approx(ref_loss_float64(), rel=1e-8)
    total.backward()
    largest = _largest_gradient(ref)
    for name, param in model.named_parameters():
        if param.grad is None or not param.requires_grad or name.startswith(('text_encoder', 'prompt_learners')):
            continue
        exact = ref[f'step64/grad/{published_name(name)}']
        scale = max(np.abs(exact).max(), 1e-9 * largest)  # the key bias's gradient is zero
        assert np.abs(param.grad.numpy() - exact).max() / scale < 1e-6, name


def ref_loss_float64() -> float:
    return json.loads((REF / 'clipreid_reference.json').read_text())['step64']['loss']


def test_rn50_stage2_step_batchnorm_statistics_are_clipreids(stage2_step):
    """The ResNet's BatchNorm layers and both necks train on the batch's statistics, as CLIP-ReID's."""
    ref, buffers = stage2_step['ref'], stage2_step['buffers']
    keys = [k[len('step/buffer_after/'):] for k in ref if k.startswith('step/buffer_after/')]
    assert {k for k in buffers if 'running_' in k and not k.startswith('text_encoder')} == set(keys)
    for key in keys:
        assert relative_difference(buffers[key], ref[f'step/buffer_after/{key}']) < 1e-5, key
