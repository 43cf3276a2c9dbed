"""The datasets a run evaluates on: the training dataset, or those of DATASETS.TEST_NAMES (cross-dataset).

Each test dataset is evaluated with its own protocols (TEST.EVAL_MODE: one it declares, or ALL) and
reported in its own folder: OUTPUT_DIR itself for the training dataset, OUTPUT_DIR/test_<name>/ for a
dataset of DATASETS.TEST_NAMES (results_<PROTOCOL>.json, results.md, cmc.png). Metrics are keyed by
protocol, or by '<name>/<protocol>' for DATASETS.TEST_NAMES.

Camera ids only name the same camera within one dataset. The images of a dataset other than the training
one therefore reach the model with an unknown camera (processor/inference.UNSEEN_CAMERA), for which the
SIE table adds nothing (model/image_encoder.py): with MODEL.SIE_CAMERA on, those images get no side
information at all (also no view term when SIE_VIEW is on too, as the table is per camera and view).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from config.validate import split_list
from datasets import init_dataset
from datasets.bases import DatasetOptions, ReIDDataset
from datasets.image_check import skip_unreadable_images
from processor.settings import report_settings
from processor.inference import (eval_modes, evaluate_model, format_summary, query_attention, summarize_protocols,
                                 write_results)
from utils import distributed
from utils.run_lock import results_lock
from reporting.visualize import write_reports


def results_folder(output_dir: str, label: str) -> str:
    """Where the results of the test dataset `label` go ('' = the training dataset's: OUTPUT_DIR)."""
    return os.path.join(output_dir, f'test_{label}') if label else output_dir


def results_key(label: str, protocol: str) -> str:
    """The name a protocol's metrics go by: '<label>/<protocol>', or the protocol for the training dataset."""
    return f'{label}/{protocol}' if label else protocol


@dataclass
class TestSet:
    name: str                  # DATASETS.NAMES value of the dataset
    root: str
    dataset: ReIDDataset
    label: str                 # '' for the training dataset; else the folder / metric prefix
    seen_cameras: bool         # its camera ids are those the model was trained with

    def output_dir(self, output_dir: str) -> str:
        return results_folder(output_dir, self.label)

    def key(self, protocol: str) -> str:
        return results_key(self.label, protocol)

    def config(self, cfg):
        """`cfg` with this test set's dataset and output folder (for the report writers)."""
        if not self.label:
            return cfg
        cfg = cfg.clone()
        cfg.defrost()
        cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR = self.name, self.root
        cfg.OUTPUT_DIR = self.output_dir(cfg.OUTPUT_DIR)
        cfg.freeze()
        return cfg


def dataset_options(cfg) -> DatasetOptions:
    """The config values datasets take besides their folder."""
    return DatasetOptions(vehicleid_test_size=cfg.DATASETS.VEHICLEID_TEST_SIZE,
                          vehicleid_trials=cfg.TEST.VEHICLEID_TRIALS, seed=cfg.SOLVER.SEED)


def open_dataset(cfg, name: str, root: str) -> ReIDDataset:
    return init_dataset(name, root, dataset_options(cfg))


def labelled_test_datasets(cfg) -> list[tuple[str, str, str]]:
    """(name, root, label) of each dataset of DATASETS.TEST_NAMES: the label is the name, or
    '<name>_<position>' for a name that comes again."""
    names, roots = split_list(cfg.DATASETS.TEST_NAMES), split_list(cfg.DATASETS.TEST_ROOT_DIR)
    labelled, labels = [], set()
    for number, (name, root) in enumerate(zip(names, roots), start=1):
        label = name if name not in labels else f'{name}_{number}'
        labels.add(label)
        labelled.append((name, root, label))
    return labelled


def build_test_sets(cfg, train_dataset: ReIDDataset, logger) -> list[TestSet]:
    """The training dataset when DATASETS.TEST_NAMES is empty, else each dataset it names, read, checked
    against TEST.EVAL_MODE and described in the log."""
    labelled = labelled_test_datasets(cfg)
    if not labelled:
        return [TestSet(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, train_dataset, '', True)]
    test_sets = []
    for name, root, label in labelled:
        same = name == cfg.DATASETS.NAMES and os.path.realpath(root) == os.path.realpath(cfg.DATASETS.ROOT_DIR)
        dataset = train_dataset if same else open_dataset(cfg, name, root)
        if not same and cfg.DATALOADER.SKIP_BAD_IMAGES:
            skip_unreadable_images(dataset, cfg.DATALOADER.NUM_WORKERS, logger)
        eval_modes(cfg, dataset)  # an undeclared TEST.EVAL_MODE stops the run before any training
        logger.info(f"test dataset '{name}' at {root} (reported as {label}):\n" + dataset.statistics_table())
        if not same and cfg.MODEL.SIE_CAMERA:
            logger.info(f"test dataset '{label}': its cameras are not the training cameras of "
                        f"'{cfg.DATASETS.NAMES}'; its images get no camera side information (SIE)")
        test_sets.append(TestSet(name, root, dataset, label, same))
    return test_sets


def evaluate_test_sets(cfg, model, test_sets: list[TestSet], device, logger, amp_dtype=None,
                       save_features: bool = False, details: dict | None = None) -> dict:
    """Evaluate on every test set, write each one's results and reports; return {key: metrics}."""
    metrics = {}
    for test_set in test_sets:
        set_cfg = test_set.config(cfg)
        if test_set.label:
            logger.info(f"evaluating on test dataset {test_set.label} ({test_set.name} at {test_set.root})")
            if distributed.is_main():
                os.makedirs(set_cfg.OUTPUT_DIR, exist_ok=True)
        outcome = evaluate_model(set_cfg, model, test_set.dataset, device, logger, amp_dtype,
                                 unseen_cameras=not test_set.seen_cameras)
        summaries = summarize_protocols(outcome, test_set.dataset.summaries)
        for summary in summaries.values():
            logger.info(format_summary(summary))
        # Results are written one set at a time: another run writing into this folder waits its turn.
        with results_lock(set_cfg.OUTPUT_DIR):
            for path in write_results(set_cfg.OUTPUT_DIR, outcome, save_features=save_features, summaries=summaries):
                logger.info(f"wrote {path}")
            attention = (query_attention(set_cfg, model, device, unseen_cameras=not test_set.seen_cameras)
                         if cfg.TEST.ATTENTION_MAPS else None)
            write_reports(report_settings(set_cfg), outcome, logger, details, summaries, attention)
        # A summary stands for its members in the returned metrics (and so in metrics.jsonl and the curves).
        summarized = {member for summary in summaries.values() for member in summary['members']}
        metrics.update({test_set.key(mode): result['metrics'] for mode, result in outcome.items()
                        if mode not in summarized})
        metrics.update({test_set.key(name): summary for name, summary in summaries.items()})
    return metrics
