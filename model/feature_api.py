"""Use a trained re-ID model from Python: load a checkpoint, get features of any images.

    from model.feature_api import load_reid_model, FeatureExtractor
    model = load_reid_model('logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth', device='cpu')
    extract = FeatureExtractor(model)
    features = extract(['a.jpg', 'b.jpg'], views=['sky', 'ground'])   # [2, D] float32, L2-normalised

`load_reid_model` returns the trainer's own `ReIDModel` in eval mode, with the checkpoint's model
description (model/checkpoint_meta.py) as `model.reid_meta`. The extractor preprocesses as the test
loader does (datasets.bases.read_image, datasets.transforms.build_transforms' test transform, with the
size, normalisation and interpolation the checkpoint records).

Side information (SIE). A model trained with MODEL.SIE_CAMERA / SIE_VIEW adds a learnt vector per
camera / view / (camera, view) to the class token. The extractor takes `cameras` and `views` per image
(ids, or names as the training set spells them: 'c05', 'sky'); `None` for an image (or for the whole
argument) means unknown. What happens to unknown labels is the `side_info` choice:
- 'mean' (default): the average of the SIE rows the known labels allow. A known view with an unknown
  camera averages the rows of the training cameras of that view; a known camera fills in its view from
  the training set. With nothing known it is the average of every row seen in training: the expected
  side information over the training cameras, which keeps the class token in the range it was trained on.
- 'omit': no side information at all (what stage 1 does before the table is trained).
- 'error': unknown labels are refused.
Images whose labels are all known use exactly the trainer's table lookup.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import to_pil_image
from yacs.config import CfgNode

from datasets.bases import read_image
from datasets.transforms import build_transforms
from model.checkpoint_meta import (UNKNOWN_VIEW, check_meta, interpolation_mode, meta_from_settings)
from model.clip_loader import build_clip
from model.make_model_clipreid import ReIDModel
from model.published_format import from_published, is_published_layout, strip_data_parallel
from utils.checkpoint import load_weights_only
from utils.device import autocast, resolve_device
from utils.errors import UserError
from utils.progress import progress

SIDE_INFO_CHOICES = ('mean', 'omit', 'error')
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def read_checkpoint(path: str, config_file: str = '', opts: Sequence[str] = ()) -> tuple[dict, dict]:
    """(image state dict, model description) of a re-ID checkpoint of any kind this project reads.

    A checkpoint with a description ('meta') needs nothing else. One without (written before
    descriptions existed, a bare state dict, or a published MSP / CLIP-ReID state dict, converted with
    model/published_format.py) is described from its stored config, if any, then `config_file` and
    `opts` (KEY VALUE overrides) on top.
    """
    what = f"checkpoint '{path}'"
    checkpoint = load_weights_only(path, what)
    if not isinstance(checkpoint, dict):
        raise UserError(f"{what} holds a {type(checkpoint).__name__}, not a state dict")
    if isinstance(checkpoint.get('model'), dict):
        state, meta, stored_config = checkpoint['model'], checkpoint.get('meta'), checkpoint.get('config')
    else:
        state, meta, stored_config = checkpoint, None, None
    state = strip_data_parallel(state)
    if not all(isinstance(v, torch.Tensor) for v in state.values()) or not state:
        kinds = ', '.join(sorted(str(k) for k in checkpoint)[:4])
        raise UserError(f"{what} is not a re-ID model checkpoint (it holds {kinds}); pass a stage-2 checkpoint "
                        f"(MODEL.NAME_<epoch>.pth) or a resume.pth")
    if is_published_layout(state):
        state, _ = from_published(state)  # the stage-1 text side is not needed for features
    if not any(k.startswith('image_encoder.') for k in state):
        kinds = ', '.join(sorted(state)[:3])
        raise UserError(f"{what} is not a re-ID model checkpoint (no image_encoder.* weights; it holds {kinds}); "
                        f"pass a stage-2 checkpoint (MODEL.NAME_<epoch>.pth) or a resume.pth")
    if meta is not None:
        return state, check_meta(meta, what)
    from processor.settings import description_settings  # the config boundary, above this room
    cfg = config_for_legacy(stored_config, config_file, opts, what)
    return state, meta_from_settings(description_settings(cfg), state, what)


def config_for_legacy(stored_config, config_file: str, opts: Sequence[str], what: str) -> CfgNode:
    """Defaults < the checkpoint's stored config (keys this code knows) < config_file < opts; validated."""
    from config import _merge_opts, _merge_yaml, get_defaults, validate_config
    cfg = get_defaults()
    if isinstance(stored_config, str) and stored_config:
        try:
            saved = CfgNode.load_cfg(stored_config)
        except Exception:  # an unreadable stored config: the user's config decides
            saved = None
        if saved is not None:
            _merge_known(cfg, saved)
    if config_file:
        _merge_yaml(cfg, config_file)
    _merge_opts(cfg, list(opts))
    try:
        validate_config(cfg)
    except UserError as err:
        raise UserError(f"{what}: {err}") from None
    cfg.freeze()
    return cfg


