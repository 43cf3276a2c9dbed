"""State dicts of the published code (MSP, a CLIP-ReID fork) and of CLIP-ReID's released ViT models.

The published code saves `torch.save(model.state_dict(), path)`: the image tower under
`image_encoder.*` (blocks under `image_encoder.transformer.resblocks.N`), the SIE table as `cv_embed`,
the BN necks and classifiers under the names this project uses, plus the stage-1 text side
(`prompt_learner.*`, `text_encoder.*`). With several GPUs it wraps the model in `nn.DataParallel`, which
prefixes every key with `module.`. CLIP-ReID's released ViT checkpoints have the same layout, with a
camera-only `cv_embed` (SIE-OLP models) or none.

This module converts both ways between that layout and this project's image-side keys, so that
published checkpoints can be tested here and models trained here can be used by CLIP-ReID tools.
"""
from __future__ import annotations

from typing import Dict

import torch

from utils.errors import UserError

DATA_PARALLEL_PREFIX = 'module.'
PUBLISHED_SIE_KEY = 'cv_embed'
PROJECT_SIE_KEY = 'image_encoder.sie_embed'
PUBLISHED_BLOCKS = 'image_encoder.transformer.resblocks.'
PROJECT_BLOCKS = 'image_encoder.resblocks.'
# The published stage-1 text side: not part of a re-ID image model, dropped for testing.
PUBLISHED_TEXT_PREFIXES = ('prompt_learner.', 'text_encoder.')
# Keys only a CNN (ResNet) CLIP-ReID image encoder has.
_CNN_MARKERS = ('image_encoder.layer1.', 'image_encoder.attnpool.', 'image_encoder.bn1.')

StateDict = Dict[str, torch.Tensor]


def strip_data_parallel(state_dict: StateDict) -> StateDict:
    """Drop the `module.` prefix that nn.DataParallel / DDP wrappers add to every key."""
    if state_dict and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state_dict):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def refuse_cnn(state_dict: StateDict) -> None:
    """One clear line for a CNN (ResNet) CLIP-ReID checkpoint: only ViT backbones are supported."""
    if any(key.startswith(_CNN_MARKERS) for key in state_dict):
        raise UserError('the checkpoint is a CNN (ResNet, e.g. RN50) CLIP-ReID model: CNN backbones are not '
                        'supported, only ViT ones')


def is_published_layout(state_dict: StateDict) -> bool:
    """True for a published MSP / CLIP-ReID state dict (after `strip_data_parallel`)."""
    return (PUBLISHED_SIE_KEY in state_dict or any(key.startswith(PUBLISHED_BLOCKS) for key in state_dict)
            or any(key.startswith(PUBLISHED_TEXT_PREFIXES) for key in state_dict))


def from_published(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """(image-side state dict in this project's keys, the published text-side keys that were dropped).

    Raises UserError for a CNN (RN50) CLIP-ReID checkpoint: only ViT backbones are supported.
    """
    state_dict = strip_data_parallel(state_dict)
    refuse_cnn(state_dict)
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if key.startswith(PUBLISHED_TEXT_PREFIXES):
            dropped.append(key)
        elif key == PUBLISHED_SIE_KEY:
            converted[PROJECT_SIE_KEY] = value
        elif key.startswith(PUBLISHED_BLOCKS):
            converted[PROJECT_BLOCKS + key[len(PUBLISHED_BLOCKS):]] = value
        else:
            converted[key] = value
    return converted, dropped


def to_published(image_state_dict: StateDict) -> StateDict:
    """This project's image-side state dict in the published layout (no text side: the published test
    path does not use it, and CLIP-ReID's `load_param` copies only the keys a file has)."""
    converted = {}
    for key, value in strip_data_parallel(image_state_dict).items():
        if key == PROJECT_SIE_KEY:
            converted[PUBLISHED_SIE_KEY] = value
        elif key.startswith(PROJECT_BLOCKS):
            converted[PUBLISHED_BLOCKS + key[len(PROJECT_BLOCKS):]] = value
        else:
            converted[key] = value
    return converted
