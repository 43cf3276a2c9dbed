"""benchmarks/gpu_check.sh: the no-GPU stop, the CPU quick run of every part, and the published baseline of
benchmarks/bench_eval.py."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_check.sh'), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    done = _run('--out', str(tmp_path / 'out'))
    assert done.returncode == 2
    assert done.stderr.startswith('error: no CUDA GPU') and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow  # starts the script in subprocesses
def test_cpu_without_quick_and_unknown_parts_are_refused(tmp_path):
    assert _run('--device', 'cpu', '--out', str(tmp_path)).stderr.startswith('error: --device cpu runs only')
    refused = _run('--device', 'cpu', '--quick', '--parts', 'warp', '--out', str(tmp_path))
    assert refused.returncode == 2 and "unknown part(s) warp" in refused.stderr


FAKE_PUBLISHED_METRICS = """
import numpy as np
from config import cfg
from utils.reranking import re_ranking

def euclidean_distance(qf, gf):
    return (qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1) - 2 * qf @ gf.T).numpy()

def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    print(cfg.TEST.EVAL_MODE, 'remove_model')
    return np.array([float(len(q_pids)), distmat.shape[1]]), {'DDC': 0.25, 'S2G': 0.5}[cfg.TEST.EVAL_MODE]
"""


def test_the_published_evaluator_is_imported_from_a_checkout_and_driven_by_its_mode(tmp_path, capsys):
    published_code = _tool('published_code')
    (tmp_path / 'utils').mkdir()
    (tmp_path / 'utils' / 'metrics.py').write_text(FAKE_PUBLISHED_METRICS)
    ours = {name: sys.modules.get(name) for name in ('config', 'utils')}
    published = published_code.PublishedEvaluator(tmp_path)
    assert {name: sys.modules.get(name) for name in ('config', 'utils')} == ours  # ours restored
    qf, gf = torch.randn(3, 4), torch.randn(5, 4)
    ids = np.arange(3), np.arange(5)
    assert published(qf, gf, *ids, *ids, 'S2G')['mAP'] == 0.5
    result = published(qf, gf, *ids, *ids, 'DDC')
    assert result['mAP'] == 0.25 and list(result['cmc']) == [3.0, 5.0]
    assert 'remove_model' not in capsys.readouterr().out  # its per-query prints are dropped
    with pytest.raises(published_code.PublishedCodeMissing):
        published_code.PublishedEvaluator(tmp_path / 'elsewhere')


@pytest.mark.slow
def test_quick_cpu_run_covers_every_part(tmp_path):
    gpu_check = _tool('gpu_check')
    done = _run('--device', 'cpu', '--quick', '--out', str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert list(report['results']) == list(gpu_check.PARTS)
    statuses = {name: part['status'] for name, part in report['results'].items()}
    assert set(statuses.values()) <= {'pass', 'measured'}, statuses
    assert report['environment']['command'].endswith(f'--device cpu --quick --out {tmp_path}')
    checks = report['results']['device_checks']
    assert all(checks['checks'][k] <= checks['limits'][k] for k in checks['limits'])
    assert report['results']['resume']['bitwise_equal']  # the CPU is deterministic
    step = report['results']['train_step']
    assert [row['variant'] for row in step['rows']] == ['sdpa fp32', 'sdpa bf16']
    assert all(row['images_per_s'] > 0 and row['achieved_tflops'] > 0 for row in step['rows'])
    assert report['results']['evaluator']['rows'][-1]['mode'] == 'ALL'
    assert report['results']['projection']['total_seconds'] > 0
    table = (tmp_path / 'gpu_check.md').read_text()
    assert all(f'| {name} |' in table for name in gpu_check.PARTS)
