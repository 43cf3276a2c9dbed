"""Memory and time of one stage-2 step at the published batch with SOLVER.STAGE2.ACCUM_STEPS 1, 2, 4.

ACCUM_STEPS 1 is the published full-batch step (forward, the MSP loss, backward, optimizer step).
Each setting runs in its own process on the same seeded weights and batch (processor/accumulation.py,
as the stage-2 loop calls it), so the memory high-water marks do not mix.

Usage: python benchmarks/bench_accumulation.py [--model ViT-B-16 --batch 64 --accum 1 2 4 --out bench_accumulation.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import describe_machine, machine_info, print_table, run_worker, sync, write_report  # noqa: E402
from bench_train_step import PeakRss  # noqa: E402

from loss.make_loss import Stage2Criterion  # noqa: E402
from model.clip_loader import build_clip  # noqa: E402
from model.make_model_clipreid import ReIDModel  # noqa: E402
from processor.stage2 import train_step  # noqa: E402
from solver.make_optimizer import make_optimizer_stage2  # noqa: E402


def worker(spec: dict) -> dict:
    device = torch.device(spec['device'])
    torch.manual_seed(0)
    clip = build_clip(spec['model'])
    cameras, k = 15, 4
    model = ReIDModel(clip, spec['num_classes'], camera_num=cameras, view_num=2, image_size=spec['size'],
                      stride=spec['stride'], sie_camera=True, sie_view=True, sie_coe=0.5,
                      model_name=spec['model']).to(device).train()
    del clip
    generator = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(2, spec['num_classes'], model.image_encoder.embed_dim,
                                                     generator=generator), dim=2).to(device)
    terms = [(text[0], 'all', 1.0), (text[1], 'ground', 0.1)]  # the published MSP terms
    batch = spec['batch']
    images = torch.randn(batch, 3, *spec['size'], generator=generator).to(device)
    pids = torch.arange(batch // k).repeat_interleave(k).to(device)
    camids = torch.randint(0, cameras, (batch,), generator=generator).to(device)
    viewids = (camids % 2).to(device)
    optimizer = make_optimizer_stage2(model.named_parameters(), 5e-6, 1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    criterion = Stage2Criterion(spec['num_classes'], id_weight=0.25, triplet_weight=1.0, margin=0.3,
                                label_smoothing=0.1, i2t_terms=terms).to(device)

    def step():  # the trainer's own step
        return train_step(model, criterion, optimizer, scaler, images, pids, camids, viewids, None,
                          spec['accum']).loss.item()

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    walls = []
    with PeakRss() as rss:
        for _ in range(spec['steps']):
            sync(device)
            start = time.perf_counter()
            loss = step()
            sync(device)
            walls.append(time.perf_counter() - start)
    result = {'accum_steps': spec['accum'], 'sub_batch': batch // spec['accum'], 'step_s': min(walls),
              'images_per_s': batch / min(walls), 'loss': loss, 'step_memory_mib': (rss.peak - rss.start) / 2**20}
    if device.type == 'cuda':
        result['cuda_peak_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='ViT-B-16')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--accum', type=int, nargs='+', default=[1, 2, 4])
    parser.add_argument('--size', type=int, nargs=2, default=[256, 128])
    parser.add_argument('--stride', type=int, nargs=2, default=[12, 12])
    parser.add_argument('--num-classes', type=int, default=1050)
    parser.add_argument('--steps', type=int, default=None, help='steps per setting (default: 5 on CUDA, 1 on CPU)')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds per setting')
    parser.add_argument('--out', default='bench_accumulation.json')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    device = torch.device(args.device)
    steps = args.steps or (5 if device.type == 'cuda' else 1)
    info = machine_info(device)
    print(f"stage-2 step, {args.model} random init, {args.size[0]}x{args.size[1]} stride {args.stride}, batch "
          f"{args.batch}, ACCUM_STEPS {args.accum}, {steps} step(s) each; {describe_machine(info)}", flush=True)
    rows = []
    for accum in args.accum:
        spec = {'model': args.model, 'device': args.device, 'batch': args.batch, 'accum': accum, 'size': args.size,
                'stride': args.stride, 'num_classes': args.num_classes, 'steps': steps}
        rows.append(run_worker(str(Path(__file__).resolve()), spec, args.timeout))
        print(f"  ACCUM_STEPS {accum}: {rows[-1]['step_memory_mib']:.0f} MiB", flush=True)
    full = next((row for row in rows if row['accum_steps'] == 1), None)
    memory_key = 'cuda_peak_mib' if device.type == 'cuda' else 'step_memory_mib'
    for row in rows:
        row['memory_mib'] = row[memory_key]
        row['memory_vs_full'] = row['memory_mib'] / full['memory_mib'] if full else None
        row['time_vs_full'] = row['step_s'] / full['step_s'] if full else None
    memory_header = 'peak CUDA MiB' if device.type == 'cuda' else 'step RSS MiB'
    print_table(rows, [('accum_steps', 'ACCUM_STEPS', ''), ('sub_batch', 'sub-batch', ''),
                       ('memory_mib', memory_header, '.0f'), ('memory_vs_full', 'x full batch', '.2f'),
                       ('images_per_s', 'images/s', '.2f'), ('time_vs_full', 'time x full', '.2f'),
                       ('loss', 'loss', '.4f')])
    print(f"{memory_header}: " + ('torch.cuda.max_memory_allocated (weights included)' if device.type == 'cuda'
                                  else 'peak resident memory during the steps minus before the first (activations, '
                                  'gradients, optimizer state)'))
    print("ACCUM_STEPS 1 is the published full-batch step; the loss differs only by the triplet term's "
          "sub-batch mining and the BatchNorm statistics")
    write_report(args.out, {'args': vars(args), 'steps': steps, 'machine': info,
                            'load_average_at_end': os.getloadavg(), 'rows': rows})


if __name__ == '__main__':
    main()
