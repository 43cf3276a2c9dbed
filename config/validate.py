"""Validation of a merged configuration: every bad value is one UserError naming its key."""
import re

from yacs.config import CfgNode as CN

from utils.errors import UserError

TEXT_VIEWS = ('all', 'sky', 'ground')
IMAGE_VIEWS = ('all', 'sky', 'ground')
OPTIMIZERS = ('Adam', 'AdamW', 'SGD')
AMP_MODES = ('auto', 'bf16', 'fp16', 'off')
_DEVICE_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?|mps)$')
_PROTOCOL_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_+-]*')  # as datasets/protocols.PROTOCOL_NAME


def _get(cfg: CN, key: str):
    node = cfg
    for part in key.split('.'):
        node = node[part]
    return node


def _fail(key: str, value, why: str):
    raise UserError(f"{key} = {value!r}: {why}")


def _check(cfg: CN, key: str, ok, why: str):
    value = _get(cfg, key)
    try:
        good = ok(value)
    except (TypeError, ValueError):
        good = False
    if not good:
        _fail(key, value, why)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int_pair(v) -> bool:
    return len(v) == 2 and all(_is_int(x) and x > 0 for x in v)


def _choice(options):
    return (lambda v: v in options), f"must be one of {', '.join(map(str, options))}"


def _int_at_least(low):
    return (lambda v: _is_int(v) and v >= low), f"must be an integer >= {low}"


def _number_in(low, high, low_open=False):
    def ok(v):
        return _is_number(v) and (v > low if low_open else v >= low) and v <= high
    bracket = '(' if low_open else '['
    return ok, f"must be a number in {bracket}{low}, {high}]"


_POSITIVE = (lambda v: _is_number(v) and v > 0), 'must be a positive number'
_NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0), 'must be a number >= 0'
_BOOL = (lambda v: isinstance(v, bool)), 'must be True or False'
_SIZE = _positive_int_pair, 'must be two positive integers [height, width]'
_NON_EMPTY = (lambda v: isinstance(v, str) and v.strip() != ''), 'must be a non-empty string'
_TEMPLATE = (lambda v: isinstance(v, str) and ' X' in f' {v}'), "must contain 'X' placeholder words"
_TRIPLE = (lambda v: len(v) == 3 and all(_is_number(x) for x in v)), 'must be three numbers'
_PATH_OR_EMPTY = (lambda v: isinstance(v, str)), 'must be a path or empty'
_COMMA_LIST = ((lambda v: isinstance(v, str) and (v.strip() == '' or all(x.strip() for x in v.split(',')))),
               'must be empty or comma-separated non-empty entries')
_DEVICE = (lambda v: bool(_DEVICE_PATTERN.match(v))), "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"

