"""Where a re-ID model looks in an image: one non-negative map per image, in the model's input pixels.

- ViT image encoders (model/image_encoder.ReIDImageEncoder): attention rollout of the class token
  (Abnar & Zuidema, 2020). Each block's attention, averaged over heads, is mixed half and half with the
  identity (the residual path) and the blocks' matrices are multiplied; the class token's row says how much
  of its final state comes from each patch. With overlapping patches (stride < patch size) a pixel gets the
  share of every patch that covers it, so the map's total is the class token's total share of the patches.
- Any other image encoder (a CNN such as RN50): Grad-CAM (pytorch-grad-cam, Gildenblat et al.) on the last
  layer that outputs a spatial feature map, with the re-ID feature's length along its own direction as the
  target, i.e. what makes the image's embedding what it is. No class is needed, so test identities work.

Side information (SIE) goes in as in feature extraction: labels (`cam_label`, `view_label`) or a mix of
table rows (`sie_weights`, model/feature_api.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks import attention_weights, run_block
from model.image_encoder import ReIDImageEncoder
from utils.errors import UserError

ROLLOUT = 'attention rollout'
GRAD_CAM = 'Grad-CAM'


def method_for(model: nn.Module) -> str:
    """The map a model gets: attention rollout for ViT image encoders, Grad-CAM for the others."""
    return ROLLOUT if isinstance(model.image_encoder, ReIDImageEncoder) else GRAD_CAM


def attention_maps(model: nn.Module, images: torch.Tensor, cam_label=None, view_label=None,
                   sie_weights=None) -> torch.Tensor:
    """[B, H, W] float32 maps (>= 0, each scaled to a maximum of 1) for preprocessed images [B, 3, H, W]
    on the model's device; the model is a ReIDModel (model/make_model_clipreid.py)."""
    side = {key: value for key, value in (('cam_label', cam_label), ('view_label', view_label),
                                          ('sie_weights', sie_weights)) if value is not None}
    was_training = model.training
    model.eval()
    try:
        if method_for(model) == ROLLOUT:
            maps = rollout_in_pixels(model.image_encoder, images, **side)
        else:
            maps = grad_cam(model, images, **side)
    finally:
        model.train(was_training)
    peak = maps.flatten(1).max(1).values.clamp(min=torch.finfo(maps.dtype).tiny)
    return (maps / peak.view(-1, 1, 1)).float()


# ---------------------------------------------------------------------------------------------
# ViT: attention rollout
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_rollout(encoder: ReIDImageEncoder, images: torch.Tensor, cam_label=None, view_label=None,
                      sie_weights=None) -> torch.Tensor:
    """[B, grid_h, grid_w]: the class token's rollout share of each patch."""
    x = encoder.ln_pre(encoder.embed(images, cam_label, view_label, True, sie_weights))
    tokens = x.shape[1]
    identity = torch.eye(tokens, device=x.device, dtype=torch.float64)
    rollout = identity.expand(x.shape[0], -1, -1)
    for block in encoder.resblocks:
        attention = attention_weights(block.attn, block.ln_1(x)).mean(1).double()
        rollout = (0.5 * attention + 0.5 * identity) @ rollout
        x = run_block(block, x)
    return rollout[:, 0, 1:].reshape(-1, *encoder.grid_size)


def patches_to_pixels(patch_map: torch.Tensor, patch_size, stride, image_size) -> torch.Tensor:
    """[B, H, W]: each patch's value spread evenly over the pixels it covers (overlaps add up); pixels no
    patch covers (a size the stride does not step evenly) get 0."""
    kernel = torch.ones(1, 1, *patch_size, dtype=patch_map.dtype, device=patch_map.device)
    kernel /= kernel.numel()
    pixels = F.conv_transpose2d(patch_map.unsqueeze(1), kernel, stride=tuple(stride)).squeeze(1)
    return F.pad(pixels, (0, image_size[1] - pixels.shape[2], 0, image_size[0] - pixels.shape[1]))


def rollout_in_pixels(encoder: ReIDImageEncoder, images: torch.Tensor, **side) -> torch.Tensor:
    return patches_to_pixels(attention_rollout(encoder, images, **side), encoder.patch_size, encoder.stride,
                             images.shape[2:])


# ---------------------------------------------------------------------------------------------
# Other encoders: Grad-CAM
# ---------------------------------------------------------------------------------------------
class _WithSideInputs(nn.Module):
    """The re-ID model as a function of the images alone (Grad-CAM calls model(images))."""

    def __init__(self, model: nn.Module, side: dict):
        super().__init__()
        self.model, self.side = model, side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, **self.side)


class _FeatureLength:
    """Grad-CAM target: the embedding's length along its own (fixed) direction."""

    def __call__(self, feature: torch.Tensor) -> torch.Tensor:
        return (feature * F.normalize(feature.detach(), dim=-1)).sum()


def last_spatial_layer(encoder: nn.Module, images: torch.Tensor, side: dict) -> nn.Module:
    """The encoder's module that last outputs a [B, C, h, w] map with h * w > 1 in a forward pass."""
    found = []
    hooks = [module.register_forward_hook(
        lambda module, _, output: found.append(module)
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1 else None)
        for module in encoder.modules() if module is not encoder]
    try:
        with torch.no_grad():
            encoder(images[:1], **{key: value[:1] for key, value in side.items()})
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise UserError(f"image encoder {type(encoder).__name__} has no layer with a spatial feature map for "
                        f"Grad-CAM")
    return found[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, **side) -> torch.Tensor:
    from pytorch_grad_cam import GradCAM  # imported here: only CNN encoders need it (and OpenCV)

    encoder_side = {key: value for key, value in side.items() if key != 'sie_weights'}
    layer = last_spatial_layer(model.image_encoder, images, encoder_side)
    # Gradients flow from the input, not into the weights: the model's own gradients stay as they were.
    inputs = images.detach().clone().requires_grad_(True)
    kept = [(parameter, parameter.requires_grad, parameter.grad) for parameter in model.parameters()]
    try:
        for parameter, _, _ in kept:
            parameter.requires_grad_(False)
        with torch.enable_grad(), GradCAM(_WithSideInputs(model, side), [layer]) as cam:
            maps = cam(inputs, targets=[_FeatureLength()] * len(images))
    finally:
        for parameter, requires_grad, grad in kept:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
    return torch.from_numpy(maps)
