"""CLIP towers for re-ID (model/): equivalence with open_clip, checkpoints, prompts, the re-ID model."""
import logging
import time
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn
from yacs.config import CfgNode as CN

from model import load_clip, make_model
from model.clip_loader import TINY_NAME, TINY_RESNET_NAME, build_clip
from model.image_encoder import ImageEncoder, ReIDImageEncoder, build_image_encoder
from model.resnet_encoder import ReIDAttentionPool, ReIDResNetEncoder, resnet_feature_grid
from model.make_model_clipreid import ReIDModel
from model.text_encoder import PromptLearner, TextEncoder
from processor.settings import model_settings
from utils.errors import UserError

SKY = 'A sky photo of a X X X X person.'
GROUND = 'A ground photo of a X X X X person.'
PLAIN = 'A photo of a X X X X person.'
ATOL = 1e-5


@pytest.fixture(scope='module')
def clip():
    torch.manual_seed(0)
    return load_clip(TINY_NAME)


def make_cfg(**model_overrides) -> CN:
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.NAME = TINY_NAME
    cfg.MODEL.PRETRAIN_PATH = ''
    cfg.MODEL.STRIDE_SIZE = [16, 16]
    cfg.MODEL.SIE_CAMERA = False
    cfg.MODEL.SIE_VIEW = False
    cfg.MODEL.SIE_COE = 3.0
    cfg.MODEL.PROMPT_TEMPLATE = PLAIN
    cfg.MODEL.PROMPT_TEMPLATE_SKY = SKY
    cfg.MODEL.PROMPT_TEMPLATE_GROUND = GROUND
    cfg.INPUT = CN()
    cfg.INPUT.SIZE_TRAIN = [64, 32]
    cfg.TEST = CN()
    cfg.TEST.NECK_FEAT = 'before'
    for key, value in model_overrides.items():
        setattr(cfg.MODEL, key, value)
    return cfg


def build(seed=0, num_classes=5, camera_num=3, view_num=2, text_views=(), load_pretrained=True, **overrides):
    torch.manual_seed(seed)
    return make_model(model_settings(make_cfg(**overrides)), num_classes, camera_num, view_num,
                      text_views=text_views, load_pretrained=load_pretrained)


# ---------------------------------------------------------------- equivalence with open_clip

