"""Self-describing checkpoints and the Python feature API (model/checkpoint_meta.py, model/feature_api.py)."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from config import load_config
from datasets import init_dataset
from datasets.make_dataloader import make_ordered_loader
from datasets.mssl import SKY_CAMERAS
from model import make_model
from model.checkpoint_meta import META_FORMAT, describe_model
from model.feature_api import FeatureExtractor, load_reid_model, sie_weights
from processor.inference import extract_features
from processor.stage2 import save_checkpoint
from solver.scheduler import WarmupMultiStepLR
from tests.helpers import tiny_opts
from processor import resume as training_state
from utils.errors import UserError
from processor.settings import description_settings, loader_settings, model_settings

CPU = torch.device('cpu')


def write_tiny_checkpoint(root: str, out: str, *extra: str):
    """A stage-2 checkpoint of the tiny model, written by the trainer's own writer; (cfg, dataset, model, path)."""
    os.makedirs(out, exist_ok=True)
    cfg = load_config('', tiny_opts(root, out, *extra))
    dataset = init_dataset('mssl', root)
    torch.manual_seed(0)
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       load_pretrained=False)
    with torch.no_grad():  # BN statistics away from their defaults, so that a wrong neck shows
        model.bottleneck.running_mean.normal_()
        model.bottleneck_proj.running_var.uniform_(0.5, 2.0)
    return cfg, dataset, model.eval(), save_checkpoint(cfg, model, 1)


@pytest.fixture(scope='module')
def tiny_checkpoint(tiny_mssl, tmp_path_factory):
    return write_tiny_checkpoint(tiny_mssl, str(tmp_path_factory.mktemp('ckpt')))


def evaluator_features(cfg, model, items):
    return F.normalize(extract_features(model, make_ordered_loader(loader_settings(cfg), items, CPU), CPU), dim=1)


def test_checkpoint_describes_its_model(tiny_checkpoint):
    cfg, dataset, _, path = tiny_checkpoint
    meta = torch.load(path, weights_only=True)['meta']
    assert meta['format'] == META_FORMAT
    assert (meta['arch'], meta['num_classes'], meta['camera_num'], meta['view_num']) == \
        ('ViT-Tiny-16', dataset.num_train_pids, 15, 2)
    assert (meta['image_size'], meta['stride'], meta['patch_size']) == ([64, 32], [12, 12], [16, 16])
    assert (meta['sie_camera'], meta['sie_view'], meta['sie_coe']) == (True, True, 0.5)
    assert (meta['width'], meta['embed_dim'], meta['feature_dim']) == (128, 64, 192)
    assert meta['pixel_mean'] == pytest.approx(list(cfg.INPUT.PIXEL_MEAN))
    assert meta['interpolation'] in ('bicubic', 'bilinear')
    assert meta['camera_names'][4] == 'c05' and meta['view_names'] == ['ground', 'sky']
    assert [cam + 1 for cam, view in enumerate(meta['camera_views']) if view == 1] == list(SKY_CAMERAS)


def test_extractor_reproduces_the_evaluator_features(tiny_checkpoint):
    cfg, dataset, model, path = tiny_checkpoint
    items = dataset.query + dataset.gallery[:5]
    expected = evaluator_features(cfg, model, items)
    loaded = load_reid_model(path, device='cpu')
    assert type(loaded) is type(model)
    got = FeatureExtractor(loaded, batch_size=4)([p for p, *_ in items], cameras=[c for _, _, c, _ in items],
                                                 views=[v for *_, v in items])
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)
    names = [loaded.reid_meta['camera_names'][c] for _, _, c, _ in items]
    by_name = FeatureExtractor(loaded)([p for p, *_ in items], cameras=names,
                                       views=['sky' if v else 'ground' for *_, v in items])
    assert torch.allclose(by_name, got, atol=1e-6)  # another batch size: same up to rounding


def test_every_input_kind_gives_the_same_features(tiny_checkpoint):
    _, dataset, _, path = tiny_checkpoint
    extract = FeatureExtractor(load_reid_model(path, device='cpu'), batch_size=2)
    paths = [p for p, *_ in dataset.query[:3]]
    pil = [Image.open(p).convert('RGB') for p in paths]
    arrays = [np.array(img) for img in pil]
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
    labels = dict(views=['sky', 'ground', None])
    reference = extract(paths, **labels)
    for images in (pil, arrays, tensors, [t.float() / 255 for t in tensors]):
        assert torch.allclose(extract(images, **labels), reference, atol=1e-6)
    raw = FeatureExtractor(extract.model, normalize=False)(paths, **labels)
    assert torch.allclose(F.normalize(raw, dim=1), reference, atol=1e-6)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3))