def _merge_known(cfg: CfgNode, saved: CfgNode) -> None:
    for key, value in saved.items():
        if key not in cfg:
            continue  # a key of another version of this code
        if isinstance(cfg[key], CfgNode) and isinstance(value, CfgNode):
            _merge_known(cfg[key], value)
        elif not isinstance(cfg[key], CfgNode):
            cfg[key] = type(cfg[key])(value) if isinstance(cfg[key], (list, tuple)) else value


def build_model(meta: dict) -> ReIDModel:
    """The trainer's ReIDModel (image side only, random weights) shaped as `meta` describes."""
    clip = build_clip(meta['arch'])
    model = ReIDModel(clip, meta['num_classes'], camera_num=meta['camera_num'], view_num=meta['view_num'],
                      image_size=meta['image_size'], stride=meta['stride'], sie_camera=meta['sie_camera'],
                      sie_view=meta['sie_view'], sie_coe=meta['sie_coe'], neck_feat=meta['neck_feat'],
                      model_name=meta['arch'])
    model.reid_meta = dict(meta)
    return model


def load_reid_model(path: str, device: str | torch.device = 'auto', config_file: str = '',
                    opts: Sequence[str] = ()) -> ReIDModel:
    """The trained model of a checkpoint, in eval mode on `device` ('auto': CUDA when available).

    `config_file` / `opts` matter only for checkpoints without a model description (see read_checkpoint).
    """
    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    state, meta = read_checkpoint(path, config_file, opts)
    if meta['num_classes'] < 1:  # a checkpoint without classifiers: they are not used for features
        meta = {**meta, 'num_classes': 1}
        state = {k: v for k, v in state.items() if not k.startswith(('classifier.', 'classifier_proj.'))}
    model = build_model(meta)
    model.load_image_state_dict(state, for_test=True)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Side information
# ---------------------------------------------------------------------------------------------
def _label_ids(labels, count: int, names: Sequence[str], kind: str, n: int) -> list[int]:
    """Per image: an id in [0, count), or -1 for unknown (None). Names are matched against `names`."""
    if labels is None:
        return [-1] * n
    labels = list(labels)
    if len(labels) != n:
        raise UserError(f"{len(labels)} {kind} labels for {n} images")
    lookup = {str(name).lower(): index for index, name in enumerate(names)}
    ids = []
    for label in labels:
        if label is None or (isinstance(label, (int, np.integer)) and int(label) == -1):
            ids.append(-1)
            continue
        if isinstance(label, str):
            if label.lower() not in lookup:
                raise UserError(f"unknown {kind} '{label}'; the model's training set has: {', '.join(names)}")
            ids.append(lookup[label.lower()])
            continue
        value = int(label)
        if not 0 <= value < count:
            raise UserError(f"{kind} id {value} is out of range: the model knows {count} {kind}s (0-{count - 1})")
        ids.append(value)
    return ids


def sie_weights(meta: dict, cam_ids: Sequence[int], view_ids: Sequence[int]) -> torch.Tensor:
    """[N, rows] float32 mixing weights over the SIE table: per image, the average of the rows that its
    known labels allow (-1 = unknown), restricted to the camera-view pairs of the training set."""
    cams, views = meta['camera_num'], meta['view_num']
    camera_views = list(meta.get('camera_views') or [UNKNOWN_VIEW] * cams)
    if meta['sie_camera'] and meta['sie_view']:
        rows = [(c, v) for c in range(cams) for v in range(views)]
        seen = [camera_views[c] in (UNKNOWN_VIEW, v) for c, v in rows]
    elif meta['sie_camera']:
        rows = [(c, camera_views[c]) for c in range(cams)]
        seen = [True] * cams
    else:
        rows = [(-1, v) for v in range(views)]
        seen = [True] * views
    weights = torch.zeros(len(cam_ids), len(rows))
    for i, (cam, view) in enumerate(zip(cam_ids, view_ids)):
        if view < 0 and cam >= 0 and cam < len(camera_views) and camera_views[cam] >= 0:
            view = camera_views[cam]
        fits = [(cam < 0 or c == cam or c < 0) and (view < 0 or v == view or v < 0) for c, v in rows]
        chosen = [f and s for f, s in zip(fits, seen)]
        if not any(chosen):  # e.g. a camera/view pair the training set never had: trust the labels
            chosen = fits
        if not any(chosen):
            chosen = [True] * len(rows)
        weights[i, torch.tensor(chosen)] = 1.0 / sum(chosen)
    return weights


