"""Benchmark evaluation.rank.evaluate against plain per-query numpy evaluators at MSSL scale.

Baselines (both: full torch distance matrix, one np.argsort of the whole matrix, then a Python
loop over queries, as the published evaluator does):
  published-style  per query, precision@k built with a Python-level loop over the ranked gallery
  plain-vectorised same loop, but each query's precision@k vectorised in numpy
Every timed step of the baselines is linear in the number of queries, so with --plain-queries N
they run on the first N queries of each mode and their time is scaled up (marked '~' in the table).
Their metrics are checked against ours on that same query subset (to 1e-6).

Usage: python tools/bench_eval.py [--num-query 3000 --num-gallery 28600 --dim 1280 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.errors import exit_on_user_error  # noqa: E402
from evaluation.rank import MODES, evaluate, mode_query_mask  # noqa: E402

SKY_CAMERAS = 5  # cameras 0..4 are sky (UAV) cameras in the synthetic set, the rest ground


def make_data(num_query, num_gallery, dim, num_ids, num_cams, seed):
    """Identity-structured random features (so the metrics are not at chance level)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_ids, dim)).astype(np.float32)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_pids = rng.integers(0, num_ids + num_ids // 50, num_query)  # ~2% of ids not in the gallery
    g_cams, q_cams = rng.integers(0, num_cams, num_gallery), rng.integers(0, num_cams, num_query)
    noise = 3.5  # per-dimension noise against unit-variance identity centres

    def features(pids):
        feats = rng.standard_normal((len(pids), dim)).astype(np.float32) * noise
        known = pids < num_ids
        feats[known] += centers[pids[known]]
        return torch.from_numpy(feats)

    return {'qf': features(q_pids), 'gf': features(g_pids),
            'q_pids': q_pids, 'g_pids': g_pids, 'q_camids': q_cams, 'g_camids': g_cams,
            'q_views': (q_cams < SKY_CAMERAS).astype(np.int64),
            'g_views': (g_cams < SKY_CAMERAS).astype(np.int64)}


def torch_distmat(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """Full squared Euclidean matrix of L2-normalised features, computed at once."""
    qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    dist = (qf * qf).sum(1, keepdim=True) + (gf * gf).sum(1).unsqueeze(0)
    dist.addmm_(qf, gf.T, beta=1, alpha=-2)
    return dist.numpy()


def plain_evaluate(distmat, q_pids, g_pids, q_attr, g_attr, max_rank, python_precision):
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_pids)):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_attr[order] == q_attr[i]))
        hits = matches[i][keep]
        if not hits.any():
            continue
        found = hits.cumsum()
        last = np.flatnonzero(hits).max()
        all_inp.append(found[last] / (last + 1.0))
        cmc = np.minimum(found, 1)
        all_cmc.append(cmc[:max_rank])
        if python_precision:
            precision = np.asarray([n / (k + 1.0) for k, n in enumerate(found)])
        else:
            precision = found / np.arange(1, len(found) + 1)
        all_ap.append((precision * hits).sum() / hits.sum())
    return {'mAP': float(np.mean(all_ap)), 'mINP': float(np.mean(all_inp)),
            'cmc': np.asarray(all_cmc, dtype=np.float64).mean(0), 'num_valid_query': len(all_ap)}


def timed(fn, repeat):
    best, result = float('inf'), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def mode_inputs(data, mode):
    keep = mode_query_mask(mode, data['q_views'])
    return {key: (value[torch.from_numpy(keep)] if key == 'qf' else value[keep])
            if key.startswith('q') else value for key, value in data.items()}


def run_plain(inputs, mode, count, max_rank, python_precision):
    q_attr, g_attr = ('q_camids', 'g_camids') if mode == 'DDC' else ('q_views', 'g_views')

    def once():
        distmat = torch_distmat(inputs['qf'][:count], inputs['gf'])
        return plain_evaluate(distmat, inputs['q_pids'][:count], inputs['g_pids'],
                              inputs[q_attr][:count], inputs[g_attr], max_rank, python_precision)

    return once


