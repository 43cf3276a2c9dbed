"""OUTPUT_DIR/metrics.jsonl: one JSON object per logged step, epoch and evaluation.

Every record has 'event' and 'time' (Unix seconds). Events written by the framework:
  stage1_iter   view, epoch, iter, iters, loss
  stage1_epoch  view, epoch, epochs, loss, lr
  stage2_iter   epoch, iter, iters, loss, acc, lr, loss_<part>
  stage2_epoch  epoch, epochs, loss, acc, lr, loss_<part>, time_s, eta_s
  eval          mode, mAP, rank1, rank5, rank10, mINP, num_query, num_valid_query, num_gallery
                (+ epoch during training, weight in a test run)
Lines are appended and flushed one at a time, so a crash loses at most the line being written, and
a resumed or repeated run in the same folder continues the file (readers keep the latest run of
each epoch: see `training_history`). Only the main process writes. Every record appended also goes
to TensorBoard when the run opened a writer for the folder (LOG.TENSORBOARD, reporting/tensorboard.py).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import time

import numpy as np
import torch

from reporting import tensorboard
from utils import distributed
from utils.errors import UserError
from utils.vocabulary import METRIC_KEYS, METRICS_JSONL

FILE_NAME = METRICS_JSONL
EVAL_KEYS = (*METRIC_KEYS, 'num_query', 'num_valid_query', 'num_gallery')


def metrics_path(output_dir: str) -> str:
    return os.path.join(output_dir, FILE_NAME)


def _plain(value):
    """A JSON-ready value: numpy/torch scalars become numbers, non-finite floats become null."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def append_record(output_dir: str, event: str, **fields) -> dict | None:
    """Append one record to OUTPUT_DIR/metrics.jsonl, and to its TensorBoard events when they are
    open; returns it (None, writing nothing, on a non-main process or when the folder does not exist,
    e.g. a processor called outside the CLI)."""
    if not output_dir or not os.path.isdir(output_dir) or not distributed.is_main():
        return None
    record = {'event': event, 'time': round(time.time(), 3), **_plain(fields)}
    with open(metrics_path(output_dir), 'a', encoding='utf-8') as handle:
        handle.write(json.dumps(record, allow_nan=False) + '\n')
        handle.flush()
    tensorboard.add_record(output_dir, record)
    return record


# Already named by the message of a reported line, so not repeated in it.
_IN_MESSAGE = ('epoch', 'epochs', 'iter', 'iters', 'view')


def _shown(key: str, value) -> str:
    if key == 'lr':
        return f'{value:.2e}'
    if key == 'eta_s':
        return str(datetime.timedelta(seconds=round(value)))
    if key.endswith('_s'):
        return f'{value:.1f} s'
    if isinstance(value, float):
        return f'{value:.4f}'
    return str(value)


def report(logger, output_dir: str, event: str, message: str, bar=None, **fields) -> None:
    """The one way a training number is reported: a log line (`message: key value, ...`), a
    metrics.jsonl record of `event` with every field (and its TensorBoard scalars), and the progress
    bar's postfix."""
    shown = {key: _shown(key, value) for key, value in fields.items()
             if key not in _IN_MESSAGE and value is not None}
    logger.info(f"{message}: " + ', '.join(f'{key} {value}' for key, value in shown.items()))
    append_record(output_dir, event, **fields)
    if bar is not None:
        bar.set_postfix(shown, refresh=False)


def log_evaluation(output_dir: str, metrics_by_mode: dict, **context) -> None:
    """One 'eval' record per mode with the scalar metrics and `context` (epoch, weight, ...)."""
    for mode, metrics in metrics_by_mode.items():
        append_record(output_dir, 'eval', mode=mode, **context, **{key: metrics[key] for key in EVAL_KEYS})


def read_records(path: str) -> list[dict]:
    """Every record of a metrics.jsonl; a cut-off last line (a crash mid-write) is ignored."""
    if not os.path.isfile(path):
        raise UserError(f"metrics file '{path}' does not exist")
    with open(path, encoding='utf-8') as handle:
        lines = handle.read().split('\n')
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the file ends without a newline: a cut-off write
                break
            raise UserError(f"metrics file '{path}' line {number} is not valid JSON") from None
        if not isinstance(record, dict) or 'event' not in record:
            raise UserError(f"metrics file '{path}' line {number} is not a metrics record")
        records.append(record)
    return records


def _latest_run(records: list[dict], key) -> list[dict]:
    """Records in order, where a record whose key does not increase replaces every kept record
    from that key on (a resumed or restarted run overwrites what it repeats)."""
    kept = []
    for record in records:
        k = key(record)
        while kept and key(kept[-1]) >= k:
            kept.pop()
        kept.append(record)
    return kept


def training_history(records: list[dict]) -> dict:
    """Per-epoch training series of the latest run: {'stage1': {view: [records]},
    'stage2': [stage2_epoch records], 'eval': {mode: [eval records with an epoch]}}."""
    stage1, evals = {}, {}
    for record in records:
        if record['event'] == 'stage1_epoch':
            stage1.setdefault(record['view'], []).append(record)
        elif record['event'] == 'eval' and record.get('epoch') is not None:
            evals.setdefault(record['mode'], []).append(record)
    stage2 = [r for r in records if r['event'] == 'stage2_epoch']
    by_epoch = lambda r: r['epoch']  # noqa: E731
    return {'stage1': {view: _latest_run(rs, by_epoch) for view, rs in stage1.items()},
            'stage2': _latest_run(stage2, by_epoch),
            'eval': {mode: _latest_run(rs, by_epoch) for mode, rs in evals.items()}}