RULES = {
    'MODEL.DEVICE': _DEVICE,
    'MODEL.NAME': _NON_EMPTY,
    'MODEL.PRETRAIN_PATH': _PATH_OR_EMPTY,
    'MODEL.STRIDE_SIZE': (_positive_int_pair, 'must be two positive integers [height, width]'),
    'MODEL.SIE_CAMERA': _BOOL,
    'MODEL.SIE_VIEW': _BOOL,
    'MODEL.SIE_COE': _NON_NEGATIVE,
    'MODEL.PROMPT_TEMPLATE': ((lambda v: v == '' or _TEMPLATE[0](v)),
                              "must be empty (the dataset's own) or contain 'X' placeholder words"),
    'MODEL.PROMPT_TEMPLATE_SKY': _TEMPLATE,
    'MODEL.PROMPT_TEMPLATE_GROUND': _TEMPLATE,
    'MODEL.ID_LOSS_WEIGHT': _NON_NEGATIVE,
    'MODEL.TRIPLET_LOSS_WEIGHT': _NON_NEGATIVE,
    'MODEL.IF_LABELSMOOTH': _choice(('on', 'off')),
    'MODEL.I2T_TEXT_VIEWS': ((lambda v: all(x in TEXT_VIEWS for x in v)),
                             f"must be a tuple of {', '.join(TEXT_VIEWS)}"),
    'MODEL.I2T_IMAGE_VIEWS': ((lambda v: all(x in IMAGE_VIEWS for x in v)),
                              f"must be a tuple of {', '.join(IMAGE_VIEWS)}"),
    'MODEL.I2T_LOSS_WEIGHTS': ((lambda v: all(_is_number(x) and x >= 0 for x in v)),
                               'must be a tuple of numbers >= 0'),
    'INPUT.SIZE_TRAIN': _SIZE,
    'INPUT.SIZE_TEST': _SIZE,
    'INPUT.PROB': _number_in(0, 1),
    'INPUT.RE_PROB': _number_in(0, 1),
    'INPUT.PADDING': _int_at_least(0),
    'INPUT.PIXEL_MEAN': _TRIPLE,
    'INPUT.PIXEL_STD': ((lambda v: len(v) == 3 and all(_is_number(x) and x > 0 for x in v)),
                        'must be three positive numbers'),
    'DATASETS.NAMES': _NON_EMPTY,
    'DATASETS.ROOT_DIR': _NON_EMPTY,
    'DATASETS.TEST_NAMES': _COMMA_LIST,
    'DATASETS.TEST_ROOT_DIR': _COMMA_LIST,
    'DATASETS.VEHICLEID_TEST_SIZE': _choice((800, 1600, 2400)),
    'DATALOADER.NUM_WORKERS': _int_at_least(0),
    'DATALOADER.NUM_INSTANCE': _int_at_least(1),
    'DATALOADER.SKIP_BAD_IMAGES': _BOOL,
    'SOLVER.SEED': _int_at_least(0),
    'SOLVER.AMP': _choice(AMP_MODES),
    'TEST.AMP': _choice(AMP_MODES),
    'SOLVER.COMPILE': _BOOL,
    'SOLVER.RESUME': _PATH_OR_EMPTY,
    'SOLVER.KEEP_CHECKPOINTS': _int_at_least(0),
    'SOLVER.DETERMINISTIC': _BOOL,
    'SOLVER.STAGE1.IMS_PER_BATCH': _int_at_least(1),
    'SOLVER.STAGE1.OPTIMIZER_NAME': _choice(OPTIMIZERS),
    'SOLVER.STAGE1.BASE_LR': _POSITIVE,
    'SOLVER.STAGE1.WEIGHT_DECAY': _NON_NEGATIVE,
    'SOLVER.STAGE1.MAX_EPOCHS': _int_at_least(1),
    'SOLVER.STAGE1.WARMUP_EPOCHS': _int_at_least(0),
    'SOLVER.STAGE1.WARMUP_LR_INIT': _POSITIVE,
    'SOLVER.STAGE1.LR_MIN': _NON_NEGATIVE,
    'SOLVER.STAGE1.LOG_PERIOD': _int_at_least(1),
    'SOLVER.STAGE2.IMS_PER_BATCH': _int_at_least(2),
    'SOLVER.STAGE2.ACCUM_STEPS': _int_at_least(1),
    'SOLVER.STAGE2.OPTIMIZER_NAME': _choice(OPTIMIZERS),
    'SOLVER.STAGE2.BASE_LR': _POSITIVE,
    'SOLVER.STAGE2.MOMENTUM': _number_in(0, 1),
    'SOLVER.STAGE2.WEIGHT_DECAY': _NON_NEGATIVE,
    'SOLVER.STAGE2.BIAS_LR_FACTOR': _POSITIVE,
    'SOLVER.STAGE2.WEIGHT_DECAY_BIAS': _NON_NEGATIVE,
    'SOLVER.STAGE2.MARGIN': _NON_NEGATIVE,
    'SOLVER.STAGE2.MAX_EPOCHS': _int_at_least(1),
    'SOLVER.STAGE2.STEPS': ((lambda v: all(_is_int(x) and x > 0 for x in v)
                             and list(v) == sorted(set(v))),
                            'must be increasing positive epoch numbers'),
    'SOLVER.STAGE2.GAMMA': _number_in(0, 1, low_open=True),
    'SOLVER.STAGE2.WARMUP_FACTOR': _number_in(0, 1, low_open=True),
    'SOLVER.STAGE2.WARMUP_EPOCHS': _int_at_least(0),
    'SOLVER.STAGE2.WARMUP_METHOD': _choice(('linear', 'constant')),
    'SOLVER.STAGE2.CHECKPOINT_PERIOD': _int_at_least(1),
    'SOLVER.STAGE2.LOG_PERIOD': _int_at_least(1),
    'SOLVER.STAGE2.EVAL_PERIOD': _int_at_least(1),
    'TEST.IMS_PER_BATCH': _int_at_least(1),
    'TEST.WEIGHT': _PATH_OR_EMPTY,
    'TEST.EVAL_MODE': ((lambda v: isinstance(v, str) and bool(_PROTOCOL_PATTERN.fullmatch(v))),
                       "must be ALL or a protocol name (letters, digits, '_', '+', '-')"),
    'TEST.NECK_FEAT': _choice(('before', 'after')),
    'TEST.FEAT_NORM': _BOOL,
    'TEST.RE_RANKING': _BOOL,
    'TEST.RE_RANKING_K1': _int_at_least(1),
    'TEST.RE_RANKING_K2': _int_at_least(1),
    'TEST.RE_RANKING_LAMBDA': _number_in(0, 1),
    'TEST.SAVE_FEATURES': _BOOL,
    'TEST.VISUALIZE': _BOOL,
    'TEST.VISUALIZE_QUERIES': ((lambda v: _is_int(v) and 1 <= v <= 100), 'must be an integer in [1, 100]'),
    'TEST.VISUALIZE_TOPK': ((lambda v: _is_int(v) and 1 <= v <= 50), 'must be an integer in [1, 50]'),
    'TEST.VEHICLEID_TRIALS': _int_at_least(1),
    'LOG.TENSORBOARD': _BOOL,
    'TEST.ATTENTION_MAPS': _BOOL,
    'TEST.BREAKDOWN': _BOOL,
    'TEST.EMBEDDING_MAP': _BOOL,
    'TEST.EMBEDDING_MAP_IDS': ((lambda v: _is_int(v) and 2 <= v <= 200), 'must be an integer in [2, 200]'),
    'OUTPUT_DIR': _NON_EMPTY,
}