# ---------------------------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------------------------
def as_pil(image) -> Image.Image:
    """An RGB PIL image from a path, a PIL image, an HxWx3 uint8 array or a [3, H, W] tensor
    (uint8, or float in 0-1; converted to 8 bits like an image file)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image))
    if isinstance(image, Image.Image):
        return image.convert('RGB')
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UserError(f"an image array must be H x W x 3 uint8 (RGB), got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image, 'RGB')
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"an image tensor must be 3 x H x W (RGB), got {list(image.shape)}")
        if image.is_floating_point() and (image.min() < 0 or image.max() > 1):
            raise UserError('a float image tensor must hold values in 0-1')
        return to_pil_image(image.detach().cpu())
    raise UserError(f"cannot read an image from a {type(image).__name__}: pass a path, a PIL image, an "
                    f"H x W x 3 uint8 array or a 3 x H x W tensor")


def _as_list(images) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return [images]
    if isinstance(images, torch.Tensor):
        return [images] if images.ndim == 3 else list(images)
    return list(images)


class _Images(Dataset):
    def __init__(self, images: list, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(as_pil(self.images[index]))


def test_transform(meta: dict):
    """The project's test transform with the checkpoint's size, normalisation and interpolation."""
    transform = build_transforms(meta['image_size'], meta['image_size'], is_train=False,
                                 mean=meta['pixel_mean'], std=meta['pixel_std'])
    for step in transform.transforms:
        if hasattr(step, 'interpolation'):  # honour the checkpoint, whatever the config's default now is
            step.interpolation = interpolation_mode(meta['interpolation'])
    return transform


class FeatureExtractor:
    """Features of images under a loaded re-ID model: `extractor(images, cameras=None, views=None)`.

    images: one or a list of paths, PIL images, H x W x 3 uint8 arrays or 3 x H x W tensors (or an
    N x 3 x H x W tensor). Returns an N x D float32 tensor on the CPU, L2-normalised unless
    `normalize=False`. `precision`: 'fp32', or 'fp16' / 'bf16' autocast. `side_info`: what unknown
    camera/view labels do ('mean', 'omit', 'error'; see the module docstring).
    """

    def __init__(self, model: ReIDModel, batch_size: int = 64, precision: str = 'fp32', normalize: bool = True,
                 side_info: str = 'mean', num_workers: int = 0, show_progress: bool = False):
        if precision not in PRECISIONS:
            raise UserError(f"precision '{precision}' must be one of {', '.join(PRECISIONS)}")
        if side_info not in SIDE_INFO_CHOICES:
            raise UserError(f"side_info '{side_info}' must be one of {', '.join(SIDE_INFO_CHOICES)}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        meta = getattr(model, 'reid_meta', None)
        if meta is None:
            raise UserError('the model has no reid_meta: load it with load_reid_model')
        self.model, self.meta = model.eval(), meta
        self.batch_size, self.dtype, self.normalize = batch_size, PRECISIONS[precision], normalize
        self.side_info, self.num_workers, self.show_progress = side_info, num_workers, show_progress
        self.transform = test_transform(meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def uses_side_info(self) -> bool:
        return bool(self.meta['sie_camera'] or self.meta['sie_view'])

    def side_inputs(self, n: int, cameras=None, views=None) -> dict:
        """The model's keyword inputs for side information of n images: labels, SIE weights or nothing."""
        if not self.uses_side_info:
            return {}
        meta = self.meta
        cam_ids = _label_ids(cameras, meta['camera_num'], meta.get('camera_names') or [], 'camera', n)
        view_ids = _label_ids(views, meta['view_num'], meta.get('view_names') or [], 'view', n)
        needed = [(meta['sie_camera'], cam_ids), (meta['sie_view'], view_ids)]
        if all(min(ids, default=0) >= 0 for used, ids in needed if used):
            return {'cam_label': torch.tensor(cam_ids), 'view_label': torch.tensor(view_ids)}
        if self.side_info == 'error':
            kinds = ' and '.join(k for (used, ids), k in zip(needed, ('camera', 'view')) if used and min(ids) < 0)
            raise UserError(f"the model uses side information (SIE) and some images have no {kinds} label; "
                            f"pass them, or side_info 'mean' / 'omit'")
        if self.side_info == 'omit':
            return {'sie_weights': torch.zeros(n, self.model.image_encoder.sie_embed.shape[0])}
        return {'sie_weights': sie_weights(meta, cam_ids, view_ids)}

    @torch.no_grad()
    def __call__(self, images, cameras: Iterable | None = None, views: Iterable | None = None) -> torch.Tensor:
        images = _as_list(images)
        if not images:
            raise UserError('no images to extract features from')
        side = self.side_inputs(len(images), cameras, views)
        loader = DataLoader(_Images(images, self.transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers)
        device, chunks, start = self.device, [], 0
        for batch in progress(loader, desc='extracting features', unit='batch', leave=False) \
                if self.show_progress else loader:
            stop = start + batch.shape[0]
            inputs = {key: value[start:stop].to(device) for key, value in side.items()}
            with autocast(device, self.dtype):
                feats = self.model(batch.to(device), **inputs)
            chunks.append(feats.float().cpu())
            start = stop
        feats = torch.cat(chunks)
        return F.normalize(feats, dim=1) if self.normalize else feats
