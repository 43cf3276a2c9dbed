"""What a re-ID checkpoint records about its model, so that it can be rebuilt without the dataset or YAML.

Every stage-2 checkpoint (`{MODEL.NAME}_{epoch}.pth`) and `resume.pth` carries, next to its weights,
`'meta'`: a plain dict (strings, numbers, lists; loadable with torch.load(weights_only=True)):

| key | meaning |
|---|---|
| `format` | `META_FORMAT`, the version of this schema |
| `framework_version` | `FRAMEWORK_VERSION` of the code that wrote it |
| `arch` | open_clip architecture name (MODEL.NAME) |
| `width`, `embed_dim`, `feature_dim` | class-token width, projection width, test feature size (their sum) |
| `num_classes`, `camera_num`, `view_num` | training identities, cameras and views |
| `image_size`, `stride`, `patch_size` | [height, width] of the input (INPUT.SIZE_TRAIN = SIZE_TEST), MODEL.STRIDE_SIZE, patch |
| `sie_camera`, `sie_view`, `sie_coe` | the side-information embedding (SIE) settings |
| `neck_feat` | TEST.NECK_FEAT: test feature 'before' or 'after' the BN necks |
| `pixel_mean`, `pixel_std`, `interpolation` | the test preprocessing: normalisation and resize interpolation |
| `dataset` | DATASETS.NAMES of the training set |
| `camera_names` | the training set's camera names, by camera id (as its file names write them) |
| `camera_views` | the view id of each camera (-1: unknown) |
| `view_names` | view names, by view id |

Checkpoints written before this schema, and published CLIP-ReID / MSP state dicts, have no `meta`:
`meta_from_settings` derives one from the settings of a config (the checkpoint's own stored config when
it has one) and the shapes of the weights. The settings come as `DescriptionSettings`, which
processor/settings.py reads from the config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torchvision.transforms as T

from datasets import FACTORY
from datasets.agreid import CAMERA_VIEW as AGREID_CAMERA_VIEW
from datasets.mssl import CAMERA_VIEW as MSSL_CAMERA_VIEW
from datasets.transforms import build_transforms
from model.clip_loader import image_tower_family
from model.make_model_clipreid import ModelSettings
from model.published_format import RESNET_FAMILY, checkpoint_family, family_mismatch
from utils.errors import UserError
from utils.vocabulary import GROUND, VIEW_NAMES

META_FORMAT = 'msp-model-meta-1'
FRAMEWORK_VERSION = '1.13.0'
UNKNOWN_VIEW = -1

SIE_KEY = 'image_encoder.sie_embed'
POS_KEY = 'image_encoder.positional_embedding'
CLASSIFIER_KEY = 'classifier.weight'
CONV_KEY = 'image_encoder.conv1.weight'
PROJ_KEY = 'image_encoder.proj'
RESNET_WIDTH_KEY = 'image_encoder.attnpool.k_proj.weight'
RESNET_PROJ_KEY = 'image_encoder.attnpool.c_proj.weight'

# The camera count of datasets whose cameras are fixed (a checkpoint's SIE table is split with it).
DATASET_CAMERAS = {'mssl': 15, 'agreid': 4, 'market1501': 6, 'veri': 20}

REQUIRED_KEYS = ('format', 'arch', 'width', 'embed_dim', 'feature_dim', 'num_classes', 'camera_num', 'view_num',
                 'image_size', 'stride', 'sie_camera', 'sie_view', 'sie_coe', 'neck_feat', 'pixel_mean',
                 'pixel_std', 'interpolation')
_INTERPOLATIONS = {mode.value: mode for mode in (T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR,
                                                   T.InterpolationMode.NEAREST)}


@dataclass(frozen=True)
class DescriptionSettings:
    """What a checkpoint's description records besides the shapes of the weights: the model's settings,
    the training dataset (DATASETS.NAMES) and the test preprocessing (INPUT.SIZE_TEST, PIXEL_MEAN/STD)."""
    model: ModelSettings
    dataset: str
    size_test: tuple
    pixel_mean: tuple
    pixel_std: tuple


def camera_names(dataset_name: str, camera_num: int) -> list[str]:
    """Camera names as the dataset's file names write them, by 0-based camera id."""
    from datasets import camera_name  # each dataset spells its cameras
    return [camera_name(dataset_name, camid) for camid in range(camera_num)]


