"""The image-encoder contract, and CLIP's ViT image tower for re-ID: overlapping patches, resized position
grid, side information (SIE). Other towers live in their own files (model/resnet_encoder.py) and are
listed in ENCODER_FAMILIES."""
import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import check_plain_blocks, run_block
from model.published_format import VIT_FAMILY
from utils.errors import UserError

logger = logging.getLogger(__name__)


def patch_grid(image_size: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> Tuple[int, int]:
    """Number of patch rows/cols a `patch` kernel at `stride` yields on `image_size` (no padding)."""
    return tuple((size - k) // s + 1 for size, k, s in zip(image_size, patch, stride))


def resize_position_embedding(pos: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Bilinearly resize [1 + gh*gw, C] position embeddings to a new grid; the class position is kept."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    if tuple(old_grid) == tuple(new_grid):
        return pos.clone()
    width = pos.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=tuple(new_grid), mode='bilinear', align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, width)
    return torch.cat([cls_pos, patch_pos], dim=0)


class ImageEncoder(nn.Module):
    """What ReIDModel needs of an image tower (a new backbone is one subclass in its own file).

    - `width`: size of the penultimate and last features; `embed_dim`: size of the projected feature
      (the space of the stage-1 text features);
    - `camera_num`, `view_num`: the side-information table's sizes (0 without one);
    - `family`: the CLIP tower family it wraps (a key of ENCODER_FAMILIES; '' for others), so that a
      checkpoint of another family is refused by name;
    - `forward(x, cam_label=None, view_label=None, use_sie=True)` -> (penultimate [B, any size],
      last [B, width], projected [B, embed_dim]); the last and projected features are the test feature,
      all three go to the triplet loss, and `use_sie=False` leaves the side information out (stage 1).
    """

    width: int
    embed_dim: int
    camera_num: int = 0
    view_num: int = 0
    family: str = ''

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None,
                use_sie: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class ReIDImageEncoder(ImageEncoder):
    """Wraps an open_clip VisionTransformer; returns class-token features of the last two blocks."""

    family = VIT_FAMILY

    def __init__(self, visual: nn.Module, image_size=(256, 128), stride=(16, 16), camera_num: int = 0,
                 view_num: int = 0, sie_coe: float = 3.0, sie_camera: bool = False, sie_view: bool = False):
        super().__init__()
        if getattr(visual, 'attn_pool', None) is not None or getattr(visual, 'pool_type', 'tok') != 'tok':
            raise UserError('the image tower of this CLIP model does not pool by its class token')
        check_plain_blocks(visual.transformer.resblocks, 'image')
        image_size = tuple(int(v) for v in image_size)
        stride = tuple(int(v) for v in stride)
        patch = tuple(visual.conv1.kernel_size)
        if len(image_size) != 2 or len(stride) != 2:
            raise UserError(f'INPUT.SIZE_TRAIN {list(image_size)} and MODEL.STRIDE_SIZE {list(stride)} '
                            f'must be [height, width]')
        if any(s < 1 or s > k for s, k in zip(stride, patch)):
            raise UserError(f'MODEL.STRIDE_SIZE {list(stride)} must be between 1 and the patch size {list(patch)}')
        if any(size < k for size, k in zip(image_size, patch)):
            raise UserError(f'INPUT.SIZE_TRAIN {list(image_size)} is smaller than the patch size {list(patch)}')

        width = visual.conv1.out_channels
        self.image_size = image_size
        self.stride = stride
        self.patch_size = patch
        self.width = width
        self.grid_size = patch_grid(image_size, patch, stride)
        # Like CLIP-ReID, the grid is floored: an image size that the stride does not step evenly leaves
        # its last rows/columns unseen. The published 256x128 at stride 12 does that (4 columns): a note.
        unseen = [size - k - (g - 1) * s for size, k, s, g in zip(image_size, patch, stride, self.grid_size)]
        if any(unseen):
            logger.info(f'INPUT.SIZE_TRAIN {list(image_size)} with patch {list(patch)} and MODEL.STRIDE_SIZE '
                        f'{list(stride)}: a {self.grid_size[0]}x{self.grid_size[1]} patch grid; the last '
                        f'{unseen[0]} pixel row(s) and {unseen[1]} column(s) are not seen')

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=stride, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(visual.conv1.weight)
        old_pos = visual.positional_embedding.detach()
        old_grid = tuple(getattr(visual, 'grid_size', None) or (round((old_pos.shape[0] - 1) ** 0.5),) * 2)
        self.positional_embedding = nn.Parameter(resize_position_embedding(old_pos, old_grid, self.grid_size))

        # Shared with the CLIP model (not copied), so only the re-ID tower keeps them alive.
        self.class_embedding = visual.class_embedding
        self.ln_pre = visual.ln_pre
        self.resblocks = visual.transformer.resblocks
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.embed_dim = visual.proj.shape[1]

        self.sie_camera = bool(sie_camera)
        self.sie_view = bool(sie_view)
        self.sie_coe = float(sie_coe)
        self.camera_num = int(camera_num)
        self.view_num = int(view_num)
        rows = self._sie_rows()
        if rows is not None:
            self.sie_embed = nn.Parameter(torch.empty(rows, width))
            nn.init.trunc_normal_(self.sie_embed, std=0.02)
        else:
            self.sie_embed = None

    def _sie_rows(self) -> Optional[int]:
        if self.sie_camera and self.camera_num < 1:
            raise UserError('MODEL.SIE_CAMERA is True but the dataset reports no cameras')
        if self.sie_view and self.view_num < 1:
            raise UserError('MODEL.SIE_VIEW is True but the dataset reports no views')
        if self.sie_camera and self.sie_view:
            return self.camera_num * self.view_num
        if self.sie_camera:
            return self.camera_num
        if self.sie_view:
            return self.view_num
        return None

    def sie_index(self, cam_label: Optional[torch.Tensor], view_label: Optional[torch.Tensor]) -> torch.Tensor:
        if self.sie_camera and cam_label is None:
            raise ValueError('MODEL.SIE_CAMERA is on: the image encoder needs cam_label')
        if self.sie_view and view_label is None:
            raise ValueError('MODEL.SIE_VIEW is on: the image encoder needs view_label')
        if self.sie_camera and self.sie_view:
            return cam_label * self.view_num + view_label
        return cam_label if self.sie_camera else view_label

    def embed(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
              view_label: Optional[torch.Tensor] = None, use_sie: bool = True,
              sie_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class + patch tokens with positions and side information, before ln_pre: [B, 1 + gh*gw, width].

        `sie_weights` [B, rows], instead of the labels: each image's side information is that mix of the
        SIE rows (model/feature_api.py averages the rows its unknown labels allow)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.sie_embed is not None and use_sie:
            if sie_weights is not None:
                side = self.sie_coe * (sie_weights.to(self.sie_embed.dtype) @ self.sie_embed)
            else:
                index = self.sie_index(cam_label, view_label)
                # A camera the table never saw (id -1, or beyond the training cameras: another dataset's)
                # gets no side information rather than another camera's row.
                known = (index >= 0) & (index < self.sie_embed.shape[0])
                if self.sie_camera:
                    known &= (cam_label >= 0) & (cam_label < self.camera_num)
                side = self.sie_coe * self.sie_embed[torch.where(known, index, 0)]
                side = torch.where(known.unsqueeze(1), side, torch.zeros_like(side))
            x = torch.cat([x[:, :1] + side.unsqueeze(1).to(x.dtype), x[:, 1:]], dim=1)
        return x

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None, use_sie: bool = True,
                sie_weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class token after the second-to-last block [B, width], after ln_post of the last [B, width],
        projected [B, embed_dim]). `use_sie=False` leaves out the side information."""
        x = self.ln_pre(self.embed(x, cam_label, view_label, use_sie, sie_weights))
        penultimate = x
        for block in self.resblocks:
            penultimate = x
            x = run_block(block, x)
        last = self.ln_post(x[:, 0])
        return penultimate[:, 0], last, last @ self.proj


# Imported after ImageEncoder exists: the ResNet encoder subclasses it.
from model.resnet_encoder import ReIDResNetEncoder  # noqa: E402

# Image encoders by architecture family of the CLIP image tower.
ENCODER_FAMILIES = {'VisionTransformer': ReIDImageEncoder, 'ModifiedResNet': ReIDResNetEncoder}


def build_image_encoder(visual: nn.Module, **options) -> ImageEncoder:
    """The re-ID image encoder for a CLIP image tower, chosen by the tower's class."""
    family = type(visual).__name__
    if family not in ENCODER_FAMILIES:
        raise UserError(f"CLIP image towers of type {family} are not supported; supported: "
                        f"{', '.join(ENCODER_FAMILIES)}")
    return ENCODER_FAMILIES[family](visual, **options)