def test_image_tower_matches_open_clip_at_native_size(clip):
    encoder = ReIDImageEncoder(clip.visual, image_size=(224, 224), stride=(16, 16))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = clip.encode_image(images)
        penultimate, feat, proj = encoder.eval()(images)
        proj_train = encoder.train()(images)[2]  # our fused attention runs in training mode too
    assert penultimate.shape == feat.shape == (2, 128) and proj.shape == (2, 64)
    torch.testing.assert_close(proj, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(proj_train, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(penultimate, feat)


@pytest.mark.parametrize('truncate', [True, False])
def test_text_encoder_matches_open_clip(clip, truncate):
    tokens = open_clip.tokenize(['a photo of a dog.', 'a sky photo of a tall person in a red coat'])
    encoder = TextEncoder(clip, truncate=truncate)
    with torch.no_grad():
        ours = encoder(clip.token_embedding(tokens), tokens)
        expected = clip.encode_text(tokens)
    assert ours.shape == (2, 64)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- image tower

@pytest.mark.parametrize('stride, grid', [((16, 16), (16, 8)), ((12, 12), (21, 10))])
def test_grid_and_position_embedding_for_re_id_images(clip, stride, grid):
    encoder = ReIDImageEncoder(clip.visual, image_size=(256, 128), stride=stride)
    assert encoder.grid_size == grid
    assert encoder.positional_embedding.shape == (1 + grid[0] * grid[1], 128)
    assert encoder.conv1.stride == stride
    assert torch.equal(encoder.conv1.weight, clip.visual.conv1.weight)
    assert torch.equal(encoder.positional_embedding[0], clip.visual.positional_embedding[0])
    with torch.no_grad():
        tokens = encoder.embed(torch.randn(1, 3, 256, 128))
        outputs = encoder(torch.randn(2, 3, 256, 128))
    assert tokens.shape == (1, 1 + grid[0] * grid[1], 128)
    assert [o.shape for o in outputs] == [(2, 128), (2, 128), (2, 64)]


def test_position_embedding_resize_is_bilinear(clip):
    encoder = ReIDImageEncoder(clip.visual, image_size=(256, 128), stride=(16, 16))
    pretrained = clip.visual.positional_embedding.detach()[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = nn.functional.interpolate(pretrained, size=(16, 8), mode='bilinear', align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(128, -1)
    torch.testing.assert_close(encoder.positional_embedding.detach()[1:], expected)


@pytest.mark.parametrize('kwargs, message', [
    (dict(stride=(20, 16)), 'MODEL.STRIDE_SIZE'),
    (dict(image_size=(8, 128)), 'INPUT.SIZE_TRAIN'),
    (dict(sie_camera=True, camera_num=0), 'MODEL.SIE_CAMERA'),
])
def test_image_encoder_rejects_bad_geometry(clip, kwargs, message):
    with pytest.raises(UserError, match=message):
        ReIDImageEncoder(clip.visual, **kwargs)


@pytest.mark.parametrize('camera, view, rows', [(True, True, 6), (True, False, 3), (False, True, 2)])
def test_sie_changes_only_the_class_token(clip, camera, view, rows):
    torch.manual_seed(1)
    plain = ReIDImageEncoder(clip.visual, image_size=(64, 32))
    with_sie = ReIDImageEncoder(clip.visual, image_size=(64, 32), camera_num=3, view_num=2, sie_coe=3.0,
                                sie_camera=camera, sie_view=view)
    assert with_sie.sie_embed.shape == (rows, 128)
    images = torch.randn(2, 3, 64, 32)
    cams, views = torch.tensor([2, 0]), torch.tensor([1, 0])
    with torch.no_grad():
        base = plain.embed(images)
        side = with_sie.embed(images, cams, views)
    index = {6: cams * 2 + views, 3: cams, 2: views}[rows]
    assert torch.equal(side[:, 1:], base[:, 1:])
    torch.testing.assert_close(side[:, 0] - base[:, 0], 3.0 * with_sie.sie_embed[index].detach())
    assert not torch.allclose(side[:, 0], base[:, 0])
    with pytest.raises(ValueError, match='cam_label|view_label'):
        with_sie(images)


# ---------------------------------------------------------------- ResNet image tower (RN50 family)

@pytest.fixture(scope='module')
def resnet_clip():
    torch.manual_seed(0)
    return load_clip(TINY_RESNET_NAME)


@pytest.mark.parametrize('size, grid', [((256, 128), (16, 8)), ((256, 256), (16, 16)), ((250, 100), (15, 6))])
def test_resnet_grid_follows_the_last_stage_map(resnet_clip, size, grid):
    encoder = ReIDResNetEncoder(resnet_clip.visual, image_size=size)
    assert resnet_feature_grid(size) == encoder.grid_size == grid
    with torch.no_grad():
        stage4 = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(encoder.stem(torch.randn(1, 3, *size))))))
        outputs = encoder(torch.randn(2, 3, *size))
    assert tuple(stage4.shape[2:]) == grid  # the last stage keeps its input resolution (stride 1)
    assert encoder.attnpool.positional_embedding.shape == (1 + grid[0] * grid[1], 256)
    assert [o.shape for o in outputs] == [(2, 128), (2, 256), (2, 64)]
    assert (encoder.width, encoder.embed_dim) == (256, 64)


def test_resnet_attention_pool_is_clips_at_the_native_grid(resnet_clip):
    """On CLIP's own 7x7 map the re-ID pool (mean-token query only) is open_clip's attention pool."""
    pool = ReIDAttentionPool(resnet_clip.visual.attnpool, (7, 7))
    assert torch.equal(pool.positional_embedding, resnet_clip.visual.attnpool.positional_embedding)
    x = torch.randn(3, 256, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(pool(x), resnet_clip.visual.attnpool(x), atol=ATOL, rtol=0)


def test_resnet_position_table_is_resized_bilinearly(resnet_clip):
    encoder = ReIDResNetEncoder(resnet_clip.visual, image_size=(256, 128))
    table = resnet_clip.visual.attnpool.positional_embedding.detach()
    grid = table[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    expected = nn.functional.interpolate(grid, size=(16, 8), mode='bilinear', align_corners=False)
    torch.testing.assert_close(encoder.attnpool.positional_embedding.detach(),
                               torch.cat([table[:1], expected.permute(0, 2, 3, 1).reshape(128, -1)]))


def test_resnet_encoder_refuses_side_information(resnet_clip):
    with pytest.raises(UserError, match='MODEL.SIE_CAMERA True .*ResNet'):
        ReIDResNetEncoder(resnet_clip.visual, camera_num=3, sie_camera=True)
    with pytest.raises(UserError, match='INPUT.SIZE_TRAIN'):
        ReIDResNetEncoder(resnet_clip.visual, image_size=(8, 64))


def test_resnet_re_id_model_state_has_clip_reids_keys():
    model = build(NAME=TINY_RESNET_NAME)
    keys = set(model.image_state_dict())
    assert {'image_encoder.conv1.weight', 'image_encoder.layer4.0.downsample.0.weight',
            'image_encoder.attnpool.positional_embedding', 'image_encoder.attnpool.c_proj.weight'} <= keys
    assert not any('act' in k or k.startswith('image_encoder.sie') for k in keys)


# ---------------------------------------------------------------- loading OpenAI checkpoints

class _Node(nn.Module):
    def forward(self, x):
        return x


def save_torchscript_archive(state_dict, path):
    """An archive like OpenAI's: a TorchScript module whose state_dict has CLIP's OpenAI keys."""
    root = _Node()
    for key, value in state_dict.items():
        *parents, leaf = key.split('.')
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, _Node())
            node = getattr(node, name)
        node.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        torch.jit.save(torch.jit.trace(root, torch.zeros(1)), str(path))


def openai_state_dict(seed=3, dtype=torch.float16, name=TINY_NAME):
    torch.manual_seed(seed)
    # OpenAI archives hold fp16 weights and a few non-weight entries.
    sd = {k: v.to(dtype) if v.is_floating_point() else v
          for k, v in build_clip(name).state_dict().items()}
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return sd


def assert_loaded(model, sd):
    loaded = model.state_dict()
    keys = [k for k in sd if k not in ('input_resolution', 'context_length', 'vocab_size')]
    assert set(keys) <= set(loaded)
    for key in keys:
        if sd[key].is_floating_point():
            assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], sd[key].to(loaded[key].dtype)), key
    assert not model.training


