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
`meta_from_config` derives one from a config (the checkpoint's own stored config when it has one) and
the shapes of the weights.
"""
from __future__ import annotations

import torchvision.transforms as T

from datasets import FACTORY
from datasets.agreid import CAMERA_VIEW as AGREID_CAMERA_VIEW
from datasets.mssl import CAMERA_VIEW as MSSL_CAMERA_VIEW
from datasets.transforms import build_transforms
from model.clip_loader import image_tower_family
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


def test_interpolation(cfg) -> str:
    """The resize interpolation of the project's test transform for this config ('bicubic', 'bilinear')."""
    transform = build_transforms(cfg.INPUT.SIZE_TRAIN, cfg.INPUT.SIZE_TEST, is_train=False,
                                 mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    resize = next(t for t in transform.transforms if isinstance(t, T.Resize))
    return resize.interpolation.value


def interpolation_mode(name: str) -> T.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise UserError(f"checkpoint meta names the resize interpolation '{name}'; known: "
                        f"{', '.join(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


def describe_model(cfg, model) -> dict:
    """The meta of a ReIDModel built from `cfg` (what a checkpoint writer stores under 'meta')."""
    encoder = model.image_encoder
    dataset = cfg.DATASETS.NAMES
    return {
        'format': META_FORMAT,
        'framework_version': FRAMEWORK_VERSION,
        'arch': cfg.MODEL.NAME,
        'width': int(encoder.width),
        'embed_dim': int(encoder.embed_dim),
        'feature_dim': int(encoder.width + encoder.embed_dim),
        'num_classes': int(model.num_classes),
        'camera_num': int(encoder.camera_num),
        'view_num': int(encoder.view_num),
        # The model was built from cfg: its sizes and SIE settings are the config's (the ImageEncoder
        # contract promises only width, embed_dim and the table sizes).
        'image_size': [int(v) for v in cfg.INPUT.SIZE_TRAIN],
        'stride': [int(v) for v in cfg.MODEL.STRIDE_SIZE],
        'patch_size': [int(v) for v in getattr(encoder, 'patch_size', ())],
        'sie_camera': bool(cfg.MODEL.SIE_CAMERA),
        'sie_view': bool(cfg.MODEL.SIE_VIEW),
        'sie_coe': float(cfg.MODEL.SIE_COE),
        'neck_feat': model.neck_feat,
        'pixel_mean': [float(v) for v in cfg.INPUT.PIXEL_MEAN],
        'pixel_std': [float(v) for v in cfg.INPUT.PIXEL_STD],
        'interpolation': test_interpolation(cfg),
        'dataset': dataset,
        'camera_names': camera_names(dataset, encoder.camera_num),
        'camera_views': camera_views(dataset, encoder.camera_num),
        'view_names': [VIEW_NAMES.get(view, f'view{view}') for view in range(encoder.view_num)],
    }


def config_differences(meta, cfg) -> list[str]:
    """The test preprocessing settings in which `cfg` differs from a checkpoint's description, as
    "KEY saved (this run: value)" phrases; none for a checkpoint without a description."""
    if not isinstance(meta, dict) or meta.get('format') != META_FORMAT:
        return []
    now = {'INPUT.SIZE_TEST': [int(v) for v in cfg.INPUT.SIZE_TEST],
           'INPUT.PIXEL_MEAN': [float(v) for v in cfg.INPUT.PIXEL_MEAN],
           'INPUT.PIXEL_STD': [float(v) for v in cfg.INPUT.PIXEL_STD],
           'the test resize interpolation': test_interpolation(cfg)}
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


def _tower_sizes(cfg, state_dict: dict, what: str) -> tuple[int, int, list[int]]:
    """(width, embed_dim, patch) of a checkpoint's image tower, after checking that its family (ViT or
    ResNet) is MODEL.NAME's."""
    family = checkpoint_family(state_dict)
    mismatch = family_mismatch(family, cfg.MODEL.NAME, image_tower_family(cfg.MODEL.NAME))
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


def meta_from_config(cfg, state_dict: dict, what: str) -> dict:
    """A meta for a checkpoint without one: settings from `cfg`, counts from the weights' shapes.

    The identity count comes from the classifier, the camera and view counts from the SIE table and
    the config (a table of cameras x views rows is split with the dataset's camera count where it is
    fixed, DATASET_CAMERAS, else with its view count: its class's `num_train_views`, 2 for the
    sky/ground datasets); the patch grid must fit INPUT.SIZE_TRAIN and MODEL.STRIDE_SIZE.
    """
    width, embed_dim, patch = _tower_sizes(cfg, state_dict, what)
    num_classes = int(state_dict[CLASSIFIER_KEY].shape[0]) if CLASSIFIER_KEY in state_dict else 0
    dataset = cfg.DATASETS.NAMES
    view_num = int(getattr(FACTORY.get(dataset), 'num_train_views', 2))
    camera_num = DATASET_CAMERAS.get(dataset, 0)
    if SIE_KEY in state_dict:
        rows = int(state_dict[SIE_KEY].shape[0])
        if cfg.MODEL.SIE_CAMERA and cfg.MODEL.SIE_VIEW:
            if camera_num and rows % camera_num == 0:  # e.g. VeRi-776: 20 cameras x its viewpoints
                view_num = rows // camera_num
            elif rows % view_num:
                raise UserError(f"{what}: its SIE table has {rows} rows, not cameras x {view_num} views; pass "
                                f"the MODEL.SIE_CAMERA / MODEL.SIE_VIEW it was trained with")
            else:
                camera_num = rows // view_num
        elif cfg.MODEL.SIE_CAMERA:
            camera_num = rows
        elif cfg.MODEL.SIE_VIEW:
            view_num = rows
        else:
            raise UserError(f"{what} has an SIE table ({rows} rows) but MODEL.SIE_CAMERA and MODEL.SIE_VIEW are "
                            f"False: pass the SIE settings it was trained with")
    elif cfg.MODEL.SIE_CAMERA or cfg.MODEL.SIE_VIEW:
        raise UserError(f"{what} has no SIE table but MODEL.SIE_CAMERA is {cfg.MODEL.SIE_CAMERA} and "
                        f"MODEL.SIE_VIEW is {cfg.MODEL.SIE_VIEW}: pass MODEL.SIE_CAMERA False MODEL.SIE_VIEW False")
    return {
        'format': META_FORMAT,
        'framework_version': 'unknown (no model description in the checkpoint; derived from the config)',
        'arch': cfg.MODEL.NAME,
        'width': int(width), 'embed_dim': int(embed_dim), 'feature_dim': int(width + embed_dim),
        'num_classes': num_classes, 'camera_num': camera_num, 'view_num': view_num,
        'image_size': [int(v) for v in cfg.INPUT.SIZE_TRAIN],
        'stride': [int(v) for v in cfg.MODEL.STRIDE_SIZE],
        'patch_size': patch,
        'sie_camera': bool(cfg.MODEL.SIE_CAMERA), 'sie_view': bool(cfg.MODEL.SIE_VIEW),
        'sie_coe': float(cfg.MODEL.SIE_COE),
        'neck_feat': cfg.TEST.NECK_FEAT,
        'pixel_mean': [float(v) for v in cfg.INPUT.PIXEL_MEAN],
        'pixel_std': [float(v) for v in cfg.INPUT.PIXEL_STD],
        'interpolation': test_interpolation(cfg),
        'dataset': dataset,
        'camera_names': camera_names(dataset, camera_num),
        'camera_views': camera_views(dataset, camera_num),
        'view_names': [VIEW_NAMES.get(view, f'view{view}') for view in range(view_num)],
    }
