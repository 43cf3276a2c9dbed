"""Configuration: YACS defaults (`config/defaults.py`) + a YAML file + `KEY VALUE` overrides."""
import os

import yaml
from yacs.config import CfgNode as CN

from config.defaults import get_defaults
from config.validate import split_list, validate_config
from utils.errors import UserError

__all__ = ['load_config', 'get_defaults', 'validate_config']


def _merge_yaml(cfg: CN, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise UserError(f"--config_file '{config_file}' does not exist")
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as err:
        where = getattr(err, 'problem_mark', None)
        line = f" (line {where.line + 1})" if where is not None else ''
        raise UserError(f"--config_file '{config_file}' is not valid YAML{line}") from None
    except (KeyError, ValueError, AssertionError, TypeError) as err:
        raise UserError(f"--config_file '{config_file}': {_yacs_message(err)}") from None


def _merge_opts(cfg: CN, opts: list) -> None:
    if len(opts) % 2:
        raise UserError(f"command-line overrides must be KEY VALUE pairs; '{opts[-1]}' has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError, TypeError) as err:
            raise UserError(f"override {key} {value}: {_yacs_message(err)}") from None


def _yacs_message(err: Exception) -> str:
    text = str(err.args[0]) if err.args else str(err)
    if text.startswith('Non-existent'):
        return f"unknown config key {text.split(':', 1)[1].strip()} (see config/defaults.py)"
    if 'Type mismatch' in text:
        return text.replace('Type mismatch', 'wrong type', 1)
    return text


def resolve_dataset_choices(cfg: CN) -> None:
    """CLIP-ReID's dataset names (`dukemtmc`, `VehicleID`) become this project's, and an empty
    MODEL.PROMPT_TEMPLATE the training dataset's own template. Unknown names are left for validation."""
    from datasets import ALIASES, FACTORY  # imported here: datasets imports utils, not config
    cfg.DATASETS.NAMES = ALIASES.get(cfg.DATASETS.NAMES, cfg.DATASETS.NAMES)
    test_names = split_list(cfg.DATASETS.TEST_NAMES)
    if any(name in ALIASES for name in test_names):
        cfg.DATASETS.TEST_NAMES = ','.join(ALIASES.get(name, name) for name in test_names)
    if not cfg.MODEL.PROMPT_TEMPLATE and cfg.DATASETS.NAMES in FACTORY:
        cfg.MODEL.PROMPT_TEMPLATE = FACTORY[cfg.DATASETS.NAMES].prompt_template


def load_config(config_file: str = '', opts: list | None = None) -> CN:
    """Defaults, then the YAML file, then the overrides; dataset choices resolved; validated and frozen."""
    cfg = get_defaults()
    if config_file:
        _merge_yaml(cfg, config_file)
    _merge_opts(cfg, list(opts or []))
    resolve_dataset_choices(cfg)
    validate_config(cfg)
    cfg.freeze()
    return cfg