def test_load_openai_torchscript_archive(tmp_path):
    sd = openai_state_dict()
    path = tmp_path / 'ViT-Tiny-16.pt'
    save_torchscript_archive(sd, path)
    model = load_clip(TINY_NAME, str(path))
    assert_loaded(model, sd)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


@pytest.mark.parametrize('archive', [True, False], ids=['torchscript', 'state dict'])
def test_load_openai_resnet_checkpoint(tmp_path, archive):
    """RN50.pt's layout (OpenAI's ResNet keys), as a TorchScript archive or a plain state dict."""
    sd = openai_state_dict(name=TINY_RESNET_NAME)
    path = tmp_path / 'RN-Tiny.pt'
    if archive:
        save_torchscript_archive(sd, path)
    else:
        torch.save(sd, path)
    model = load_clip(TINY_RESNET_NAME, str(path))
    assert type(model.visual).__name__ == 'ModifiedResNet'
    assert_loaded(model, sd)


def test_a_resnet_checkpoint_for_a_vit_name_names_model_name(tmp_path):
    path = tmp_path / 'RN50.pt'
    torch.save(openai_state_dict(name=TINY_RESNET_NAME), path)
    with pytest.raises(UserError, match=r"holds a RN-Tiny \(vision: width 8, layers \[1, 1, 1, 1\], image 224.*"
                                        r"checkpoint, but MODEL.NAME is 'ViT-Tiny-16'"):
        load_clip(TINY_NAME, str(path))


