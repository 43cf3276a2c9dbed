"""Benchmark the stage-2 training loader (decode + augment + P x K batches) against the model's step
rate: with DATALOADER.NUM_WORKERS workers the loader must deliver more images/s than a training
step consumes, or the GPU waits.

Prints the per-image cost of each stage of the pipeline (one core), then the loader's images/s for
each worker count, and compares them with the step rate from --step-json (bench_train_step.py's
output) or --step-rate.

Usage: python benchmarks/bench_loader.py [--root data/mssl_synthetic --workers 0 1 2 --batches 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import describe_machine, machine_info, print_table, write_report  # noqa: E402

from config import load_config  # noqa: E402
from datasets import init_dataset  # noqa: E402
from datasets.bases import read_image  # noqa: E402
from datasets.make_dataloader import make_train_loader, transforms  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402
from processor.settings import loader_settings  # noqa: E402


def stage_costs(cfg, items: list, count: int) -> list:
    """Milliseconds per image of each transform of the training pipeline, run one after the other."""
    paths = [path for path, *_ in items[:count]]
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    start = time.perf_counter()
    images = [read_image(path) for path in paths]
    rows.append({'stage': 'decode (PIL open + RGB)', 'ms': (time.perf_counter() - start) / len(paths) * 1e3})
    for transform in transforms(loader_settings(cfg), is_train=True).transforms:
        start = time.perf_counter()
        images = [transform(image) for image in images]
        rows.append({'stage': type(transform).__name__, 'ms': (time.perf_counter() - start) / len(paths) * 1e3})
    start = time.perf_counter()
    torch.stack(images)
    rows.append({'stage': 'collate (stack)', 'ms': (time.perf_counter() - start) / len(paths) * 1e3})
    torch.set_num_threads(threads)
    total = sum(row['ms'] for row in rows)
    for row in rows:
        row['share'] = row['ms'] / total
    rows.append({'stage': 'total', 'ms': total, 'share': 1.0, 'images_per_s': 1e3 / total})
    return rows


def loader_rate(cfg, items: list, device: torch.device, batches: int) -> dict:
    loader = make_train_loader(loader_settings(cfg), items, device)
    loader.sampler.set_epoch(1)
    available = len(loader)
    if available < 2:
        raise SystemExit(f"the training set yields only {available} batch(es) of "
                         f"{cfg.SOLVER.STAGE2.IMS_PER_BATCH}; use a smaller --batch")
    batches = min(batches, available - 1)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += next(iterator)[0].shape[0]
    seconds = time.perf_counter() - start
    del iterator, loader
    return {'workers': cfg.DATALOADER.NUM_WORKERS, 'pin_memory': device.type == 'cuda',
            'first_batch_s': first, 'batches': batches, 'images_per_s': images / seconds}


def best_step_rate(path: str) -> tuple[float, str]:
    report = json.loads(Path(path).read_text())
    best = max(report['rows'], key=lambda row: row['images_per_s'])
    return best['images_per_s'], f"{best['variant']}, batch {report['batch']} on {report['machine']['device']}"


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--root', default='data/mssl_synthetic', help='an MSSL-format dataset folder')
    parser.add_argument('--dataset', default='mssl')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='only decides pinned memory')
    parser.add_argument('--size', type=int, nargs=2, default=[256, 128])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--batches', type=int, default=8, help='timed batches per worker count')
    parser.add_argument('--stage-images', type=int, default=256, help='images for the per-stage costs')
    parser.add_argument('--step-json', default='', help="bench_train_step.py's JSON: its fastest row is the step rate")
    parser.add_argument('--step-rate', type=float, default=0.0, help='images/s of a training step, to compare')
    parser.add_argument('--out', default='bench_loader.json')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    info = machine_info(device)
    dataset = init_dataset(args.dataset, args.root)
    sizes = {}
    for path, *_ in dataset.train[:50]:
        with Image.open(path) as image:
            sizes[image.size] = sizes.get(image.size, 0) + 1
    typical = max(sizes, key=sizes.get)

    def config(workers: int):
        return load_config('', ['DATASETS.NAMES', args.dataset, 'DATASETS.ROOT_DIR', args.root,
                                'INPUT.SIZE_TRAIN', str(args.size), 'SOLVER.STAGE2.IMS_PER_BATCH', str(args.batch),
                                'DATALOADER.NUM_WORKERS', str(workers), 'MODEL.DEVICE', args.device])

    print(f"training loader on {args.root} ({len(dataset.train)} training images, most common source size "
          f"{typical[0]}x{typical[1]}), to {args.size[0]}x{args.size[1]}, batch {args.batch}; "
          f"{describe_machine(info)}", flush=True)
    stages = stage_costs(config(0), dataset.train, args.stage_images)
    print_table(stages, [('stage', 'stage (one core)', ''), ('ms', 'ms / image', '.3f'), ('share', 'share', '.0%')])

    rows = [loader_rate(config(workers), dataset.train, device, args.batches) for workers in args.workers]
    step_rate, step_source = args.step_rate, 'given with --step-rate'
    if args.step_json:
        step_rate, step_source = best_step_rate(args.step_json)
    for row in rows:
        row['loader_over_step'] = row['images_per_s'] / step_rate if step_rate else None
    print_table(rows, [('workers', 'workers', 'd'), ('images_per_s', 'images/s', '.0f'),
                       ('first_batch_s', 'first batch s', '.2f'), ('loader_over_step', 'x step rate', '.1f')])
    if step_rate:
        print(f"step rate: {step_rate:.1f} images/s ({step_source}); the loader keeps up where 'x step rate' > 1")
    write_report(args.out, {'args': vars(args), 'machine': info, 'source_size_counts': {f'{w}x{h}': n for (w, h), n
                                                                                        in sizes.items()},
                            'stages': stages, 'rows': rows, 'step_rate': step_rate, 'step_source': step_source,
                            'load_average_at_end': os.getloadavg()})


if __name__ == '__main__':
    main()