def camera_views(dataset_name: str, camera_num: int) -> list[int]:
    """The view id of each camera of a known dataset (-1 where a camera id is unused or unknown)."""
    if dataset_name == 'mssl':  # MSSL numbers its cameras from c01; camid = number - 1
        return [MSSL_CAMERA_VIEW.get(camid + 1, UNKNOWN_VIEW) for camid in range(camera_num)]
    if dataset_name == 'agreid':
        return [AGREID_CAMERA_VIEW.get(camid, UNKNOWN_VIEW) for camid in range(camera_num)]
    if dataset_name == 'market1501':
        return [GROUND] * camera_num
    return [UNKNOWN_VIEW] * camera_num


def test_interpolation(settings: DescriptionSettings) -> str:
    """The resize interpolation of the project's test transform for these settings ('bicubic', 'bilinear')."""
    transform = build_transforms(settings.model.image_size, settings.size_test, is_train=False,
                                 mean=settings.pixel_mean, std=settings.pixel_std)
    resize = next(t for t in transform.transforms if isinstance(t, T.Resize))
    return resize.interpolation.value


def interpolation_mode(name: str) -> T.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise UserError(f"checkpoint meta names the resize interpolation '{name}'; known: "
                        f"{', '.join(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


def describe_model(settings: DescriptionSettings, model) -> dict:
    """The meta of a ReIDModel built with `settings.model` (what a checkpoint writer stores under 'meta').
    Its sizes and SIE settings are the settings' (the ImageEncoder contract promises only width,
    embed_dim and the table sizes); the counts are the model's."""
    encoder = model.image_encoder
    return _meta(settings, width=encoder.width, embed_dim=encoder.embed_dim, num_classes=model.num_classes,
                 camera_num=encoder.camera_num, view_num=encoder.view_num,
                 patch=getattr(encoder, 'patch_size', ()), neck_feat=model.neck_feat)


def _meta(settings: DescriptionSettings, width: int, embed_dim: int, num_classes: int, camera_num: int,
          view_num: int, patch, neck_feat: str, framework_version: str = FRAMEWORK_VERSION) -> dict:
    model, dataset = settings.model, settings.dataset
    return {
        'format': META_FORMAT,
        'framework_version': framework_version,
        'arch': model.name,
        'width': int(width), 'embed_dim': int(embed_dim), 'feature_dim': int(width + embed_dim),
        'num_classes': int(num_classes), 'camera_num': int(camera_num), 'view_num': int(view_num),
        'image_size': [int(v) for v in model.image_size],
        'stride': [int(v) for v in model.stride],
        'patch_size': [int(v) for v in patch],
        'sie_camera': bool(model.sie_camera), 'sie_view': bool(model.sie_view), 'sie_coe': float(model.sie_coe),
        'neck_feat': neck_feat,
        'pixel_mean': [float(v) for v in settings.pixel_mean],
        'pixel_std': [float(v) for v in settings.pixel_std],
        'interpolation': test_interpolation(settings),
        'dataset': dataset,
        'camera_names': camera_names(dataset, camera_num),
        'camera_views': camera_views(dataset, camera_num),
        'view_names': [VIEW_NAMES.get(view, f'view{view}') for view in range(view_num)],
    }


def config_differences(meta, settings: DescriptionSettings) -> list[str]:
    """The test preprocessing settings in which this run's config differs from a checkpoint's
    description, as "KEY saved (this run: value)" phrases; none for a checkpoint without a description."""
    if not isinstance(meta, dict) or meta.get('format') != META_FORMAT:
        return []
    now = {'INPUT.SIZE_TEST': [int(v) for v in settings.size_test],
           'INPUT.PIXEL_MEAN': [float(v) for v in settings.pixel_mean],
           'INPUT.PIXEL_STD': [float(v) for v in settings.pixel_std],
           'the test resize interpolation': test_interpolation(settings)}
    saved = {'INPUT.SIZE_TEST': meta.get('image_size'), 'INPUT.PIXEL_MEAN': meta.get('pixel_mean'),
             'INPUT.PIXEL_STD': meta.get('pixel_std'), 'the test resize interpolation': meta.get('interpolation')}
    return [f"{key} {saved[key]} (this run: {now[key]})" for key in now
            if saved[key] is not None and saved[key] != now[key]]


def check_meta(meta, what: str) -> dict:
    """`meta` if it has every required key of a known format; else one UserError naming `what`."""
    if not isinstance(meta, dict) or meta.get('format') != META_FORMAT:
        found = meta.get('format') if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{what}: its model description has the format {found!r}, this code reads {META_FORMAT!r}")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise UserError(f"{what}: its model description lacks {', '.join(missing)}")
    interpolation_mode(meta['interpolation'])
    return meta


def _tower_sizes(model_name: str, state_dict: dict, what: str) -> tuple[int, int, list[int]]:
    """(width, embed_dim, patch) of a checkpoint's image tower, after checking that its family (ViT or
    ResNet) is MODEL.NAME's."""
    family = checkpoint_family(state_dict)
    mismatch = family_mismatch(family, model_name, image_tower_family(model_name))
    if mismatch:
        raise UserError(f"{what}: {mismatch}")
    if family == RESNET_FAMILY:
        for key in (RESNET_WIDTH_KEY, RESNET_PROJ_KEY):
            if key not in state_dict:
                raise UserError(f"{what} holds no complete ResNet re-ID image weights (no {key})")
        return int(state_dict[RESNET_WIDTH_KEY].shape[1]), int(state_dict[RESNET_PROJ_KEY].shape[0]), []
    for key in (POS_KEY, CONV_KEY, PROJ_KEY):
        if key not in state_dict:
            raise UserError(f"{what} holds no re-ID image weights (no {key})")
    width, _, *patch = state_dict[CONV_KEY].shape
    return int(width), int(state_dict[PROJ_KEY].shape[1]), [int(v) for v in patch]


def meta_from_settings(settings: DescriptionSettings, state_dict: dict, what: str) -> dict:
    """A meta for a checkpoint without one: the settings of its config, counts from the weights' shapes.

    The identity count comes from the classifier, the camera and view counts from the SIE table and
    the settings (a table of cameras x views rows is split with the dataset's camera count where it is
    fixed, DATASET_CAMERAS, else with its view count: its class's `num_train_views`, 2 for the
    sky/ground datasets); the patch grid must fit INPUT.SIZE_TRAIN and MODEL.STRIDE_SIZE.
    """
    model = settings.model
    width, embed_dim, patch = _tower_sizes(model.name, state_dict, what)
    num_classes = int(state_dict[CLASSIFIER_KEY].shape[0]) if CLASSIFIER_KEY in state_dict else 0
    dataset = settings.dataset
    view_num = int(getattr(FACTORY.get(dataset), 'num_train_views', 2))
    camera_num = DATASET_CAMERAS.get(dataset, 0)
    if SIE_KEY in state_dict:
        rows = int(state_dict[SIE_KEY].shape[0])
        if model.sie_camera and model.sie_view:
            if camera_num and rows % camera_num == 0:  # e.g. VeRi-776: 20 cameras x its viewpoints
                view_num = rows // camera_num
            elif rows % view_num:
                raise UserError(f"{what}: its SIE table has {rows} rows, not cameras x {view_num} views; pass "
                                f"the MODEL.SIE_CAMERA / MODEL.SIE_VIEW it was trained with")
            else:
                camera_num = rows // view_num
        elif model.sie_camera:
            camera_num = rows
        elif model.sie_view:
            view_num = rows
        else:
            raise UserError(f"{what} has an SIE table ({rows} rows) but MODEL.SIE_CAMERA and MODEL.SIE_VIEW are "
                            f"False: pass the SIE settings it was trained with")
    elif model.sie_camera or model.sie_view:
        raise UserError(f"{what} has no SIE table but MODEL.SIE_CAMERA is {model.sie_camera} and "
                        f"MODEL.SIE_VIEW is {model.sie_view}: pass MODEL.SIE_CAMERA False MODEL.SIE_VIEW False")
    return _meta(settings, width=width, embed_dim=embed_dim, num_classes=num_classes, camera_num=camera_num,
                 view_num=view_num, patch=patch, neck_feat=model.neck_feat,
                 framework_version='unknown (no model description in the checkpoint; derived from the config)')
