import re
from pathlib import Path

import pytest

from config import load_config
from config.defaults import get_defaults
from config.validate import RULES, leaf_keys
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SEED_OVERRIDES = ['MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_COE', '0.5', 'MODEL.SIE_VIEW', 'True',
                  'MODEL.STRIDE_SIZE', '[12, 12]']


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.MODEL.NAME == 'ViT-B-16'


def test_every_key_has_a_validation_rule():
    assert set(leaf_keys(get_defaults())) == set(RULES)


def test_every_key_is_read_outside_the_config_package():
    sources = ''.join(p.read_text() for p in ROOT.rglob('*.py')
                      if 'config' not in p.parts and 'tests' not in p.parts)
    # read as an attribute (cfg.MODEL.SIE_COE) or looked up by its quoted name (utils/vocabulary.py)
    unread = [key for key in leaf_keys(get_defaults())
              if not re.search(rf"\.{key.split('.')[-1]}\b|'{key.split('.')[-1]}'", sources)]
    assert unread == []


def test_published_recipe_with_the_seed_overrides():
    cfg = load_config(str(ROOT / 'configs/person/vit_clipreid.yml'), SEED_OVERRIDES)
    assert cfg.MODEL.STRIDE_SIZE == [12, 12]
    assert cfg.MODEL.SIE_CAMERA and cfg.MODEL.SIE_VIEW and cfg.MODEL.SIE_COE == 0.5
    assert cfg.SOLVER.STAGE1.MAX_EPOCHS == 120 and cfg.SOLVER.STAGE1.BASE_LR == 3.5e-4
    assert cfg.SOLVER.STAGE2.MAX_EPOCHS == 60 and list(cfg.SOLVER.STAGE2.STEPS) == [30, 50]
    assert cfg.SOLVER.STAGE2.IMS_PER_BATCH == 64 and cfg.DATALOADER.NUM_INSTANCE == 4
    assert tuple(cfg.MODEL.I2T_LOSS_WEIGHTS) == (1.0, 0.1, 0.0)


def test_seed_yaml_snippet_pasted_as_written(tmp_path):
    recipe = (ROOT / 'configs/person/vit_clipreid.yml').read_text()
    body = recipe[:recipe.index('DATASETS:')]
    snippet = ("DATASETS:\n  NAMES: ('mssl')\n  ROOT_DIR: ('your_mssl_dataset_dir')\n"
               "OUTPUT_DIR: 'your_output_dir'\n")
    path = tmp_path / 'pasted.yml'
    path.write_text(body + snippet)
    cfg = load_config(str(path))
    assert cfg.DATASETS.NAMES == 'mssl'
    assert cfg.DATASETS.ROOT_DIR == 'your_mssl_dataset_dir'
    assert cfg.OUTPUT_DIR == 'your_output_dir'


@pytest.mark.parametrize('overrides, named', [
    (['MODEL.NOT_A_KEY', '1'], 'MODEL.NOT_A_KEY'),
    (['SOLVER.SEED', 'abc'], 'SOLVER.SEED'),
    (['TEST.EVAL_MODE', 'S2S'], 'TEST.EVAL_MODE'),
    (['MODEL.STRIDE_SIZE', '[12]'], 'MODEL.STRIDE_SIZE'),
    (['DATALOADER.NUM_INSTANCE', '5'], 'DATALOADER.NUM_INSTANCE'),
    (['MODEL.I2T_LOSS_WEIGHTS', '(1.0, 0.1)'], 'MODEL.I2T_LOSS_WEIGHTS'),
    (['MODEL.I2T_TEXT_VIEWS', "('air', 'sky', 'all')"], 'MODEL.I2T_TEXT_VIEWS'),
    (['INPUT.RE_PROB', '1.5'], 'INPUT.RE_PROB'),
    (['SOLVER.STAGE2.STEPS', '[50, 30]'], 'SOLVER.STAGE2.STEPS'),
    (['DATASETS.NAMES', 'cuhk03'], 'DATASETS.NAMES'),
    (['MODEL.PROMPT_TEMPLATE_SKY', 'A sky photo of a person.'], 'MODEL.PROMPT_TEMPLATE_SKY'),
    (['MODEL.DEVICE', 'gpu'], 'MODEL.DEVICE'),
    (['OUTPUT_DIR'], 'OUTPUT_DIR'),
    (['TEST.BREAKDOWN', '1'], 'TEST.BREAKDOWN'),
    (['TEST.EMBEDDING_MAP_IDS', '1'], 'TEST.EMBEDDING_MAP_IDS'),
    (['TEST.EMBEDDING_MAP', "'yes'"], 'TEST.EMBEDDING_MAP'),
    (['TEST.ATTENTION_MAPS', 'True'], 'TEST.ATTENTION_MAPS'),  # needs TEST.VISUALIZE True
])
def test_bad_values_name_their_key(overrides, named):
    with pytest.raises(UserError, match=re.escape(named)):
        load_config('', overrides)


@pytest.mark.parametrize('overrides, named', [
    (['MODEL.SIE_CAMERA', 'True'], 'MODEL.SIE_CAMERA'),
    (['MODEL.SIE_VIEW', 'True'], 'MODEL.SIE_VIEW'),
    (['MODEL.STRIDE_SIZE', '[12, 12]'], 'MODEL.STRIDE_SIZE'),
])
def test_vit_only_options_are_refused_for_a_resnet(overrides, named):
    with pytest.raises(UserError) as err:
        load_config('', ['MODEL.NAME', 'RN50', *overrides])
    assert str(err.value).startswith(named) and "MODEL.NAME 'RN50' is a ResNet" in str(err.value)
    load_config('', ['MODEL.NAME', 'ViT-B-16', *overrides])  # a ViT takes them


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        load_config(str(tmp_path / 'nope.yml'))
    bad = tmp_path / 'bad.yml'
    bad.write_text('MODEL:\n  NAME: [unclosed\n')
    with pytest.raises(UserError, match='not valid YAML'):
        load_config(str(bad))
    unknown = tmp_path / 'unknown.yml'
    unknown.write_text('MODEL:\n  COS_LAYER: True\n')
    with pytest.raises(UserError, match='unknown config key MODEL.COS_LAYER'):
        load_config(str(unknown))