def leaf_keys(cfg: CN, prefix: str = '') -> list:
    keys = []
    for name, value in cfg.items():
        key = f'{prefix}{name}'
        keys.extend(leaf_keys(value, key + '.') if isinstance(value, CN) else [key])
    return keys


def validate_config(cfg: CN) -> None:
    for key, (ok, why) in RULES.items():
        _check(cfg, key, ok, why)
    _check_cross_key_rules(cfg)


def _check_cross_key_rules(cfg: CN) -> None:
    terms = (cfg.MODEL.I2T_TEXT_VIEWS, cfg.MODEL.I2T_IMAGE_VIEWS, cfg.MODEL.I2T_LOSS_WEIGHTS)
    if len({len(t) for t in terms}) != 1:
        raise UserError('MODEL.I2T_TEXT_VIEWS, MODEL.I2T_IMAGE_VIEWS and MODEL.I2T_LOSS_WEIGHTS '
                        f'must have the same length (got {", ".join(str(len(t)) for t in terms)})')
    batch, k = cfg.SOLVER.STAGE2.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE
    if batch % k or batch // k < 2:
        _fail('DATALOADER.NUM_INSTANCE', k, f'must divide SOLVER.STAGE2.IMS_PER_BATCH ({batch}) into '
              'at least 2 identities per batch')
    accum = cfg.SOLVER.STAGE2.ACCUM_STEPS
    if batch % accum or (batch // accum) % k or batch // accum // k < 2:
        _fail('SOLVER.STAGE2.ACCUM_STEPS', accum, f'must split SOLVER.STAGE2.IMS_PER_BATCH ({batch}) into sub-batches '
              f'of at least 2 whole identities of DATALOADER.NUM_INSTANCE ({k}) images')
    _check_backbone_options(cfg)
    if list(cfg.INPUT.SIZE_TEST) != list(cfg.INPUT.SIZE_TRAIN):
        _fail('INPUT.SIZE_TEST', list(cfg.INPUT.SIZE_TEST), f'must equal INPUT.SIZE_TRAIN '
              f'({list(cfg.INPUT.SIZE_TRAIN)}): the position grid of the image tower is built for that size')
    if cfg.SOLVER.STAGE1.WARMUP_EPOCHS > cfg.SOLVER.STAGE1.MAX_EPOCHS:
        _fail('SOLVER.STAGE1.WARMUP_EPOCHS', cfg.SOLVER.STAGE1.WARMUP_EPOCHS,
              f'exceeds SOLVER.STAGE1.MAX_EPOCHS ({cfg.SOLVER.STAGE1.MAX_EPOCHS})')
    if cfg.TEST.ATTENTION_MAPS and not cfg.TEST.VISUALIZE:
        _fail('TEST.ATTENTION_MAPS', True, 'draws under the queries of the ranked lists: set TEST.VISUALIZE True too '
              '(tools/attention_maps.py draws them for any images)')
    if cfg.SOLVER.STAGE1.LR_MIN > cfg.SOLVER.STAGE1.BASE_LR:
        _fail('SOLVER.STAGE1.LR_MIN', cfg.SOLVER.STAGE1.LR_MIN, 'exceeds SOLVER.STAGE1.BASE_LR')
    from datasets import FACTORY  # imported here: datasets imports utils, not config
    if cfg.DATASETS.NAMES not in FACTORY:
        _fail('DATASETS.NAMES', cfg.DATASETS.NAMES, f"must be one of {', '.join(sorted(FACTORY))}")
    test_names, test_roots = split_list(cfg.DATASETS.TEST_NAMES), split_list(cfg.DATASETS.TEST_ROOT_DIR)
    for name in test_names:
        if name not in FACTORY:
            _fail('DATASETS.TEST_NAMES', cfg.DATASETS.TEST_NAMES,
                  f"'{name}' is not a dataset; known: {', '.join(sorted(FACTORY))}")
    if len(test_roots) != len(test_names):
        _fail('DATASETS.TEST_ROOT_DIR', cfg.DATASETS.TEST_ROOT_DIR,
              f'needs one folder per DATASETS.TEST_NAMES entry ({len(test_names)}), got {len(test_roots)}')
    _check_eval_mode_is_declared(cfg.TEST.EVAL_MODE, test_names or [cfg.DATASETS.NAMES], FACTORY)
    _check_text_views_fit_the_dataset(cfg, FACTORY[cfg.DATASETS.NAMES])


def _check_text_views_fit_the_dataset(cfg: CN, dataset) -> None:
    """The sky and ground views of the image-to-text terms exist only in datasets whose views are sky
    and ground (not in VeRi-776's viewpoints or VehicleID's single view)."""
    if dataset.sky_ground_views:
        return
    for key in ('MODEL.I2T_TEXT_VIEWS', 'MODEL.I2T_IMAGE_VIEWS'):
        views = _get(cfg, key)
        if any(view != 'all' and weight > 0 for view, weight in zip(views, cfg.MODEL.I2T_LOSS_WEIGHTS)):
            _fail(key, tuple(views), f"dataset '{dataset.name}' has no sky and ground views: use ('all',) with "
                  f"MODEL.I2T_TEXT_VIEWS / MODEL.I2T_IMAGE_VIEWS / MODEL.I2T_LOSS_WEIGHTS of one term each "
                  f"(CLIP-ReID: ('all',) ('all',) (1.0,))")


def _check_backbone_options(cfg: CN) -> None:
    """Options only a ViT has, refused for a ResNet MODEL.NAME (RN50), as CLIP-ReID builds it."""
    from model.clip_loader import image_tower_family  # imported here: model imports utils, not config
    from model.published_format import RESNET_FAMILY
    name = cfg.MODEL.NAME
    if image_tower_family(name) != RESNET_FAMILY:
        return
    for key in ('MODEL.SIE_CAMERA', 'MODEL.SIE_VIEW'):
        if _get(cfg, key):
            _fail(key, True, f"side information (SIE) is added to a ViT's class token; MODEL.NAME '{name}' is a "
                             f"ResNet, which has none (as in CLIP-ReID): pass {key} False")
    if list(cfg.MODEL.STRIDE_SIZE) != [16, 16]:
        _fail('MODEL.STRIDE_SIZE', list(cfg.MODEL.STRIDE_SIZE),
              f"the patch stride of a ViT; MODEL.NAME '{name}' is a ResNet, which has no patches: leave it "
              f"at [16, 16]")


def split_list(value: str) -> list:
    """The entries of a comma-separated config value ('' -> [])."""
    return [entry.strip() for entry in value.split(',')] if value.strip() else []


def _check_eval_mode_is_declared(mode: str, names: list, factory: dict) -> None:
    """A protocol that a test dataset with fixed protocols cannot declare stops the run here; datasets
    whose protocols come from their files (csv) are checked when they are read."""
    from utils.vocabulary import ALL_PROTOCOLS
    if mode == ALL_PROTOCOLS:
        return
    for name in names:
        possible = factory[name].protocol_names
        if possible is not None and mode not in possible:
            _fail('TEST.EVAL_MODE', mode,
                  f"must be one of {', '.join((*possible, ALL_PROTOCOLS))} (the protocols of dataset '{name}')")
