"""CLIP's ResNet image tower (open_clip's ModifiedResNet, e.g. RN50) for re-ID, the way CLIP-ReID uses it.

Changes to the CLIP tower, all as CLIP-ReID makes them:
- the last stage keeps its input resolution (last stride 1): a 256x128 image gives a 16x8 map;
- the attention pool's position embedding is resized bilinearly to that map (its mean token first);
- three features: the average-pooled maps of the last two stages and the attention-pooled projection.
There is no side-information (SIE) table: CLIP-ReID adds SIE to a ViT's class token only.
"""
import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.image_encoder import ImageEncoder, resize_position_embedding
from model.published_format import RESNET_FAMILY
from utils.errors import UserError

logger = logging.getLogger(__name__)

# The map of the last stage is 1/16 of the image: the stem's stride-2 convolution and 2x2 pool, and the
# 2x2 pools of stages 2 and 3 (stage 4's is removed).
FEATURE_STRIDE = 16


def resnet_feature_grid(image_size: Sequence[int]) -> Tuple[int, int]:
    """Rows/cols of the last stage's map for an input of `image_size` (stem convolution with padding 1,
    then three floor-halving average pools)."""
    return tuple(((size + 1) // 2) // 8 for size in image_size)


def no_sie_message(sie_camera: bool, sie_view: bool) -> str:
    return (f"MODEL.SIE_CAMERA {sie_camera} / MODEL.SIE_VIEW {sie_view}: side information (SIE) is added to a "
            f"ViT's class token; a ResNet backbone such as RN50 has none (as in CLIP-ReID): pass "
            f"MODEL.SIE_CAMERA False MODEL.SIE_VIEW False")


class ReIDAttentionPool(nn.Module):
    """CLIP's attention pool on a re-ID map: the mean token, with positions, attends to every position.

    Only the mean token's output is the image feature, so only its query is computed. Holds the CLIP
    pool's projections (shared, not copied) and its own position table resized to `grid`."""

    def __init__(self, attnpool: nn.Module, grid: Tuple[int, int]):
        super().__init__()
        old_pos = attnpool.positional_embedding.detach()
        side = round((old_pos.shape[0] - 1) ** 0.5)
        self.positional_embedding = nn.Parameter(resize_position_embedding(old_pos, (side, side), grid))
        self.q_proj, self.k_proj, self.v_proj = attnpool.q_proj, attnpool.k_proj, attnpool.v_proj
        self.c_proj = attnpool.c_proj
        self.num_heads = attnpool.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, output_dim]."""
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        batch, length, width = tokens.shape
        heads = self.num_heads

        def split(t):
            return t.view(batch, t.shape[1], heads, width // heads).transpose(1, 2)

        query = split(self.q_proj(tokens[:, :1]))
        out = F.scaled_dot_product_attention(query, split(self.k_proj(tokens)), split(self.v_proj(tokens)))
        return self.c_proj(out.transpose(1, 2).reshape(batch, width))


class ReIDResNetEncoder(ImageEncoder):
    """Wraps an open_clip ModifiedResNet. Its layers are shared with the CLIP model (not copied), and
    the first block of the last stage loses its 2x2 pools in place (they hold no weights)."""

    family = RESNET_FAMILY

    def __init__(self, visual: nn.Module, image_size=(256, 128), stride=(16, 16), camera_num: int = 0,
                 view_num: int = 0, sie_coe: float = 3.0, sie_camera: bool = False, sie_view: bool = False):
        super().__init__()
        if sie_camera or sie_view:
            raise UserError(no_sie_message(sie_camera, sie_view))
        image_size = tuple(int(v) for v in image_size)
        if len(image_size) != 2:
            raise UserError(f'INPUT.SIZE_TRAIN {list(image_size)} must be [height, width]')
        self.image_size = image_size
        self.grid_size = resnet_feature_grid(image_size)
        if min(self.grid_size) < 1:
            raise UserError(f'INPUT.SIZE_TRAIN {list(image_size)} is too small for a ResNet backbone: it needs at '
                            f'least {FEATURE_STRIDE} pixels in each direction')

        # The three-convolution stem and the four stages, under CLIP's (and CLIP-ReID's) names.
        for name in ('conv1', 'bn1', 'act1', 'conv2', 'bn2', 'act2', 'conv3', 'bn3', 'act3', 'avgpool',
                     'layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, getattr(visual, name))
        first = self.layer4[0]
        first.avgpool = nn.Identity()
        if first.downsample is not None:
            setattr(first.downsample, '-1', nn.Identity())
        self.attnpool = ReIDAttentionPool(visual.attnpool, self.grid_size)
        self.width = visual.attnpool.k_proj.in_features
        self.embed_dim = visual.attnpool.c_proj.out_features
        self.camera_num = int(camera_num)
        self.view_num = int(view_num)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None,
                use_sie: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(stage-3 map averaged [B, width / 2], stage-4 map averaged [B, width], attention-pooled
        projection [B, embed_dim]). The labels are accepted for the contract and not used."""
        x = self.layer2(self.layer1(self.stem(x)))
        stage3 = self.layer3(x)
        stage4 = self.layer4(stage3)
        return stage3.mean(dim=(2, 3)), stage4.mean(dim=(2, 3)), self.attnpool(stage4)
