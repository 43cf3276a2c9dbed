"""State dicts of the published code (MSP, a CLIP-ReID fork) and of CLIP-ReID's released models.

The published code saves `torch.save(model.state_dict(), path)`: the image tower under
`image_encoder.*`, the SIE table as `cv_embed`, the BN necks and classifiers under the names this
project uses, plus the stage-1 text side (`prompt_learner.*`, `text_encoder.*`; CLIP-ReID's baseline
models, trained by its `train.py`, have none). With several GPUs it wraps the model in
`nn.DataParallel`, which prefixes every key with `module.`.

- ViT towers keep their blocks under `image_encoder.transformer.resblocks.N` (here `image_encoder.resblocks.N`);
  CLIP-ReID's ViT models have a camera-only `cv_embed` (SIE-OLP models), a cameras x views one, or none.
- ResNet towers (RN50) have CLIP's own names (`image_encoder.conv1`, `.layer1.0.*`, `.attnpool.*`), which
  are this project's too. CLIP-ReID builds a `cv_embed` when asked for SIE even for a ResNet, but its
  ResNet forward never reads it: such a table is dropped here.

This module converts both ways between that layout and this project's image-side keys, so that
published checkpoints can be tested here and models trained here can be used by CLIP-ReID tools.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

DATA_PARALLEL_PREFIX = 'module.'
PUBLISHED_SIE_KEY = 'cv_embed'
PROJECT_SIE_KEY = 'image_encoder.sie_embed'
PUBLISHED_BLOCKS = 'image_encoder.transformer.resblocks.'
PROJECT_BLOCKS = 'image_encoder.resblocks.'
# The published stage-1 text side: not part of a re-ID image model, dropped for testing.
PUBLISHED_TEXT_PREFIXES = ('prompt_learner.', 'text_encoder.')
# Image-tower families (the class names of open_clip's towers) and keys only each one has.
RESNET_FAMILY, VIT_FAMILY = 'ModifiedResNet', 'VisionTransformer'
_FAMILY_MARKERS = {RESNET_FAMILY: ('image_encoder.layer1.', 'image_encoder.attnpool.'),
                   VIT_FAMILY: (PUBLISHED_BLOCKS, PROJECT_BLOCKS, 'image_encoder.class_embedding')}
FAMILY_WORDS = {RESNET_FAMILY: 'a ResNet (CNN, e.g. RN50)', VIT_FAMILY: 'a ViT (e.g. ViT-B-16)'}

StateDict = Dict[str, torch.Tensor]


def strip_data_parallel(state_dict: StateDict) -> StateDict:
    """Drop the `module.` prefix that nn.DataParallel / DDP wrappers add to every key."""
    if state_dict and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state_dict):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def checkpoint_family(state_dict: StateDict) -> Optional[str]:
    """The image-tower family of a re-ID state dict (either layout), or None when it shows none."""
    for family, markers in _FAMILY_MARKERS.items():
        if any(key.startswith(markers) for key in state_dict):
            return family
    return None


def family_mismatch(found: Optional[str], model_name: str, expected: Optional[str]) -> Optional[str]:
    """The one-line complaint when a checkpoint's tower family is not MODEL.NAME's (None when they fit)."""
    if found is None or expected is None or found == expected:
        return None
    example = 'RN50, e.g. with configs/person/cnn_clipreid.yml' if found == RESNET_FAMILY else \
        'ViT-B-16, e.g. with configs/person/vit_clipreid.yml'
    return (f"the checkpoint holds {FAMILY_WORDS[found]} image encoder, but MODEL.NAME '{model_name}' is "
            f"{FAMILY_WORDS[expected]}: pass the MODEL.NAME it was trained with ({example})")


def is_published_layout(state_dict: StateDict) -> bool:
    """True for a published MSP / CLIP-ReID state dict (after `strip_data_parallel`)."""
    return (PUBLISHED_SIE_KEY in state_dict or any(key.startswith(PUBLISHED_BLOCKS) for key in state_dict)
            or any(key.startswith(PUBLISHED_TEXT_PREFIXES) for key in state_dict))


def from_published(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """(image-side state dict in this project's keys, the published keys that were dropped: the stage-1
    text side, and a ResNet checkpoint's unused `cv_embed`)."""
    state_dict = strip_data_parallel(state_dict)
    resnet = checkpoint_family(state_dict) == RESNET_FAMILY
    converted, dropped = {}, []
    for key, value in state_dict.items():
        if key.startswith(PUBLISHED_TEXT_PREFIXES) or (resnet and key == PUBLISHED_SIE_KEY):
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
