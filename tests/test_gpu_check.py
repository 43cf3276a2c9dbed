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

from tests.test_metrics import random_protocol, reference_evaluate, squared_distances

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


@pytest.mark.parametrize('mode', ['S2G', 'DDC'])
def test_bench_eval_baseline_is_the_published_algorithm(mode):
    bench_eval = _tool('bench_eval')
    rng = np.random.default_rng(2)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=60, num_gallery=200, num_ids=15, dim=8)
    qf, gf = qf.astype(np.float32), gf.astype(np.float32)
    distmat = bench_eval.published_distances(torch.from_numpy(qf), torch.from_numpy(gf))
    qn, gn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (qf, gf))
    np.testing.assert_allclose(distmat, squared_distances(qn, gn), atol=1e-5)
    q_attr, g_attr = (q_cams, g_cams) if mode == 'DDC' else (q_views, g_views)
    published = bench_eval.published_eval(distmat, q_pids, g_pids, q_attr, g_attr, max_rank=20)
    expected = reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, q_views, g_views, mode, max_rank=20)
    assert published['num_valid_query'] == expected['num_valid_query']
    assert published['mAP'] == pytest.approx(expected['mAP'], abs=1e-9)
    np.testing.assert_allclose(published['cmc'], expected['cmc'], atol=1e-9)


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
