"""The re-ID model: CLIP image tower with BNNeck heads, plus per-view prompt learners for stage 1."""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from model.clip_loader import build_clip, load_clip
from model.image_encoder import ImageEncoder, build_image_encoder
from model.published_format import (PUBLISHED_SIE_KEY, checkpoint_family, family_mismatch, from_published,
                                     is_published_layout, strip_data_parallel)
from model.text_encoder import PromptLearner, TextEncoder
from utils.errors import UserError
from utils.vocabulary import PROMPT_TEMPLATE_KEYS

logger = logging.getLogger(__name__)

IMAGE_PREFIXES = ('image_encoder.', 'bottleneck.', 'bottleneck_proj.', 'classifier.', 'classifier_proj.')
CLASSIFIER_PREFIXES = ('classifier.', 'classifier_proj.')
SIE_KEY = 'image_encoder.sie_embed'


def _bnneck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    linear = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(linear.weight, std=0.001)
    return linear


class ReIDModel(nn.Module):
    def __init__(self, clip_model: nn.Module, num_classes: int, camera_num: int = 0, view_num: int = 0,
                 image_size=(256, 128), stride=(16, 16), sie_camera: bool = False, sie_view: bool = False,
                 sie_coe: float = 3.0, neck_feat: str = 'before', prompt_templates: Optional[Dict[str, str]] = None,
                 model_name: str = '', image_encoder: Optional[ImageEncoder] = None):
        """`image_encoder`: any model.image_encoder.ImageEncoder; by default the one of `clip_model.visual`'s
        family, built with the size, stride and SIE arguments."""
        super().__init__()
        if neck_feat not in ('before', 'after'):
            raise UserError(f"TEST.NECK_FEAT '{neck_feat}' must be 'before' or 'after'")
        self.model_name = model_name
        self.num_classes = num_classes
        self.neck_feat = neck_feat
        if image_encoder is None:
            image_encoder = build_image_encoder(clip_model.visual, image_size=image_size, stride=stride,
                                                camera_num=camera_num, view_num=view_num, sie_coe=sie_coe,
                                                sie_camera=sie_camera, sie_view=sie_view)
        self.image_encoder = image_encoder
        width, embed_dim = self.image_encoder.width, self.image_encoder.embed_dim
        self.bottleneck = _bnneck(width)
        self.bottleneck_proj = _bnneck(embed_dim)
        self.classifier = _classifier(width, num_classes)
        self.classifier_proj = _classifier(embed_dim, num_classes)

        prompt_templates = prompt_templates or {}
        if prompt_templates:
            self.text_encoder = TextEncoder(clip_model)
            self.prompt_learners = nn.ModuleDict({
                view: PromptLearner(num_classes, template, clip_model, config_key=f'MODEL.{PROMPT_TEMPLATE_KEYS[view]}')
                for view, template in prompt_templates.items()})
        else:
            self.text_encoder = None
            self.prompt_learners = nn.ModuleDict()

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                view_label: Optional[torch.Tensor] = None, sie_weights: Optional[torch.Tensor] = None):
        # sie_weights (model/feature_api.py's mix of SIE rows for unknown labels) only when given: the
        # ImageEncoder contract does not require encoders to take it.
        extra = {} if sie_weights is None else {'sie_weights': sie_weights}
        penultimate, feat, proj = self.image_encoder(x, cam_label, view_label, **extra)
        feat_bn = self.bottleneck(feat)
        proj_bn = self.bottleneck_proj(proj)
        if self.training:
            return {
                'cls_scores': [self.classifier(feat_bn), self.classifier_proj(proj_bn)],
                'feats': [penultimate, feat, proj],
                'proj': proj,
            }
        if self.neck_feat == 'after':
            return torch.cat([feat_bn, proj_bn], dim=1)
        return torch.cat([feat, proj], dim=1)

    def encode_image_proj(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None,
                          view_label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Projected image features [B, embed_dim] (stage 1).

        Without labels the SIE table is left out even when enabled: stage 1 (as in CLIP-ReID) learns prompts
        against plain CLIP features, before the table is trained.
        """
        use_sie = cam_label is not None or view_label is not None
        return self.image_encoder(x, cam_label, view_label, use_sie=use_sie)[2]

    def text_features(self, view: str, labels: torch.Tensor) -> torch.Tensor:
        """Text features [B, embed_dim] of the identities `labels` under the prompt of `view`."""
        if view not in self.prompt_learners:
            raise ValueError(f"no prompt learner for text view '{view}'; built: {sorted(self.prompt_learners)}")
        learner = self.prompt_learners[view]
        return self.text_encoder(learner(labels), learner.tokenized, last_end_of_text=learner.end_of_text)

    def image_state_dict(self) -> Dict[str, torch.Tensor]:
        """Weights of the image side only: what a re-ID checkpoint stores."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(IMAGE_PREFIXES)}

    def _sie_hint(self, rows: int) -> str:
        cams, views = self.image_encoder.camera_num, self.image_encoder.view_num
        options = [(cams * views, 'MODEL.SIE_CAMERA True MODEL.SIE_VIEW True'),
                   (cams, 'MODEL.SIE_CAMERA True MODEL.SIE_VIEW False'),
                   (views, 'MODEL.SIE_CAMERA False MODEL.SIE_VIEW True')]
        for count, override in options:
            if count == rows:
                return f'pass {override}'
        return (f'its {rows} rows fit neither this dataset\'s {cams} cameras nor {views} views: '
                f'use the dataset it was trained on')

    def load_image_state_dict(self, state_dict: Dict[str, torch.Tensor], for_test: bool = True) -> None:
        """Load a re-ID checkpoint's image side: this project's or the published MSP / CLIP-ReID layout
        (model/published_format.py), with or without DataParallel's `module.` prefix. Classifiers of
        another identity count are skipped for testing."""
        sd = strip_data_parallel(state_dict)
        encoder = self.image_encoder
        mismatch = family_mismatch(checkpoint_family(sd), self.model_name, encoder.family or None)
        if mismatch:
            raise UserError(mismatch)
        if is_published_layout(sd):
            sd, dropped = from_published(sd)
            text_side = [k for k in dropped if k != PUBLISHED_SIE_KEY]
            if text_side:
                logger.info('published checkpoint: its %d stage-1 text-side tensors (prompt_learner.*, '
                            'text_encoder.*) are not used by the image model and were ignored', len(text_side))
            if PUBLISHED_SIE_KEY in dropped:
                logger.info('published checkpoint: its SIE table cv_embed was ignored (CLIP-ReID builds one for '
                            'MODEL.SIE_CAMERA / SIE_VIEW even with a ResNet, whose forward never uses it)')
        sd = {k: v for k, v in sd.items() if k.startswith(IMAGE_PREFIXES)}
        if not sd:
            raise UserError('the checkpoint holds no re-ID image weights (no image_encoder.* keys)')
        own = self.image_state_dict()

        has_sie, wants_sie = SIE_KEY in sd, SIE_KEY in own
        if has_sie and not wants_sie:
            raise UserError(f'checkpoint has an SIE table but MODEL.SIE_CAMERA and MODEL.SIE_VIEW are False: '
                            f'{self._sie_hint(sd[SIE_KEY].shape[0])}')
        if wants_sie and not has_sie:
            raise UserError(f'checkpoint has no SIE table but MODEL.SIE_CAMERA is {encoder.sie_camera} and '
                            f'MODEL.SIE_VIEW is {encoder.sie_view}: pass MODEL.SIE_CAMERA False MODEL.SIE_VIEW False')
        if has_sie and sd[SIE_KEY].shape != own[SIE_KEY].shape:
            raise UserError(f'checkpoint SIE table has {sd[SIE_KEY].shape[0]} rows, the model expects '
                            f'{own[SIE_KEY].shape[0]} (MODEL.SIE_CAMERA {encoder.sie_camera}, MODEL.SIE_VIEW '
                            f'{encoder.sie_view}): {self._sie_hint(sd[SIE_KEY].shape[0])}')

        for key in (k for k in own if k.endswith('positional_embedding') and k in sd):
            if sd[key].shape != own[key].shape:
                geometry = 'INPUT.SIZE_TRAIN' + (' and MODEL.STRIDE_SIZE' if hasattr(encoder, 'stride') else '')
                grid = getattr(encoder, 'grid_size', None)
                grid = f' ({grid[0]}x{grid[1]})' if grid else ''
                raise UserError(f'checkpoint has {sd[key].shape[0] - 1} positions in {key}, the model '
                                f'{own[key].shape[0] - 1}{grid}: pass the {geometry} it was trained with')

        classifier_keys = [k for k in own if k.startswith(CLASSIFIER_PREFIXES)]
        if any(k in sd and sd[k].shape != own[k].shape for k in classifier_keys):
            found = next(sd[k].shape[0] for k in classifier_keys if k in sd)
            if not for_test:
                raise UserError(f'checkpoint classifier has {found} identities, the dataset {self.num_classes}')
            logger.info('checkpoint classifier has %d identities, the dataset %d: classifiers not loaded '
                        '(not used for testing)', found, self.num_classes)
            sd = {k: v for k, v in sd.items() if not k.startswith(CLASSIFIER_PREFIXES)}
            own = {k: v for k, v in own.items() if not k.startswith(CLASSIFIER_PREFIXES)}

        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            raise UserError(f"checkpoint does not fit MODEL.NAME '{self.model_name}': "
                            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
        wrong = [k for k in own if sd[k].shape != own[k].shape]
        if wrong:
            raise UserError(f"checkpoint does not fit MODEL.NAME '{self.model_name}': {wrong[0]} has shape "
                            f"{list(sd[wrong[0]].shape)}, the model {list(own[wrong[0]].shape)}")
        self.load_state_dict(sd, strict=False)


@dataclass(frozen=True)
class ModelSettings:
    """What make_model needs besides the data's counts (processor/settings.py reads it from the config)."""
    name: str
    pretrain_path: str = ''
    image_size: tuple = (256, 128)
    stride: tuple = (16, 16)
    sie_camera: bool = False
    sie_view: bool = False
    sie_coe: float = 3.0
    neck_feat: str = 'before'
    prompt_templates: Dict[str, str] = field(default_factory=dict)  # text view -> template


def make_model(settings: ModelSettings, num_classes: int, camera_num: int, view_num: int,
               text_views: Iterable[str] = (), load_pretrained: bool = True) -> ReIDModel:
    """Build the re-ID model; `load_pretrained=False` skips the CLIP weights (a re-ID checkpoint follows)."""
    text_views = list(dict.fromkeys(text_views))
    unknown = [v for v in text_views if v not in PROMPT_TEMPLATE_KEYS]
    if unknown:
        raise UserError(f"unknown text view '{unknown[0]}'; valid: {', '.join(PROMPT_TEMPLATE_KEYS)}")
    name = settings.name
    clip_model = load_clip(name, settings.pretrain_path) if load_pretrained else build_clip(name)
    model = ReIDModel(
        clip_model, num_classes, camera_num=camera_num, view_num=view_num,
        image_size=settings.image_size, stride=settings.stride,
        sie_camera=settings.sie_camera, sie_view=settings.sie_view, sie_coe=settings.sie_coe,
        neck_feat=settings.neck_feat, prompt_templates={view: settings.prompt_templates[view] for view in text_views},
        model_name=name)
    return model.train()
