"""Against CLIP-ReID's own numbers (tests/data/clipreid_reference, made with its code; its README says
how): its released checkpoint kinds (RN50 and ViT-B/16, with and without SIE, person and vehicle) give
its test features here, through every way in, and one RN50 stage-2 step of its trainer is this
project's step."""
from collections import OrderedDict
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import test_clipreid
from datasets.transforms import build_transforms
from model import clip_loader
from model.make_model_clipreid import ReIDModel
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
                         config='configs/person/cnn_clipreid.yml'),
    'vit_person_sie': dict(arch=VIT_ARCH, size=(256, 128), stride=(12, 12), norm=HALF, root=MARKET,
                           classes=3, cameras=6, views=1, sie=(True, False), coe=1.0,
                           config='configs/person/vit_clipreid.yml'),
    'vit_vehicle_sie': dict(arch=VIT_ARCH, size=(256, 256), stride=(16, 16), norm=HALF, root=VERI,
                            classes=4, cameras=20, views=8, sie=(True, True), coe=1.0,
                            config='configs/person/vit_clipreid.yml'),
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
@pytest.mark.parametrize('neck_feat, key', [('before', 'features'), ('after', 'features_after_bn')])
def test_clipreid_checkpoint_gives_clipreid_features(reference, name, neck_feat, key):
    model = case_model(name, neck_feat)
    model.load_image_state_dict(checkpoint(name), for_test=True)
    got = features(model, case_batch(name, reference), name, reference)
    assert relative_difference(got, reference[f'{name}/{key}']) < 1e-4


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
    from model import resnet_encoder
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
