"""Attention maps: rollout (ViT), Grad-CAM (any other image encoder), the pictures and tools/attention_maps.py.

The model that should look at the person is the demo recipe's tiny ViT, trained on the synthetic MSSL and
kept in tests/data/demo_vit_tiny16.pth (float16 weights, 1 MB; made by

    python -m datasets.synthetic_mssl data/mssl_synthetic
    python train_clipreid.py --config_file configs/demo/mssl_synthetic.yml SOLVER.STAGE1.MAX_EPOCHS 10 \\
        SOLVER.STAGE2.MAX_EPOCHS 30 SOLVER.STAGE2.STEPS "[20, 26]" SOLVER.STAGE2.EVAL_PERIOD 30 \\
        SOLVER.STAGE2.CHECKPOINT_PERIOD 30 OUTPUT_DIR logs/demo

and its floating-point tensors stored as float16): training a model that far takes minutes, too long here.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from datasets.synthetic_mssl import people_with_masks
from model.attention_maps import (GRAD_CAM, ROLLOUT, attention_maps, attention_rollout, method_for,
                                  patches_to_pixels)
from model.blocks import run_block
from model.feature_api import FeatureExtractor, build_model, load_reid_model
from model.image_encoder import ImageEncoder
from model.make_model_clipreid import ReIDModel
from reporting.attention import overlay, write_grid
from tests.helpers import fails
from tests.test_feature_api import write_tiny_checkpoint
from tools import attention_maps as tool

DEMO_CHECKPOINT = str(Path(__file__).parent / 'data' / 'demo_vit_tiny16.pth')


def box_concentration(heat: torch.Tensor, mask: np.ndarray) -> float:
    """Share of the map's mass inside the person's bounding box over the box's share of the image (1: no
    preference for the person)."""
    heat = F.interpolate(heat[None, None], size=mask.shape, mode='bilinear', align_corners=False)[0, 0].numpy()
    rows, columns = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[rows.min():rows.max() + 1, columns.min():columns.max() + 1] = True
    return float((heat * box).sum() / heat.sum() / box.mean())


def maps_of(model, images):
    extractor = FeatureExtractor(model)
    batch = torch.stack([extractor.transform(image) for image in images])
    return attention_maps(model, batch, **extractor.side_inputs(len(images)))


@pytest.fixture(scope='module')
def people():
    return people_with_masks(16, seed=5)


def test_rollout_of_the_demo_model_concentrates_on_the_person_and_differs_between_images(people):
    trained = load_reid_model(DEMO_CHECKPOINT, device='cpu')
    torch.manual_seed(0)
    untrained = build_model(trained.reid_meta).eval()
    assert method_for(trained) == ROLLOUT
    images = [image for image, _, _ in people]
    concentration = {name: np.array([box_concentration(heat, mask) for heat, (_, mask, _) in
                                     zip(maps_of(model, images), people)])
                     for name, model in (('trained', trained), ('untrained', untrained))}
    # measured: trained 1.70 on average (1.23-2.24), untrained 1.15 (the boxes are central, where the
    # overlapping patches cover pixels more often)
    assert concentration['trained'].mean() > 1.5
    assert (concentration['trained'] > 1.1).all()
    assert concentration['trained'].mean() > concentration['untrained'].mean() + 0.3
    maps = maps_of(trained, images).flatten(1)
    maps = maps / maps.sum(1, keepdim=True)
    distance = (maps.unsqueeze(0) - maps.unsqueeze(1)).abs().sum(2)  # L1 between distributions, 0-2
    assert distance[~torch.eye(len(images), dtype=torch.bool)].min() > 0.2


def test_rollout_equals_a_reference_from_torchs_own_attention_weights(tiny_mssl, tmp_path):
    _, _, model, _ = write_tiny_checkpoint(tiny_mssl, str(tmp_path))
    encoder = model.image_encoder
    images = torch.randn(3, 3, 64, 32)
    cams, views = torch.tensor([0, 4, 9]), torch.tensor([0, 1, 1])
    got = attention_rollout(encoder, images, cam_label=cams, view_label=views)
    with torch.no_grad():
        x = encoder.ln_pre(encoder.embed(images, cams, views))
        rollout = torch.eye(x.shape[1]).expand(3, -1, -1)
        for block in encoder.resblocks:
            y = block.ln_1(x)
            _, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
            mixed = 0.5 * weights + 0.5 * torch.eye(x.shape[1])
            rollout = mixed / mixed.sum(-1, keepdim=True) @ rollout
            x = run_block(block, x)
    expected = rollout[:, 0, 1:].reshape(3, *encoder.grid_size)
    torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-6)
    other_cameras = attention_rollout(encoder, images, cam_label=torch.tensor([1, 2, 3]), view_label=views)
    assert not torch.allclose(got, other_cameras)  # the side information counts


def test_patches_spread_over_the_pixels_they_cover():
    patch_map = torch.rand(2, 5, 2, dtype=torch.float64)
    pixels = patches_to_pixels(patch_map, (16, 16), (12, 12), (68, 32))
    assert pixels.shape == (2, 68, 32)
    torch.testing.assert_close(pixels.sum((1, 2)), patch_map.sum((1, 2)))
    assert (pixels[:, 64:] == 0).all()  # 16 + 4 * 12 = 64 rows are covered; 16 + 12 = 28 columns
    assert (pixels[:, :, 28:] == 0).all()
    torch.testing.assert_close(pixels[:, :12, :12], (patch_map[:, :1, :1] / 256).expand(-1, 12, 12))  # one patch


class RedDetector(ImageEncoder):
    """A small CNN image encoder whose features answer to red: the ImageEncoder contract without a ViT."""

    def __init__(self):
        super().__init__()
        self.width, self.embed_dim = 4, 4
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.down = nn.Conv2d(4, 4, 2, stride=2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1], self.conv.weight[0, 1, 1, 1] = 1.0, -1.0  # red minus green
            self.conv.weight[1:, 2, 1, 1] = 0.01
            self.down.weight.fill_(0.25)
        self.proj = nn.Linear(4, 4)

    def forward(self, x, cam_label=None, view_label=None, use_sie=True):
        pooled = F.relu(self.down(F.relu(self.conv(x)))).mean((2, 3))
        return pooled, pooled, self.proj(pooled)


def test_grad_cam_of_a_cnn_encoder_finds_the_red_patch():
    model = ReIDModel(None, num_classes=3, image_encoder=RedDetector()).eval()
    assert method_for(model) == GRAD_CAM
    model.image_encoder.proj.weight.grad = users_gradient = torch.ones(4, 4)  # a gradient of the user's
    trainable = [p.requires_grad for p in model.parameters()]
    images = torch.full((2, 3, 32, 16), 0.5)
    images[0, :, 4:12, 2:8] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    images[1, :, 20:28, 8:14] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    maps = attention_maps(model, images)
    assert maps.shape == (2, 32, 16) and maps.max() == pytest.approx(1.0)
    for heat, (rows, columns) in zip(maps, ((slice(4, 12), slice(2, 8)), (slice(20, 28), slice(8, 14)))):
        inside = torch.zeros(32, 16, dtype=torch.bool)
        inside[rows, columns] = True
        assert heat[inside].sum() / heat.sum() > 0.8  # the patch is 9 % of the image
    assert model.training is False  # as it was
    assert model.image_encoder.proj.weight.grad is users_gradient
    assert [p.requires_grad for p in model.parameters()] == trainable
    assert all(p.grad is None for name, p in model.named_parameters() if name != 'image_encoder.proj.weight')


def test_overlay_and_grid_pictures(tmp_path):
    image = Image.new('RGB', (20, 40), (0, 255, 0))
    heat = np.zeros((8, 4))
    heat[:4] = 1.0
    blended = np.asarray(overlay(image, heat))
    assert blended.shape == (40, 20, 3)
    high, low = blended[5, 10].astype(int), blended[35, 10].astype(int)
    assert high[0] - low[0] > 50 and low[2] - high[2] > 50  # red where the map is high, blue where low
    assert abs(high[1] - 128) <= 1 and abs(low[1] - 128) <= 1  # half the image's green
    size = write_grid([image] * 3, [heat] * 3, ['a', 'b', 'a_very_long_file_name_that_is_cut.jpg'], 'title',
                      str(tmp_path / 'grid.png'), per_row=2)
    with Image.open(tmp_path / 'grid.png') as picture:
        assert picture.size == size and size[1] > size[0]  # two rows of pairs


# ---------------------------------------------------------------------------------------------
# tools/attention_maps.py
# ---------------------------------------------------------------------------------------------
def test_tool_writes_one_picture_per_image_and_a_grid(tiny_mssl, tmp_path):
    query = sorted(Path(tiny_mssl, 'query').iterdir())[:3]
    out = tmp_path / 'maps'
    result = tool.main(['--weight', DEMO_CHECKPOINT, '--images', *map(str, query), str(query[0].parent),
                        '--output', str(out), '--device', 'cpu'])
    names = sorted(p.name for p in out.iterdir())
    stems = [p.stem for p in query]
    assert f'{stems[0]}_attention.png' in names and f'{stems[0]}_2_attention.png' in names  # given twice
    assert 'attention_maps.png' in names and len(names) == 3 + len(list(query[0].parent.iterdir())) + 1
    assert result['method'] == ROLLOUT and result['maps'].shape[1:] == (128, 64)
    with Image.open(out / f'{stems[0]}_attention.png') as picture, Image.open(query[0]) as original:
        assert picture.height >= 256 and picture.width * original.height == picture.height * original.width


def test_tool_refuses_bad_input_in_one_line(tiny_mssl, tmp_path, capsys):
    image = str(sorted(Path(tiny_mssl, 'query').iterdir())[0])
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not an image')
    out = tmp_path / 'out'
    line = fails(tool.main, ['--weight', DEMO_CHECKPOINT, '--images', image, str(broken), '--output', str(out)],
                 capsys)
    assert 'broken.jpg' in line
    not_reid = tmp_path / 'not_reid.pth'
    torch.save({'optimizer': {'lr': torch.tensor(0.1)}}, not_reid)
    line = fails(tool.main, ['--weight', str(not_reid), '--images', image, '--output', str(out)], capsys)
    assert 'not a re-ID model checkpoint' in line
    line = fails(tool.main, ['--weight', DEMO_CHECKPOINT, '--images', str(tmp_path / 'missing.jpg'),
                             '--output', str(out)], capsys)
    assert 'missing.jpg' in line
    assert not out.exists()  # nothing half-written


def test_the_resnet_encoder_gets_grad_cam_on_its_last_stage():
    """CLIP-ReID's CNN backbone (RN-Tiny standing for RN50): Grad-CAM on the stride-1 last stage."""
    from model.attention_maps import last_spatial_layer
    from model.clip_loader import build_clip
    torch.manual_seed(0)
    model = ReIDModel(build_clip('RN-Tiny'), 3, image_size=(64, 32), model_name='RN-Tiny').eval()
    images = torch.randn(2, 3, 64, 32)
    assert method_for(model) == GRAD_CAM
    assert last_spatial_layer(model.image_encoder, images, {}) is model.image_encoder.layer4
    maps = attention_maps(model, images)
    assert maps.shape == (2, 64, 32) and float(maps.amax()) == 1.0 and float(maps.amin()) >= 0
    assert not torch.allclose(maps[0], maps[1])
