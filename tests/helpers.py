"""Helpers the test files share (fixtures live in conftest.py)."""
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]

# A fast training recipe on the tiny model and tiny images, shared by the processor and CLI tests.
TINY_OPTS = [
    'MODEL.NAME', 'ViT-Tiny-16', 'MODEL.DEVICE', 'cpu', 'MODEL.STRIDE_SIZE', '[12, 12]',
    'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True', 'MODEL.SIE_COE', '0.5',
    'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]', 'INPUT.PADDING', '4',
    'DATALOADER.NUM_WORKERS', '0', 'DATALOADER.NUM_INSTANCE', '4',
    'SOLVER.STAGE1.IMS_PER_BATCH', '16', 'SOLVER.STAGE1.MAX_EPOCHS', '3', 'SOLVER.STAGE1.WARMUP_EPOCHS', '1',
    'SOLVER.STAGE1.BASE_LR', '0.003',
    'SOLVER.STAGE2.IMS_PER_BATCH', '16', 'SOLVER.STAGE2.MAX_EPOCHS', '2', 'SOLVER.STAGE2.WARMUP_EPOCHS', '1',
    'SOLVER.STAGE2.STEPS', '[2]', 'SOLVER.STAGE2.BASE_LR', '0.0005', 'SOLVER.STAGE2.EVAL_PERIOD', '2',
    'SOLVER.STAGE2.CHECKPOINT_PERIOD', '2', 'TEST.IMS_PER_BATCH', '32',
]


def tiny_opts(root: str, output_dir: str, *extra: str) -> list:
    return [*TINY_OPTS, 'DATASETS.NAMES', 'mssl', 'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', output_dir, *extra]


def assert_results_are_the_evaluators(folder, protocols, dataset) -> dict:
    """Each protocol's results_<P>.json in `folder` equals evaluation/rank.evaluate on the features the
    same run saved (TEST.SAVE_FEATURES True), with the dataset's removal rule; returns the records."""
    import json

    import numpy as np

    from evaluation.rank import evaluate
    from utils.vocabulary import METRIC_KEYS, features_file, results_file
    records = {}
    for protocol in protocols:
        record = json.loads((Path(folder) / results_file(protocol)).read_text())
        saved = np.load(Path(folder) / features_file(protocol), allow_pickle=False)
        expected = evaluate(saved['qf'], saved['gf'], saved['q_pids'], saved['g_pids'], saved['q_camids'],
                            saved['g_camids'], saved['q_views'], saved['g_views'], protocol,
                            removal=dataset.removal_rule(protocol))
        assert record['mode'] == protocol and record['num_valid_query'] == expected['num_valid_query'] > 0
        assert (record['num_query'], record['num_gallery']) == (expected['num_query'], expected['num_gallery'])
        for key in METRIC_KEYS:
            assert record[key] == pytest.approx(expected[key], abs=1e-6), (protocol, key)
        assert record['cmc'] == pytest.approx(list(expected['cmc']), abs=1e-6)
        records[protocol] = record
    return records


def run_script(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    """Run one of the project's scripts in a fresh Python process, from the repository root."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def fails(main, argv, capsys) -> str:
    """Run a CLI main in-process; assert exit code 2 and exactly one `error:` line; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'Traceback' not in err
    return lines[0]


class HostSyncs(TorchDispatchMode):
    """Records the operations that make the host wait for a GPU: reading a value (`.item()`, `bool()`,
    `float()`), and those whose output size depends on values (`nonzero`, boolean-mask indexing). On a CPU
    nothing waits, but the same operations run, so a CPU test can show there are none.

        with HostSyncs() as syncs:
            ...
        assert syncs.found == []
    """
    READS = {'_local_scalar_dense', 'is_nonzero', 'nonzero', 'masked_select', 'equal', 'unique', '_unique2',
             'unique_dim', 'unique_consecutive'}
    INDEXING = {'index', 'index_put', 'index_put_', '_index_put_impl_'}

    def __init__(self):
        super().__init__()
        self.found = []
        self.recording = True

    def ignore_optimizer_steps(self, optimizer) -> None:
        """Leave `optimizer.step` out: Adam's step counters stay on the host (torch keeps them on the CPU
        unless `capturable`), so reading them does not wait for a GPU."""
        step = optimizer.step

        def unrecorded_step(*args, **kwargs):
            self.recording = False
            try:
                return step(*args, **kwargs)
            finally:
                self.recording = True

        optimizer.step = unrecorded_step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if self.recording and name in self.READS or (name in self.INDEXING and any(
                isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8) for index in args[1])):
            where = [frame for frame in traceback.extract_stack() if str(ROOT) in frame.filename
                     and '/tests/' not in frame.filename]
            self.found.append(f"{name} at {where[-1].filename[len(str(ROOT)) + 1:]}:{where[-1].lineno}"
                              if where else name)
        return func(*args, **(kwargs or {}))
