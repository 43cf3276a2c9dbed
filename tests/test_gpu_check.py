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


def test_a_checkouts_packages_are_imported_with_their_relative_imports_and_ours_restored(tmp_path):
    """CLIP-ReID's model/ has no __init__.py (a namespace package): its modules, not ours, are imported."""
    published_code = _tool('published_code')
    (tmp_path / 'model' / 'clip').mkdir(parents=True)
    (tmp_path / 'model' / 'clip' / '__init__.py').write_text('')
    (tmp_path / 'model' / 'clip' / 'sizes.py').write_text('WIDTH = 2048\n')
    (tmp_path / 'model' / 'make_model_clipreid.py').write_text('from .clip.sizes import WIDTH\n')
    import model as ours
    with published_code.published_packages(tmp_path):
        import model.make_model_clipreid as theirs
    assert theirs.WIDTH == 2048
    assert sys.modules['model'] is ours and sys.modules['model.make_model_clipreid'].__file__.startswith(str(ROOT))
    with pytest.raises(published_code.PublishedCodeMissing):
        with published_code.published_packages(tmp_path / 'elsewhere'):
            pass


def test_train_step_benchmark_says_why_clipreid_code_is_not_timed(tmp_path):
    from types import SimpleNamespace
    available = _tool('bench_train_step').clipreid_code_available
    assert 'no --clipreid-repo' in available(SimpleNamespace(clipreid_repo='', model='RN50'))
    assert 'builds only RN50 and ViT-B-16' in available(SimpleNamespace(clipreid_repo=str(tmp_path), model='RN-Tiny'))
    assert 'has no model/make_model_clipreid.py' in available(SimpleNamespace(clipreid_repo=str(tmp_path), model='RN50'))

def test_stage1_benchmark_says_why_the_published_code_is_not_timed(tmp_path):
    from types import SimpleNamespace
    bench_stage1 = _tool('bench_stage1')
    available = bench_stage1.published_code_available
    assert 'no --published-repo' in available(SimpleNamespace(published_repo='', model='ViT-B-16'))
    assert 'builds only ViT-B-16 and RN50' in available(SimpleNamespace(published_repo=str(tmp_path), model='ViT-Tiny-16'))
    assert 'has no model/make_model_clipreid.py' in available(SimpleNamespace(published_repo=str(tmp_path),
                                                                               model='ViT-B-16'))
    for relative in bench_stage1.PUBLISHED_STAGE1_FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text('')
    assert available(SimpleNamespace(published_repo=str(tmp_path), model='ViT-B-16')) is None


# The published evaluator's rules on distances that differ from ours in the last bits, as a GPU's matmul
# makes them (here 1e-5 apart, more than the ~1e-7 of float32 rounding, so that near-ties matter at this
# small size): equal metrics need the same distances, not the same features.
REORDERED_PUBLISHED_METRICS = """
import numpy as np
import torch
from config import cfg
from utils.reranking import re_ranking

SKY = (3, 4, 8, 9, 13, 14)

def euclidean_distance(qf, gf):
    qf, gf = qf.double(), gf.double()
    dist = qf.pow(2).sum(1, keepdim=True) + gf.pow(2).sum(1) - 2 * qf @ gf.T
    wobble = torch.cos(torch.arange(dist.numel(), dtype=torch.float64).reshape(dist.shape))
    return (dist + 1e-5 * wobble).float().numpy()

def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    q_views, g_views = np.isin(q_camids, SKY), np.isin(g_camids, SKY)
    cmcs, aps = [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind='stable')
        same = g_pids[order] == q_pids[i]
        if cfg.TEST.EVAL_MODE == 'DDC':
            junk = same & (g_camids[order] == q_camids[i])
        else:
            junk = same & (g_views[order] == q_views[i])
        hits = same[~junk].astype(float)
        if not hits.any():
            continue
        cmcs.append(np.minimum(np.cumsum(hits), 1)[:max_rank])
        aps.append((np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum() / hits.sum())
    return np.mean(cmcs, axis=0), float(np.mean(aps))
"""


def test_evaluator_benchmark_compares_metrics_from_the_published_distances(tmp_path):
    """bench_eval checks our metrics against the published code's at 1e-6 on the distance matrix the
    published code ranked: distances computed elsewhere reorder near-ties."""
    bench_eval = _tool('bench_eval')
    (tmp_path / 'utils').mkdir()
    (tmp_path / 'utils' / 'metrics.py').write_text(REORDERED_PUBLISHED_METRICS)
    args = bench_eval.parse_args(['--num-query', '200', '--num-gallery', '3000', '--dim', '256', '--num-ids', '1000',
                                  '--published-repo', str(tmp_path), '--out', str(tmp_path / 'eval.json')])
    report = bench_eval.run(args)
    assert [row['mode'] for row in report['rows']] == ['S2G', 'G2S', 'DDC', 'ALL']
    assert all(row['max_abs_diff'] <= 1e-6 for row in report['rows'])


@pytest.mark.slow
def test_quick_cpu_run_covers_every_part(tmp_path):
    gpu_check = _tool('gpu_check')
    done = _run('--device', 'cpu', '--quick', '--out', str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert list(report['results']) == ['data', *gpu_check.PARTS]
    assert all(part['part_seconds'] <= part['deadline_s'] + 1 for part in report['results'].values())
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


@pytest.mark.slow  # a few seconds of a killed demo, and the driver's own start
def test_a_part_past_its_deadline_is_killed_with_its_processes_and_the_rest_go_on(tiny_mssl, tmp_path):
    """The demo (bash -> Python training) past its deadline: its whole process group is killed, the run
    goes on with the next part, and a part whose deadline no longer fits the budget is skipped, saying why."""
    gpu_check = _tool('gpu_check')
    out = tmp_path / 'out'
    done = _run('--device', 'cpu', '--quick', '--data', tiny_mssl, '--out', str(out), '--parts', 'demo',
                'projection', 'loader', '--deadline', 'demo=12', 'projection=60', 'loader=1000', '--budget-s', '100')
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / 'gpu_check.json').read_text())
    demo, projection, loader = (report['results'][name] for name in ('demo', 'projection', 'loader'))
    assert demo['status'] == 'timeout' and 12 <= demo['part_seconds'] < 25
    assert demo['killed_processes'] >= 3  # the part's Python, the demo's bash and the training it started
    assert gpu_check.group_members(demo['process_group']) == []
    assert projection['status'] == 'skipped' and 'needs the parts' in projection['summary']
    assert loader['status'] == 'skipped' and 'does not fit' in loader['summary']
    assert '== loader: skipped: its deadline of 1000 s does not fit' in done.stdout
    assert '| demo | timeout |' in (out / 'gpu_check.md').read_text()


def test_the_default_deadlines_fit_eight_minutes():
    gpu_check = _tool('gpu_check')
    assert set(gpu_check.DEADLINE_S) == {'data', *gpu_check.PARTS}
    assert sum(gpu_check.DEADLINE_S.values()) <= gpu_check.BUDGET_S <= 8 * 60 - 30  # the driver's own seconds
    args = gpu_check.parse_args(['--out', 'x', '--deadline', 'demo=70'])
    assert args.budget_s == gpu_check.BUDGET_S and args.deadlines['demo'] == 70
    assert gpu_check.parse_args(['--out', 'x', '--quick']).deadlines['resume'] == 4 * gpu_check.DEADLINE_S['resume']