def test_load_wrapped_plain_fp32_state_dict(tmp_path):
    sd = openai_state_dict(dtype=torch.float32)  # must not lose precision through the fp16 builder
    path = tmp_path / 'tiny_sd.pth'
    torch.save({'state_dict': {'module.' + k: v for k, v in sd.items()}}, path)
    assert_loaded(load_clip(TINY_NAME, str(path)), sd)


def test_wrong_architecture_checkpoint(tmp_path):
    sd = {k: v for k, v in openai_state_dict().items() if not k.startswith('visual.transformer.resblocks.1.')}
    path = tmp_path / 'shallow.pt'
    torch.save(sd, path)
    with pytest.raises(UserError) as err:
        load_clip(TINY_NAME, str(path))
    message = str(err.value)
    assert f"MODEL.PRETRAIN_PATH '{path}' holds a non-standard (vision: width 128, layers 1" in message
    assert message.endswith("checkpoint, but MODEL.NAME is 'ViT-Tiny-16'")


def test_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(UserError, match="MODEL.PRETRAIN_PATH '.*nope.pt' does not exist"):
        load_clip(TINY_NAME, str(tmp_path / 'nope.pt'))
    foreign = tmp_path / 'reid.pth'
    torch.save({'image_encoder.conv1.weight': torch.zeros(1)}, foreign)
    with pytest.raises(UserError, match='is not an OpenAI CLIP checkpoint'):
        load_clip(TINY_NAME, str(foreign))


def test_unknown_model_name():
    with pytest.raises(UserError, match="MODEL.NAME 'ViT-X-99' .*valid: .*ViT-B-16"):
        load_clip('ViT-X-99')


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    return tmp_path


def test_missing_openai_weights_message_is_fast_and_offline(offline_empty_cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('network touched')

    monkeypatch.setattr('socket.create_connection', no_network)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        load_clip('ViT-B-16')
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert message.startswith("no weights for MODEL.NAME 'ViT-B-16': MODEL.PRETRAIN_PATH is empty")
    assert str(offline_empty_cache / 'hf') in message
    assert 'pass MODEL.PRETRAIN_PATH /path/to/ViT-B-16.pt' in message


def test_openai_tag_uses_open_clip_cache(offline_empty_cache, monkeypatch):
    snapshot = offline_empty_cache / 'hf' / 'models--timm--vit_base_patch16_clip_224.openai'
    (snapshot / 'refs').mkdir(parents=True)
    (snapshot / 'refs' / 'main').write_text('abc123')
    weights = snapshot / 'snapshots' / 'abc123' / 'open_clip_model.safetensors'
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b'')
    calls, stand_in = [], build_clip(TINY_NAME)

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs.get('force_quick_gelu')))
        return stand_in

    monkeypatch.setattr(open_clip, 'create_model', fake_create_model)
    load_clip('ViT-B-16')
    assert calls == [('ViT-B-16', str(weights), True)]


def test_openai_url_cache_archive_is_checked(offline_empty_cache):
    archive = offline_empty_cache / 'home' / '.cache' / 'clip' / 'ViT-B-16.pt'
    archive.parent.mkdir(parents=True)
    save_torchscript_archive(openai_state_dict(), archive)
    with pytest.raises(UserError, match=r"holds a ViT-Tiny-16 \(.*\) checkpoint, but MODEL.NAME is 'ViT-B-16'"):
        load_clip('ViT-B-16')


# ---------------------------------------------------------------- prompts

@pytest.mark.parametrize('template, n_prefix', [(SKY, 5), (PLAIN, 4)])
def test_prompt_learner_layout(clip, template, n_prefix):
    learner = PromptLearner(7, template, clip)
    assert (learner.n_prefix, learner.n_ctx) == (n_prefix, 4)
    assert learner.cls_ctx.shape == (7, 4, 128)
    tokens = open_clip.tokenize([template])
    with torch.no_grad():
        reference = clip.token_embedding(tokens)
    labels = torch.tensor([6, 0, 6])
    prompts = learner(labels)
    assert prompts.shape == (3, 77, 128)
    start = 1 + n_prefix
    assert torch.equal(prompts[:, :start], reference.expand(3, -1, -1)[:, :start])
    assert torch.equal(prompts[:, start:start + 4], learner.cls_ctx[labels])
    assert torch.equal(prompts[:, start + 4:], reference.expand(3, -1, -1)[:, start + 4:])
    assert torch.equal(learner.tokenized, tokens)


