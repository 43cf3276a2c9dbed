"""Benchmark SOLVER.DETERMINISTIC: the stage-2 training step (benchmarks/bench_train_step.py's, the
trainer's own train_step) with deterministic mode off and on, in one process on one model, the two
modes alternating step by step (off-on, then on-off), so that both see the same load on a shared
machine. The ratio of the median step times is the cost; on a CPU shared with other jobs, the ratio of
the median CPU time per step is the steadier figure (other processes stretch the wall time, not it).

On CUDA, CUBLAS_WORKSPACE_CONFIG is set for the whole run (cuBLAS reads it once), so the 'off' steps
have the deterministic workspace too; only the algorithm choice and cuDNN flags switch.

Usage: python benchmarks/bench_deterministic.py [--model ViT-B-16 --batch 8 --rounds 4 --out bench_deterministic.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import describe_machine, machine_info, print_table, sync, write_report  # noqa: E402
from bench_train_step import add_step_arguments, is_resnet, make_step  # noqa: E402

from utils.device import CUBLAS_DETERMINISTIC_WORKSPACE, set_deterministic  # noqa: E402

MODES = {'off': False, 'on': True}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_step_arguments(parser)
    parser.add_argument('--rounds', type=int, default=None, help='timed off/on pairs (default: 20 on CUDA, 4 on CPU)')
    parser.add_argument('--out', default='bench_deterministic.json')
    args = parser.parse_args(argv)
    args.stride = args.stride or ([16, 16] if is_resnet(args.model) else [12, 12])
    device = torch.device(args.device)
    on_cuda = device.type == 'cuda'
    if on_cuda:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_DETERMINISTIC_WORKSPACE)
    batch = args.batch or (64 if on_cuda else 8)
    rounds = args.rounds or (20 if on_cuda else 4)
    variant = 'sdpa bf16' if on_cuda else 'sdpa fp32'
    info = machine_info(device)
    print(f"stage-2 step, {args.model} random init, {variant}, {args.size[0]}x{args.size[1]} stride {args.stride}, "
          f"batch {batch}, {rounds} rounds of one step per mode (after one warm-up step each); "
          f"{describe_machine(info)}", flush=True)
    step, _, _ = make_step({'variant': variant, 'model': args.model, 'device': args.device, 'batch': batch,
                            'size': args.size, 'stride': args.stride, 'num_classes': args.num_classes,
                            'objective': args.objective})
    walls = {mode: [] for mode in MODES}
    cpu = {mode: [] for mode in MODES}

    def timed(mode: str, keep: bool) -> None:
        set_deterministic(MODES[mode])
        sync(device)
        wall, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync(device)
        if keep:
            walls[mode].append(time.perf_counter() - wall)
            cpu[mode].append(time.process_time() - cpu_start)

    for mode in MODES:
        timed(mode, keep=False)
    for n in range(rounds):
        for mode in (('off', 'on') if n % 2 == 0 else ('on', 'off')):
            timed(mode, keep=True)
    set_deterministic(False)

    rows = []
    for mode in MODES:
        median = statistics.median(walls[mode])
        rows.append({'mode': mode, 'median_step_s': median, 'min_step_s': min(walls[mode]),
                     'images_per_s': batch / median, 'median_cpu_s': statistics.median(cpu[mode]),
                     'cpu_share': sum(cpu[mode]) / (sum(walls[mode]) * torch.get_num_threads()) if not on_cuda else None})
    rows[1]['speed_vs_off'] = rows[0]['median_step_s'] / rows[1]['median_step_s']
    rows[1]['cpu_time_vs_off'] = rows[1]['median_cpu_s'] / rows[0]['median_cpu_s']
    print_table(rows, [('mode', 'SOLVER.DETERMINISTIC', ''), ('median_step_s', 'median step s', '.3f'),
                       ('min_step_s', 'fastest step s', '.3f'), ('images_per_s', 'images/s', '.2f'),
                       ('speed_vs_off', 'speed x off', '.2f'), ('median_cpu_s', 'median CPU s', '.2f'),
                       ('cpu_time_vs_off', 'CPU time x off', '.2f'), ('cpu_share', 'CPU share', '.0%')])
    print("speed x off: median step time off / on (below 1: deterministic mode is slower); CPU time x off: median CPU "
          "seconds per step on / off (above 1: it costs more work); CPU share: process CPU time / (wall time x "
          "threads) over the timed steps (below 100%: other processes competed)")
    write_report(args.out, {'args': vars(args), 'batch': batch, 'rounds': rounds, 'variant': variant, 'machine': info,
                            'load_average_at_end': os.getloadavg(), 'rows': rows, 'step_s': walls,
                            'step_cpu_s': cpu})


if __name__ == '__main__':
    main()