def test_unknown_side_information_is_a_stated_choice(tiny_checkpoint):
    _, dataset, _, path = tiny_checkpoint
    model = load_reid_model(path, device='cpu')
    meta = model.reid_meta
    # A sky image of unknown camera: the average of the (camera, sky) rows of the six drones.
    weights = sie_weights(meta, [-1], [1])[0]
    assert sorted(torch.nonzero(weights).flatten().tolist()) == [(cam - 1) * 2 + 1 for cam in SKY_CAMERAS]
    assert torch.allclose(weights.sum(), torch.tensor(1.0))
    # A known camera fills in its view; nothing known averages every camera-view pair of training.
    assert torch.nonzero(sie_weights(meta, [3], [-1])[0]).flatten().tolist() == [3 * 2 + 1]
    assert int((sie_weights(meta, [-1], [-1])[0] > 0).sum()) == 15

    paths = [p for p, *_ in dataset.query[:2]]
    mean = FeatureExtractor(model)(paths)
    image = FeatureExtractor(model).transform(Image.open(paths[0]).convert('RGB')).unsqueeze(0)
    with torch.no_grad():
        table = model.image_encoder.sie_embed
        expected = model(image, sie_weights=sie_weights(meta, [-1], [-1]))
        omitted = torch.cat(model.image_encoder(image, use_sie=False)[1:], dim=1)
    assert torch.allclose(mean[0], F.normalize(expected, dim=1)[0], atol=1e-6)
    assert table.abs().sum() > 0
    assert torch.allclose(FeatureExtractor(model, side_info='omit')(paths[:1]), F.normalize(omitted, dim=1), atol=1e-6)
    with pytest.raises(UserError, match='no camera and view label'):
        FeatureExtractor(model, side_info='error')(paths)


def test_half_precision_is_close_to_fp32(tiny_checkpoint):
    _, dataset, _, path = tiny_checkpoint
    model = load_reid_model(path, device='cpu')
    paths = [p for p, *_ in dataset.query[:4]]
    full = FeatureExtractor(model)(paths, views=[1, 1, 0, 0])
    half = FeatureExtractor(model, precision='bf16')(paths, views=[1, 1, 0, 0])
    assert half.dtype == torch.float32
    assert (full * half).sum(1).min() > 0.99  # cosine similarity


def test_older_and_bare_checkpoints_load_from_a_config(tiny_checkpoint, tmp_path):
    cfg, dataset, model, path = tiny_checkpoint
    saved = torch.load(path, weights_only=True)
    paths = [p for p, *_ in dataset.query[:3]]
    cams, views = [c for _, _, c, _ in dataset.query[:3]], [v for *_, v in dataset.query[:3]]
    expected = FeatureExtractor(load_reid_model(path, device='cpu'))(paths, cameras=cams, views=views)

    older = tmp_path / 'older.pth'  # as this project wrote them before checkpoints described their model
    torch.save({'model': saved['model'], 'epoch': 1, 'config': saved['config']}, older)
    got = FeatureExtractor(load_reid_model(str(older), device='cpu'))(paths, cameras=cams, views=views)
    assert torch.allclose(got, expected, atol=1e-6)

    bare = tmp_path / 'bare.pth'
    torch.save(saved['model'], bare)
    opts = ['MODEL.NAME', 'ViT-Tiny-16', 'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True', 'MODEL.SIE_COE',
            '0.5', 'MODEL.STRIDE_SIZE', '[12, 12]', 'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]']
    got = FeatureExtractor(load_reid_model(str(bare), device='cpu', opts=opts))(paths, cameras=cams, views=views)
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(UserError, match='SIE table'):
        load_reid_model(str(bare), device='cpu', opts=opts[:2] + opts[8:])


def test_resume_state_describes_its_model_too(tiny_checkpoint, tmp_path):
    cfg, dataset, model, path = tiny_checkpoint
    cfg = load_config('', tiny_opts(os.path.dirname(os.path.dirname(dataset.query[0][0])), str(tmp_path)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[2])
    resume = training_state.save_resume_state(cfg, model, optimizer, scheduler, torch.amp.GradScaler('cpu', enabled=False),
                                          1, {}, [], path, CPU, meta=describe_model(description_settings(cfg), model))
    assert torch.load(resume, weights_only=True)['meta'] == describe_model(description_settings(cfg), model)
    paths = [p for p, *_ in dataset.query[:2]]
    from_resume = FeatureExtractor(load_reid_model(resume, device='cpu'))(paths, views=[1, 0])
    from_weights = FeatureExtractor(load_reid_model(path, device='cpu'))(paths, views=[1, 0])
    assert torch.equal(from_resume, from_weights)


def test_files_that_are_not_reid_checkpoints_are_refused(tmp_path):
    cache = tmp_path / 'stage1_text_features.pt'
    torch.save({'fingerprint': 'x', 'features': {'sky': torch.zeros(2, 4)}}, cache)
    with pytest.raises(UserError, match='not a re-ID model checkpoint'):
        load_reid_model(str(cache), device='cpu')
    text = tmp_path / 'notes.pth'
    text.write_text('hello')
    with pytest.raises(UserError, match='not a PyTorch checkpoint'):
        load_reid_model(str(text), device='cpu')
    with pytest.raises(UserError, match='does not exist'):
        load_reid_model(str(tmp_path / 'missing.pth'), device='cpu')


def test_testing_with_other_preprocessing_than_trained_is_logged(tiny_checkpoint):
    from model.checkpoint_meta import config_differences
    cfg, dataset, _, path = tiny_checkpoint
    meta = torch.load(path, weights_only=True)['meta']
    assert config_differences(meta, description_settings(cfg)) == []
    assert config_differences(None, description_settings(cfg)) == []
    other = load_config('', tiny_opts(os.path.dirname(os.path.dirname(dataset.query[0][0])), cfg.OUTPUT_DIR,
                                      'INPUT.PIXEL_MEAN', '[0.4, 0.4, 0.4]'))
    assert [d.split()[0] for d in config_differences(meta, description_settings(other))] == ['INPUT.PIXEL_MEAN']