@pytest.mark.parametrize('template, message', [
    ('A photo of a person.', "has no 'X' placeholder"),
    ('A photo of X X a X person.', 'must be consecutive'),
])
def test_prompt_learner_rejects_bad_template(clip, template, message):
    with pytest.raises(UserError, match=f'MODEL.PROMPT_TEMPLATE_SKY .*{message}'):
        PromptLearner(3, template, clip, config_key='MODEL.PROMPT_TEMPLATE_SKY')


# ---------------------------------------------------------------- the re-ID model

def test_reid_model_train_and_eval_outputs():
    model = build(text_views=('sky', 'ground'))
    images = torch.randn(4, 3, 64, 32)
    out = model.train()(images)
    assert [s.shape for s in out['cls_scores']] == [(4, 5), (4, 5)]
    assert [f.shape for f in out['feats']] == [(4, 128), (4, 128), (4, 64)]
    assert torch.equal(out['proj'], out['feats'][2])
    with torch.no_grad():
        before = model.eval()(images)
        _, feat, proj = model.image_encoder(images)
        model.neck_feat = 'after'
        after = model(images)
    assert before.shape == after.shape == (4, 192)
    torch.testing.assert_close(before, torch.cat([feat, proj], 1))
    torch.testing.assert_close(after, torch.cat([model.bottleneck(feat), model.bottleneck_proj(proj)], 1))
    torch.testing.assert_close(model.encode_image_proj(images), proj)
    assert not model.bottleneck.bias.requires_grad and not model.bottleneck_proj.bias.requires_grad


def test_encode_image_proj_leaves_out_sie_without_labels():
    model = build(SIE_CAMERA=True).eval()
    images, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 2])
    with torch.no_grad():
        plain = model.encode_image_proj(images)
        with_sie = model.encode_image_proj(images, cams)
        model.image_encoder.sie_embed.zero_()
        torch.testing.assert_close(plain, model.encode_image_proj(images, cams))
    assert not torch.allclose(plain, with_sie)
    with pytest.raises(ValueError, match='cam_label'):
        model(images)


def test_reid_model_text_features_train_the_prompts():
    model = build(text_views=('sky', 'ground', 'all'))
    assert sorted(model.prompt_learners) == ['all', 'ground', 'sky']
    assert model.prompt_learners['sky'].template == SKY and model.prompt_learners['all'].template == PLAIN
    features = model.text_features('sky', torch.tensor([1, 3]))
    assert features.shape == (2, 64)
    features.sum().backward()
    grad = model.prompt_learners['sky'].cls_ctx.grad
    assert grad[[1, 3]].abs().sum() > 0 and grad[[0, 2, 4]].abs().sum() == 0
    assert model.prompt_learners['ground'].cls_ctx.grad is None


def test_model_keeps_no_unused_clip_parts():
    keys = build(text_views=('all',)).state_dict().keys()
    assert not any(k.startswith('image_encoder.') and 'visual' in k for k in keys)
    assert not any('token_embedding' in k or 'logit_scale' in k or 'attn_mask' in k for k in keys)
    assert build().text_encoder is None


def test_unknown_text_view():
    with pytest.raises(UserError, match="unknown text view 'air'"):
        build(text_views=('air',))


