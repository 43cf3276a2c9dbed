"""An experiment's summary over its seeds (tools/experiment.py): summary.json, summary.csv, summary.md
and summary.png in the experiment folder.

For every protocol key ('S2G', or '<dataset>/<protocol>' for the datasets of DATASETS.TEST_NAMES) and
metric (mAP, rank1, rank5, rank10, mINP): the mean, the sample standard deviation (n - 1 in the
denominator; null for a single seed), the minimum, the maximum and n, the number of seeds with a
value. Values are fractions, as in results_<PROTOCOL>.json; summary.md shows percentages.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics

from reporting.visualize import plot_seed_summary
from utils import atomic_io
from utils.vocabulary import METRIC_KEYS, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_PLOT, SUMMARY_TABLE

METRIC_NAMES = {'mAP': 'mAP', 'rank1': 'R1', 'rank5': 'R5', 'rank10': 'R10', 'mINP': 'mINP'}


def seed_statistics(values: list[float]) -> dict:
    n = len(values)
    return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if n > 1 else None,
            'min': min(values), 'max': max(values), 'n': n}


def summarize(runs: list[dict]) -> dict:
    """{key: {metric: statistics}} over `runs` ([{'seed', 'output_dir', 'results': {key: {metric: value}}}]),
    keys in the order the runs first give them."""
    values = {}
    for run in runs:
        for key, metrics in run['results'].items():
            for metric in METRIC_KEYS:
                if metrics.get(metric) is not None:
                    values.setdefault(key, {}).setdefault(metric, []).append(float(metrics[metric]))
    return {key: {metric: seed_statistics(vs) for metric, vs in by_metric.items()} for key, by_metric in values.items()}


def _percent(value) -> str:
    return '—' if value is None else f'{100 * value:.1f}'


def summary_table(summary: dict) -> str:
    """Markdown: per protocol, each metric's mean ± sample standard deviation (%), and n."""
    lines = ['| protocol | ' + ' | '.join(f'{METRIC_NAMES[m]} (%)' for m in METRIC_KEYS) + ' | n |',
             '|:--|' + '--:|' * (len(METRIC_KEYS) + 1)]
    for key, metrics in summary.items():
        cells = [f"{_percent(metrics[m]['mean'])} ± {_percent(metrics[m]['std'])}" if m in metrics else '—'
                 for m in METRIC_KEYS]
        n = max(stats['n'] for stats in metrics.values())
        lines.append(f"| {key} | {' | '.join(cells)} | {n} |")
    return '\n'.join(lines)


def range_table(summary: dict) -> str:
    """Markdown: per protocol, each metric's lowest and highest value over the seeds (%)."""
    lines = ['| protocol | ' + ' | '.join(f'{METRIC_NAMES[m]} min – max' for m in METRIC_KEYS) + ' |',
             '|:--|' + '--:|' * len(METRIC_KEYS)]
    for key, metrics in summary.items():
        cells = [f"{_percent(metrics[m]['min'])} – {_percent(metrics[m]['max'])}" if m in metrics else '—'
                 for m in METRIC_KEYS]
        lines.append(f"| {key} | {' | '.join(cells)} |")
    return '\n'.join(lines)


def per_seed_table(runs: list[dict]) -> str:
    lines = ['| seed | protocol | ' + ' | '.join(f'{METRIC_NAMES[m]} (%)' for m in METRIC_KEYS) + ' |',
             '|--:|:--|' + '--:|' * len(METRIC_KEYS)]
    for run in runs:
        for key, metrics in run['results'].items():
            lines.append(f"| {run['seed']} | {key} | " + ' | '.join(_percent(metrics.get(m)) for m in METRIC_KEYS)
                         + ' |')
    return '\n'.join(lines)


def summary_csv(summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['protocol', 'metric', 'mean', 'std', 'min', 'max', 'n'])
    for key, metrics in summary.items():
        for metric, stats in metrics.items():
            writer.writerow([key, metric, *('' if stats[s] is None else repr(stats[s])
                                            for s in ('mean', 'std', 'min', 'max')), stats['n']])
    return buffer.getvalue()


def write_summary(folder: str, runs: list[dict], details: dict) -> tuple[dict, list[str]]:
    """summary.json / .csv / .md / .png in `folder`; `details`: lines for the head of summary.md and the
    'experiment' entry of summary.json (config file, overrides, device, ...). Returns the summary and
    the paths written."""
    summary = summarize(runs)
    paths = [os.path.join(folder, name) for name in (SUMMARY_JSON, SUMMARY_CSV, SUMMARY_TABLE, SUMMARY_PLOT)]
    atomic_io.write_text(paths[0], json.dumps({'experiment': details, 'runs': runs, 'summary': summary},
                                              indent=1) + '\n')
    atomic_io.write_text(paths[1], summary_csv(summary))
    head = '\n'.join(f'- {key}: {value}' for key, value in details.items())
    seeds = len(runs)
    atomic_io.write_text(paths[2], (
        f"# Summary over {seeds} seed{'s' if seeds != 1 else ''}\n\n{head}\n\n"
        f"Mean ± sample standard deviation over the seeds (%):\n\n{summary_table(summary)}\n\n"
        f"How far one run may land (lowest – highest of the seeds, %):\n\n{range_table(summary)}\n\n"
        f"## Each seed\n\n{per_seed_table(runs)}\n"))
    plot_seed_summary(runs, summary, paths[3])
    return summary, paths