def test_every_yaml_in_configs_loads():
    for path in sorted((ROOT / 'configs').rglob('*.yml')):
        load_config(str(path))


CLIPREID_CONFIGS = ['person/cnn_base', 'person/vit_base', 'person/cnn_clipreid', 'veri/cnn_base', 'veri/vit_base',
                    'veri/cnn_prom', 'veri/vit_prom', 'VehicleID/cnn_base', 'VehicleID/vit_base',
                    'VehicleID/cnn_clipreid', 'VehicleID/vit_clipreid']


@pytest.mark.parametrize('name', CLIPREID_CONFIGS)
def test_clipreid_configs_learn_prompts_unless_they_are_baselines(name):
    from processor.stage1 import text_views_to_learn
    cfg = load_config(str(ROOT / 'configs' / f'{name}.yml'))
    assert text_views_to_learn(cfg) == ([] if name.endswith('base') else ['all'])
    assert cfg.MODEL.NAME == ('RN50' if '/cnn_' in name else 'ViT-B-16')
    vehicle = not name.startswith('person')
    assert cfg.MODEL.PROMPT_TEMPLATE == f"A photo of a X X X X {'vehicle' if vehicle else 'person'}."
    assert list(cfg.INPUT.SIZE_TRAIN) == ([256, 256] if vehicle else [256, 128])


# CLIP-ReID's configs/person/vit_clipreid.yml in this project's keys (docs/fidelity.md maps them), for
# the keys where its value is not also the MSP recipe's.
CLIPREID_VIT_CLIPREID = {
    'MODEL.I2T_TEXT_VIEWS': ('all',), 'MODEL.I2T_IMAGE_VIEWS': ('all',), 'MODEL.I2T_LOSS_WEIGHTS': (1.0,),
    'SOLVER.STAGE2.BASE_LR': 0.000005, 'SOLVER.STAGE2.EVAL_PERIOD': 60, 'DATASETS.NAMES': 'market1501',
}
# ... and where they are the same.
SHARED_WITH_THE_MSP_RECIPE = {
    'MODEL.NAME': 'ViT-B-16', 'MODEL.STRIDE_SIZE': [16, 16], 'MODEL.ID_LOSS_WEIGHT': 0.25,
    'MODEL.TRIPLET_LOSS_WEIGHT': 1.0, 'MODEL.IF_LABELSMOOTH': 'on', 'INPUT.SIZE_TRAIN': [256, 128],
    'INPUT.PIXEL_MEAN': [0.5, 0.5, 0.5], 'SOLVER.STAGE1.IMS_PER_BATCH': 64, 'SOLVER.STAGE1.BASE_LR': 0.00035,
    'SOLVER.STAGE1.WARMUP_LR_INIT': 0.00001, 'SOLVER.STAGE1.LR_MIN': 0.000001, 'SOLVER.STAGE1.WARMUP_EPOCHS': 5,
    'SOLVER.STAGE1.WEIGHT_DECAY': 0.0001, 'SOLVER.STAGE1.MAX_EPOCHS': 120, 'SOLVER.STAGE2.IMS_PER_BATCH': 64,
    'SOLVER.STAGE2.WARMUP_EPOCHS': 10, 'SOLVER.STAGE2.WARMUP_FACTOR': 0.1, 'SOLVER.STAGE2.WEIGHT_DECAY': 0.0001,
    'SOLVER.STAGE2.WEIGHT_DECAY_BIAS': 0.0001, 'SOLVER.STAGE2.BIAS_LR_FACTOR': 2.0, 'SOLVER.STAGE2.MAX_EPOCHS': 60,
    'SOLVER.STAGE2.STEPS': [30, 50], 'SOLVER.STAGE2.CHECKPOINT_PERIOD': 60, 'TEST.NECK_FEAT': 'before',
    'MODEL.PROMPT_TEMPLATE': 'A photo of a X X X X person.',
}
# The overrides docs/fidelity.md gives for CLIP-ReID's Market-1501 recipe from the MSP recipe.
CLIPREID_MARKET_OVERRIDES = ['MODEL.I2T_TEXT_VIEWS', "('all',)", 'MODEL.I2T_IMAGE_VIEWS', "('all',)",
                             'MODEL.I2T_LOSS_WEIGHTS', '(1.0,)', 'SOLVER.STAGE2.BASE_LR', '0.000005',
                             'SOLVER.STAGE2.EVAL_PERIOD', '60', 'DATASETS.NAMES', 'market1501']


def _value(cfg, key):
    node = cfg
    for part in key.split('.'):
        node = node[part]
    return tuple(node) if isinstance(node, tuple) else list(node) if isinstance(node, list) else node


def test_the_msp_recipe_with_the_documented_overrides_is_clipreids_market_recipe():
    recipe = str(ROOT / 'configs/person/vit_clipreid.yml')
    msp, clip_reid = load_config(recipe), load_config(recipe, CLIPREID_MARKET_OVERRIDES)
    for key, value in CLIPREID_VIT_CLIPREID.items():
        assert _value(clip_reid, key) == value, key
        assert _value(msp, key) != value, key  # each override changes something
    for key, value in SHARED_WITH_THE_MSP_RECIPE.items():
        assert _value(msp, key) == _value(clip_reid, key) == value, key