def max_difference(ours, plain):
    assert ours['num_valid_query'] == plain['num_valid_query'], (ours, plain)
    return max(abs(ours['mAP'] - plain['mAP']), abs(ours['mINP'] - plain['mINP']),
               float(np.abs(ours['cmc'] - plain['cmc']).max()))


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num-query', type=int, default=3000)
    parser.add_argument('--num-gallery', type=int, default=28600)
    parser.add_argument('--dim', type=int, default=1280)
    parser.add_argument('--num-ids', type=int, default=2000)
    parser.add_argument('--num-cams', type=int, default=15)
    parser.add_argument('--repeat', type=int, default=1, help='timed runs, best is kept')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--chunk-size', type=int, default=1024)
    parser.add_argument('--plain-queries', type=int, default=500,
                        help='queries per mode run by the baselines (0 = all), time scaled up')
    parser.add_argument('--max-rank', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='bench_eval.json')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    load_at_start = os.getloadavg()  # other processes on the machine skew the timings
    data = make_data(args.num_query, args.num_gallery, args.dim, args.num_ids, args.num_cams,
                     args.seed)
    print(f"{args.num_query} queries x {args.num_gallery} gallery x {args.dim}-d, "
          f"{args.num_ids} ids, {args.num_cams} cameras; ours on {device} "
          f"({torch.get_num_threads()} threads), baselines numpy on CPU", flush=True)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    rows = []
    for mode in MODES:
        inputs = mode_inputs(data, mode)
        num_query = len(inputs['q_pids'])
        qf, gf = inputs['qf'].to(device), inputs['gf'].to(device)

        def ours_on(count):
            def once():
                result = evaluate(qf[:count], gf, inputs['q_pids'][:count], inputs['g_pids'],
                                  inputs['q_camids'][:count], inputs['g_camids'],
                                  inputs['q_views'][:count], inputs['g_views'], mode,
                                  max_rank=args.max_rank, chunk_size=args.chunk_size)
                sync()
                return result
            return once

        ours_on(min(num_query, 256))()  # warm-up
        ours_time, ours = timed(ours_on(num_query), args.repeat)
        count = num_query if args.plain_queries <= 0 else min(args.plain_queries, num_query)
        scale = num_query / count
        ours_subset = ours if count == num_query else ours_on(count)()
        row = {'mode': mode, 'num_query': num_query, 'num_gallery': args.num_gallery,
               'ours_s': ours_time, 'plain_queries': count, 'extrapolated': count < num_query,
               'mAP': ours['mAP'], 'mINP': ours['mINP'], 'rank1': ours['rank1']}
        for name, python_precision in (('published_style', True), ('plain_vectorised', False)):
            seconds, plain = timed(run_plain(inputs, mode, count, args.max_rank,
                                             python_precision), args.repeat)
            difference = max_difference(ours_subset, plain)
            assert difference <= 1e-6, f"{mode}: {name} differs from ours by {difference:.3g}"
            row[f'{name}_s'] = seconds * scale
            row[f'{name}_max_abs_diff'] = difference
        rows.append(row)
        worst = max(row['published_style_max_abs_diff'], row['plain_vectorised_max_abs_diff'])
        print(f"  {mode}: done (max |diff| vs baselines {worst:.1e})", flush=True)

    total = {'mode': 'ALL', 'num_query': sum(r['num_query'] for r in rows),
             'num_gallery': args.num_gallery, 'extrapolated': any(r['extrapolated'] for r in rows)}
    for key in ('ours_s', 'published_style_s', 'plain_vectorised_s'):
        total[key] = sum(r[key] for r in rows)
    rows.append(total)

    header = (f"{'mode':<5} {'queries':>7} {'ours s':>8} {'published-style s':>18} "
              f"{'plain-vec s':>12} {'x pub':>7} {'x vec':>7}  {'mAP':>6} {'R1':>6}")
    print(header)
    print('-' * len(header))
    for row in rows:
        mark = '~' if row['extrapolated'] else ' '
        row['speedup_vs_published_style'] = row['published_style_s'] / row['ours_s']
        row['speedup_vs_plain_vectorised'] = row['plain_vectorised_s'] / row['ours_s']
        metrics = (f"{row['mAP']:6.3f} {row['rank1']:6.3f}" if 'mAP' in row else '')
        print(f"{row['mode']:<5} {row['num_query']:>7} {row['ours_s']:>8.2f} "
              f"{mark}{row['published_style_s']:>17.2f} {mark}{row['plain_vectorised_s']:>11.2f} "
              f"{row['speedup_vs_published_style']:>7.1f} "
              f"{row['speedup_vs_plain_vectorised']:>7.1f}"
              f"  {metrics}")
    if total['extrapolated']:
        print(f"~ baseline measured on the first {args.plain_queries} queries of each mode and "
              "scaled linearly to all queries")
    print("metrics identical to both baselines on the measured queries (max |diff| <= 1e-6)")

    report = {'args': vars(args), 'device': str(device), 'torch_threads': torch.get_num_threads(),
              'cpu_count': os.cpu_count(), 'load_average_at_start': load_at_start,
              'load_average_at_end': os.getloadavg(), 'platform': platform.platform(),
              'torch': torch.__version__, 'numpy': np.__version__, 'rows': rows}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