def test_image_state_dict_round_trip():
    trained = build(seed=0, text_views=('sky',), SIE_CAMERA=True, SIE_VIEW=True)
    sd = trained.image_state_dict()
    assert sd and all(k.split('.')[0] in {'image_encoder', 'bottleneck', 'bottleneck_proj', 'classifier',
                                          'classifier_proj'} for k in sd)
    assert 'image_encoder.sie_embed' in sd
    fresh = build(seed=1, load_pretrained=False, SIE_CAMERA=True, SIE_VIEW=True)
    images, cams, views = torch.randn(2, 3, 64, 32), torch.tensor([0, 2]), torch.tensor([1, 0])
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(images, cams, views), trained.eval()(images, cams, views))
        fresh.load_image_state_dict(sd)
        torch.testing.assert_close(fresh(images, cams, views), trained(images, cams, views), atol=0, rtol=0)


def test_classifier_of_other_identity_count(caplog):
    sd = build(num_classes=5).image_state_dict()
    other = build(seed=1, num_classes=9, load_pretrained=False)
    with pytest.raises(UserError, match='5 identities, the dataset 9'):
        other.load_image_state_dict(sd, for_test=False)
    before = other.classifier.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        other.load_image_state_dict(sd, for_test=True)
    assert 'classifiers not loaded' in caplog.text
    assert torch.equal(other.classifier.weight, before)
    assert torch.equal(other.image_encoder.conv1.weight, sd['image_encoder.conv1.weight'])


def test_sie_mismatch_messages():
    plain_sd = build().image_state_dict()
    sie_model = build(seed=1, load_pretrained=False, SIE_CAMERA=True)
    with pytest.raises(UserError, match='checkpoint has no SIE table but MODEL.SIE_CAMERA is True.*'
                                        'pass MODEL.SIE_CAMERA False MODEL.SIE_VIEW False'):
        sie_model.load_image_state_dict(plain_sd)
    both_sd = build(SIE_CAMERA=True, SIE_VIEW=True).image_state_dict()
    with pytest.raises(UserError, match='checkpoint has an SIE table but MODEL.SIE_CAMERA and MODEL.SIE_VIEW are '
                                        'False: pass MODEL.SIE_CAMERA True MODEL.SIE_VIEW True'):
        build(seed=1, load_pretrained=False).load_image_state_dict(both_sd)
    with pytest.raises(UserError, match='SIE table has 6 rows, the model expects 3'):
        sie_model.load_image_state_dict(both_sd)


def test_stride_mismatch_message():
    sd = build(STRIDE_SIZE=[12, 12]).image_state_dict()
    with pytest.raises(UserError, match='INPUT.SIZE_TRAIN and MODEL.STRIDE_SIZE'):
        build(seed=1, load_pretrained=False).load_image_state_dict(sd)


def test_bad_neck_feat():
    cfg = make_cfg()
    cfg.TEST.NECK_FEAT = 'middle'
    with pytest.raises(UserError, match='TEST.NECK_FEAT'):
        make_model(model_settings(cfg), 3, 1, 1)


def test_no_hardcoded_cuda_in_model_package():
    model_dir = Path(__file__).resolve().parents[1] / 'model'
    offenders = [p.name for p in model_dir.rglob('*.py') if '.cuda(' in p.read_text()]
    assert offenders == []


class _PoolingEncoder(ImageEncoder):
    """A minimal backbone written against the encoder contract alone."""

    def __init__(self, width=8, embed_dim=4):
        super().__init__()
        self.width, self.embed_dim = width, embed_dim
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, x, cam_label=None, view_label=None, use_sie=True):
        pooled = self.conv(x).mean(dim=(2, 3))
        return pooled, pooled * 2, self.proj(pooled)


def test_reid_model_takes_any_encoder_of_the_contract(clip):
    model = ReIDModel(clip, num_classes=3, image_encoder=_PoolingEncoder())
    out = model.train()(torch.randn(4, 3, 16, 8))
    assert [s.shape for s in out['cls_scores']] == [(4, 3), (4, 3)] and out['proj'].shape == (4, 4)
    assert model.eval()(torch.randn(2, 3, 16, 8)).shape == (2, 8 + 4)


def test_an_unknown_tower_family_is_refused(clip):
    class HieraTower(nn.Module):
        pass

    with pytest.raises(UserError, match='HieraTower are not supported'):
        build_image_encoder(HieraTower())
