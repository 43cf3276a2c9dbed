"""What train_clipreid.py and test_clipreid.py share: arguments, config, output folder, logger, device."""
import argparse
import json
import os
import sys
import tempfile
import time

from config import load_config
from datasets.image_check import skip_unreadable_images
from processor.test_sets import build_test_sets, open_dataset
from reporting import tensorboard
from reporting.manifest import FAILED, FINISHED, RunManifest
from utils import distributed
from utils.device import autocast_dtype, resolve_device, seed_everything, set_deterministic
from utils.errors import UserError
from utils.logger import FILE_ONLY, setup_logger
from utils.run_lock import hold_training_lock


def parse_args(description: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--config_file', default='', help='YAML config file (keys: config/defaults.py)')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides, e.g. TEST.EVAL_MODE S2G')
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def prepare_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UserError(f"OUTPUT_DIR '{path}' cannot be created: {err.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"OUTPUT_DIR '{path}' is not writable")
    try:  # os.access says yes to root on a read-only file system
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise UserError(f"OUTPUT_DIR '{path}' is not writable: {err.strerror}") from None


class Run:
    """A configured run: cfg, logger, device, autocast dtype, training dataset and test sets, and the
    run's manifest (reporting/manifest.py) and TensorBoard events (LOG.TENSORBOARD)."""

    def __init__(self, argv, description: str, log_file: str, logger_name: str, training: bool = False):
        """`training`: a training run, which holds OUTPUT_DIR's training lock (rank 0). `close()` / the end
        of a `with` releases it, closes the TensorBoard events and marks the manifest finished (failed
        when an exception ends the run)."""
        started = time.monotonic()
        self.lock = self.manifest = None
        self.tensorboard_dir = ''
        args = parse_args(description, argv)
        self.cfg = cfg = load_config(args.config_file, args.opts)
        main_process = distributed.is_main()  # under torchrun only rank 0 writes files and logs
        if main_process:
            prepare_output_dir(cfg.OUTPUT_DIR)
        self.logger = distributed.quiet_unless_main(
            setup_logger(logger_name, cfg.OUTPUT_DIR if main_process else '', log_file))
        if training and main_process:
            self.lock = hold_training_lock(cfg.OUTPUT_DIR, self.logger)
        try:
            self._prepare(args)
            self._start_records(args, 'train' if training else 'test', started)
        except BaseException:
            self.close(failed=True)
            raise

    def _prepare(self, args) -> None:
        cfg = self.cfg
        self.logger.info(f"config file: {args.config_file or '(defaults)'}; overrides: {' '.join(args.opts) or '(none)'}; "
                         f"output folder: {cfg.OUTPUT_DIR}")
        self.logger.info('running with config:\n' + cfg.dump(), extra=FILE_ONLY)
        set_deterministic(cfg.SOLVER.DETERMINISTIC)  # before any CUDA work: cuBLAS reads its setting once
        seed_everything(cfg.SOLVER.SEED)
        self.device = distributed.setup(resolve_device(cfg.MODEL.DEVICE))
        self.amp_dtype = autocast_dtype(cfg.SOLVER.AMP, self.device)
        self.test_amp_dtype = autocast_dtype(cfg.TEST.AMP, self.device)
        self.logger.info(f"device: {self.device}; mixed precision: training {self.amp_dtype or 'off'}, "
                         f"test features {self.test_amp_dtype or 'off (fp32)'}; "
                         f"{distributed.describe()}")
        self.dataset = open_dataset(cfg, cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)
        if cfg.DATALOADER.SKIP_BAD_IMAGES:
            skip_unreadable_images(self.dataset, cfg.DATALOADER.NUM_WORKERS, self.logger)
        data = self.dataset
        self.logger.info(f"dataset '{cfg.DATASETS.NAMES}' at {cfg.DATASETS.ROOT_DIR}: train {data.num_train_pids} "
                         f"identities / {len(data.train)} images, query {len(data.query)}, gallery {len(data.gallery)}")
        self.logger.info(data.statistics_table(), extra=FILE_ONLY)
        self.test_sets = build_test_sets(cfg, self.dataset, self.logger)

    def _start_records(self, args, kind: str, started: float) -> None:
        cfg = self.cfg
        datasets = {'train': (cfg.DATASETS.NAMES, self.dataset)}
        datasets.update({f'test_{test_set.label}': (test_set.name, test_set.dataset)
                         for test_set in self.test_sets if test_set.label})
        self.manifest = RunManifest(cfg.OUTPUT_DIR, json.loads(json.dumps(cfg)),  # CfgNode -> plain dicts and lists
                                    cfg.SOLVER.SEED, cfg.SOLVER.DETERMINISTIC, kind, self.device, datasets,
                                    args.argv, started=started)
        if cfg.LOG.TENSORBOARD and distributed.is_main():
            tensorboard.open_writer(cfg.OUTPUT_DIR)
            self.tensorboard_dir = tensorboard.tensorboard_dir(cfg.OUTPUT_DIR)
            self.logger.info(f"TensorBoard events: {self.tensorboard_dir} (tensorboard --logdir {cfg.OUTPUT_DIR})")

    def close(self, failed: bool = False) -> None:
        if self.manifest is not None:
            self.manifest.finish(FAILED if failed else FINISHED)
            self.manifest = None
        if self.tensorboard_dir:
            tensorboard.close_writer(self.cfg.OUTPUT_DIR)
            self.tensorboard_dir = ''
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(failed=exc_type is not None)
