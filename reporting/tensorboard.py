"""OUTPUT_DIR/tensorboard/: the metrics.jsonl records as TensorBoard scalars (LOG.TENSORBOARD True).

`reporting.metrics_log` hands every record it appends to metrics.jsonl to `add_record`, so TensorBoard
shows the numbers of metrics.jsonl and nothing else. Tags, and the step each is plotted at:
  stage1/<view>/loss, lr                           epoch of the view's prompt learning
  stage1_iter/<view>/loss                          iteration ((epoch - 1) * iters + iter)
  stage2/loss, acc, lr, loss_<part>, time_s        epoch
  stage2_iter/loss, acc, lr, loss_<part>           iteration
  eval/<protocol>/mAP, rank1, rank5, rank10, mINP  epoch (0 in a test run); '<dataset>/<protocol>'
                                                   for the datasets of DATASETS.TEST_NAMES
A resumed run appends a new event file to the folder, so the points of an epoch that was cut off and
trained again are there twice (TensorBoard keeps both; one purge step cannot serve tags whose steps are
epochs and iterations at once).
"""
from __future__ import annotations

import os

from utils.errors import UserError
from utils.vocabulary import TENSORBOARD_DIR

# Fields that say where a record belongs rather than what was measured.
_NOT_PLOTTED = {'event', 'time', 'view', 'epoch', 'epochs', 'iter', 'iters', 'mode', 'weight', 'eta_s',
                'num_query', 'num_valid_query', 'num_gallery'}

_writers = {}  # real path of OUTPUT_DIR -> its SummaryWriter, None until its first record


def tensorboard_dir(output_dir: str) -> str:
    return os.path.join(output_dir, TENSORBOARD_DIR)


def _iteration(record: dict) -> int:
    return (record['epoch'] - 1) * record['iters'] + record['iter']


def tag_prefix_and_step(record: dict) -> tuple[str, int] | None:
    """Where a record's scalars go: (tag prefix, step); None for an event that is not plotted."""
    event = record.get('event')
    if event == 'stage1_epoch':
        return f"stage1/{record['view']}", record['epoch']
    if event == 'stage1_iter':
        return f"stage1_iter/{record['view']}", _iteration(record)
    if event == 'stage2_epoch':
        return 'stage2', record['epoch']
    if event == 'stage2_iter':
        return 'stage2_iter', _iteration(record)
    if event == 'eval':
        return f"eval/{record['mode']}", record.get('epoch') or 0
    return None


def scalars(record: dict) -> list[tuple[str, float, int]]:
    """(tag, value, step) of every number a metrics.jsonl record holds (missing or non-finite: none)."""
    where = tag_prefix_and_step(record)
    if where is None:
        return []
    prefix, step = where
    return [(f'{prefix}/{key}', float(value), step) for key, value in record.items()
            if key not in _NOT_PLOTTED and isinstance(value, (int, float)) and not isinstance(value, bool)]


def open_writer(output_dir: str) -> None:
    """Write OUTPUT_DIR's records to OUTPUT_DIR/tensorboard/ from now on (until `close_writer`); the event
    file is made with the first record, so a run that stops before reporting anything leaves none."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (checked here, so that a missing package stops the run at once)
    except ImportError:
        raise UserError('LOG.TENSORBOARD True needs the tensorboard package (pip install tensorboard); or set '
                        'LOG.TENSORBOARD False') from None
    _writers.setdefault(os.path.realpath(output_dir), None)


def close_writer(output_dir: str) -> None:
    writer = _writers.pop(os.path.realpath(output_dir), None)
    if writer is not None:
        writer.close()


def add_record(output_dir: str, record: dict) -> None:
    """Write a record's scalars when OUTPUT_DIR has an open writer; flushed at once, so that a run that
    stops loses nothing and TensorBoard shows each point as it comes."""
    key = os.path.realpath(output_dir)
    if key not in _writers:
        return
    writer = _writers[key]
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter
        writer = _writers[key] = SummaryWriter(log_dir=tensorboard_dir(output_dir))
    for tag, value, step in scalars(record):
        writer.add_scalar(tag, value, global_step=step, walltime=record.get('time'))
    writer.flush()
