"""The hardware floor of MSP training: FLOPs and dispatched operations of each kind of step, counted
on the meta device (no weights, no compute), divided by a device's peak rate; then the whole MSSL
recipe projected from them. Every time printed here is an estimate from counts and peak rates, not a
measurement, except the CPU's matmul rates (measured) and, with --step-json, the CPU's measured step.

  stage-2 step    forward + MSP loss + backward of the image tower, optimizer step
  stage-1 step    prompt learner + text tower forward/backward (frozen weights) + SupCon, batch 64
  inference       forward of one test image (feature extraction, evaluation)

Usage: python tools/bench_floor.py [--model ViT-B-16 --batch 64 --step-json bench_train_step.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model, describe_machine, machine_info, print_table, write_report  # noqa: E402

from loss.make_loss import msp_stage2_loss  # noqa: E402
from loss.softmax_loss import CrossEntropyLabelSmooth  # noqa: E402
from loss.supcontrast import SupConLoss  # noqa: E402
from loss.triplet_loss import TripletLoss  # noqa: E402
from model.clip_loader import build_clip  # noqa: E402
from model.make_model_clipreid import ReIDModel  # noqa: E402
from model.text_encoder import PromptLearner, TextEncoder  # noqa: E402
from solver.make_optimizer import make_optimizer_stage2  # noqa: E402

META = torch.device('meta')
# Published dense peak rates (no sparsity) of NVIDIA H100 SXM5; CPU rates are measured below.
H100_BF16_TFLOPS = 989.4
H100_TF32_TFLOPS = 494.7


class OpCounter(TorchDispatchMode):
    """Counts aten operations as dispatched: in eager mode on a GPU, roughly one kernel launch each."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def counted(fn) -> tuple[float, int]:
    with FlopCounterMode(display=False) as flops, OpCounter() as ops:
        fn()
    return flops.get_total_flops(), ops.count


def stage2_counts(clip, args) -> dict:
    model = ReIDModel(clip, args.num_classes, camera_num=15, view_num=2, image_size=args.size, stride=args.stride,
                      sie_camera=True, sie_view=True, sie_coe=0.5).to(META).train()
    batch = args.batch
    images = torch.zeros(batch, 3, *args.size, device=META)
    cams = torch.zeros(batch, dtype=torch.long, device=META)
    state = {}

    def forward():
        out = model(images, cams, cams)
        # The MSP loss has data-dependent branches that meta tensors cannot take; it is counted apart.
        state['out'] = out
        state['loss'] = sum(score.sum() for score in out['cls_scores']) + sum(f.sum() for f in out['feats'])

    forward_flops, forward_ops = counted(forward)
    backward_flops, backward_ops = counted(lambda: state['loss'].backward())
    loss_flops, loss_ops = loss_counts({'cls_scores': [t.shape for t in state['out']['cls_scores']],
                                        'feats': [t.shape for t in state['out']['feats']]}, args)
    as_built = torch.optim.Adam(make_optimizer_stage2(model.named_parameters(), 1e-5, 1e-4).param_groups,
                                lr=1e-5, foreach=True)  # foreach: what CUDA runs by default
    _, optimizer_ops = counted(as_built.step)
    model.eval()
    with torch.no_grad():
        inference_flops, inference_ops = counted(lambda: model(images, cams, cams))
    return {'step_flops': forward_flops + backward_flops + loss_flops, 'forward_flops': forward_flops,
            'loss_flops': loss_flops, 'step_ops': forward_ops + backward_ops + loss_ops + optimizer_ops,
            'optimizer_ops_as_built': optimizer_ops, 'optimizer_groups_as_built': len(as_built.param_groups),
            'inference_flops_per_image': inference_flops / batch, 'inference_ops_per_batch': inference_ops}


def loss_counts(shapes: dict, args) -> tuple[float, int]:
    """FLOPs and ops of the MSP loss (forward and backward) on real random outputs of the model's shapes."""
    generator = torch.Generator().manual_seed(0)
    out = {key: [torch.randn(shape, generator=generator, requires_grad=True) for shape in value]
           for key, value in shapes.items()}
    out['proj'] = out['feats'][2]
    pids = torch.arange(args.batch // 4).repeat_interleave(4)
    views = torch.arange(args.batch) % 2
    text = torch.randn(args.num_classes, out['proj'].shape[1], generator=generator)
    terms = [(text, 'all', 1.0), (text, 'ground', 0.1)]
    id_loss, triplet = CrossEntropyLabelSmooth(args.num_classes), TripletLoss(0.3)
    return counted(lambda: msp_stage2_loss(out, pids, views, terms, id_loss, triplet, 1.0, 1.0)[0].backward())


def stage1_counts(clip, args, truncate: bool) -> dict:
    encoder = TextEncoder(clip).requires_grad_(False).to(META)
    learner = PromptLearner(args.num_classes, 'A sky photo of a X X X X person.', clip).to(META)
    length = args.eot + 1 if truncate else learner.tokenized.shape[1]
    labels = torch.arange(args.stage1_batch, device=META) % args.num_classes
    image = torch.zeros(args.stage1_batch, clip.text_projection.shape[1], device=META)
    supcon = SupConLoss()

    def step():
        # On meta tensors the end-of-text position cannot be read, so the truncation is done here; SupCon
        # has a data-dependent branch, so it is counted apart on real tensors.
        text = encoder(learner(labels)[:, :length], learner.tokenized[:, :length], truncate=False)
        (text * image).sum().backward()

    flops, ops = counted(step)
    real_image, real_text = torch.randn(image.shape), torch.randn(image.shape, requires_grad=True)
    real_labels = torch.arange(args.stage1_batch) % args.num_classes
    loss_flops, loss_ops = counted(lambda: (supcon(real_image, real_text, real_labels, real_labels)
                                            + supcon(real_text, real_image, real_labels, real_labels)).backward())
    return {'positions': length, 'step_flops': flops + loss_flops,
            'step_ops': ops + loss_ops + 12}  # + Adam on the one context tensor


def measured_matmul_tflops(dtype, size: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * size ** 3 * repeat / (time.perf_counter() - start) / 1e12


def fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='ViT-B-16')
    parser.add_argument('--size', type=int, nargs=2, default=[256, 128])
    parser.add_argument('--stride', type=int, nargs=2, default=[12, 12])
    parser.add_argument('--batch', type=int, default=64, help='SOLVER.STAGE2.IMS_PER_BATCH')
    parser.add_argument('--stage1-batch', type=int, default=64, help='SOLVER.STAGE1.IMS_PER_BATCH')
    parser.add_argument('--eot', type=int, default=12, help="end-of-text position of the prompt (12 for MSP's)")
    parser.add_argument('--num-classes', type=int, default=1050)
    parser.add_argument('--train-images', type=int, default=35330, help='MSSL training images')
    parser.add_argument('--test-images', type=int, default=31600, help='MSSL query + gallery images')
    parser.add_argument('--stage1-epochs', type=int, default=120)
    parser.add_argument('--stage1-views', type=int, default=2)
    parser.add_argument('--stage2-epochs', type=int, default=60)
    parser.add_argument('--eval-period', type=int, default=5)
    parser.add_argument('--gpu-utilisation', type=float, default=0.4,
                        help='assumed fraction of the peak a tuned bf16 step reaches on the GPU (an assumption)')
    parser.add_argument('--op-overhead-us', type=float, default=8.0,
                        help='assumed host cost per eager operation on a GPU (an assumption)')
    parser.add_argument('--step-json', default='', help="bench_train_step.py's CPU JSON: measured utilisation")
    parser.add_argument('--out', default='bench_floor.json')
    args = parser.parse_args(argv)

    info = machine_info(torch.device('cpu'))
    print(f"floor of {args.model} at {args.size[0]}x{args.size[1]} stride {args.stride}, stage-2 batch {args.batch}; "
          f"{describe_machine(info)}", flush=True)
    torch.manual_seed(0)
    clip = build_clip(args.model)
    stage2 = stage2_counts(clip, args)
    stage1 = {'truncated': stage1_counts(clip, args, True), 'full-77': stage1_counts(clip, args, False)}
    cpu_fp32, cpu_bf16 = measured_matmul_tflops(torch.float32), measured_matmul_tflops(torch.bfloat16)

    devices = [
        {'device': f'this CPU fp32 ({cpu_model()}, measured matmul)', 'tflops': cpu_fp32},
        {'device': 'this CPU bf16 (measured matmul)', 'tflops': cpu_bf16},
        {'device': 'H100 SXM bf16 dense (spec)', 'tflops': H100_BF16_TFLOPS},
        {'device': 'H100 SXM tf32 dense (spec)', 'tflops': H100_TF32_TFLOPS},
    ]
    for row in devices:
        rate = row['tflops'] * 1e12
        row['stage2_step_ms'] = stage2['step_flops'] / rate * 1e3
        row['images_per_s'] = args.batch * rate / stage2['step_flops']
        row['stage1_step_ms'] = stage1['truncated']['step_flops'] / rate * 1e3
    print(f"stage-2 step, batch {args.batch}: {stage2['step_flops'] / 1e12:.2f} TFLOP "
          f"({stage2['forward_flops'] / args.batch / 1e9:.1f} GFLOP forward per image), {stage2['step_ops']} "
          f"aten ops, of which {stage2['optimizer_ops_as_built']} in the optimizer as built "
          f"({stage2['optimizer_groups_as_built']} parameter groups, foreach)")
    print(f"inference: {stage2['inference_flops_per_image'] / 1e9:.1f} GFLOP per image")
    for name, counts in stage1.items():
        print(f"stage-1 step ({name}), batch {args.stage1_batch}: {counts['step_flops'] / 1e9:.1f} GFLOP, "
              f"{counts['step_ops']} aten ops")
    print_table(devices, [('device', 'device (peak)', ''), ('tflops', 'TFLOP/s', '.2f'),
                          ('stage2_step_ms', 'stage-2 step ms', '.1f'), ('images_per_s', 'images/s', '.0f'),
                          ('stage1_step_ms', 'stage-1 step ms', '.2f')])

    measured = None
    if args.step_json:
        report = json.loads(Path(args.step_json).read_text())
        per_image = stage2['step_flops'] / args.batch
        measured = []
        for row in report['rows']:
            achieved = row['images_per_s'] * per_image / 1e12
            peak = cpu_bf16 if row['precision'] == 'bf16' else cpu_fp32
            measured.append({'variant': row['variant'], 'images_per_s': row['images_per_s'],
                             'achieved_tflops': achieved, 'of_matmul_peak': achieved / peak})
        print(f"measured on this CPU ({args.step_json}, batch {report['batch']}):")
        print_table(measured, [('variant', 'variant', ''), ('images_per_s', 'images/s', '.2f'),
                               ('achieved_tflops', 'TFLOP/s', '.3f'), ('of_matmul_peak', 'of matmul peak', '.0%')])

    # The whole MSSL recipe on one H100 (estimates).
    steps_per_epoch = args.train_images // args.batch
    stage2_steps = args.stage2_epochs * steps_per_epoch
    stage1_steps = args.stage1_views * args.stage1_epochs * math.ceil(args.train_images / args.stage1_batch)
    evaluations = args.stage2_epochs // args.eval_period + (args.stage2_epochs % args.eval_period != 0)
    forward_images = args.stage1_views * args.train_images + evaluations * args.test_images
    peak, utilisation, overhead = H100_BF16_TFLOPS * 1e12, args.gpu_utilisation, args.op_overhead_us * 1e-6
    stage2_step_s = max(stage2['step_flops'] / (peak * utilisation),
                        (stage2['step_ops'] - stage2['optimizer_ops_as_built'] + 2) * overhead)
    stage1_step_s = max(stage1['truncated']['step_flops'] / (peak * utilisation), stage1['truncated']['step_ops'] * overhead)
    parts = [
        {'part': f'stage 1: {stage1_steps} steps (upper bound: every view sees all training images)',
         'floor_s': stage1_steps * stage1['truncated']['step_flops'] / peak, 'projected_s': stage1_steps * stage1_step_s},
        {'part': f'stage 2: {stage2_steps} steps of {args.batch}',
         'floor_s': stage2_steps * stage2['step_flops'] / peak, 'projected_s': stage2_steps * stage2_step_s},
        {'part': f'forward passes: {forward_images} images ({evaluations} evaluations + stage-1 features)',
         'floor_s': forward_images * stage2['inference_flops_per_image'] / peak,
         'projected_s': forward_images * stage2['inference_flops_per_image'] / (peak * utilisation)},
        {'part': f'evaluator: {evaluations} x ALL at MSSL scale (target < 1 s each)', 'floor_s': None,
         'projected_s': evaluations * 1.0},
    ]
    parts.append({'part': 'total', 'floor_s': sum(p['floor_s'] or 0 for p in parts),
                  'projected_s': sum(p['projected_s'] for p in parts)})
    for part in parts:
        part['floor'] = '-' if part['floor_s'] is None else fmt_time(part['floor_s'])
        part['projected'] = fmt_time(part['projected_s'])
    print(f"MSSL recipe on one H100 SXM, bf16 (ESTIMATES: floor = FLOPs / peak; projected = FLOPs / "
          f"({utilisation:.0%} of peak) or {args.op_overhead_us:g} us per eager op, whichever is larger; "
          f"stage 2 with a fused optimizer):")
    print_table(parts, [('part', 'part', ''), ('floor', 'floor', ''), ('projected', 'projected', '')])
    write_report(args.out, {'args': vars(args), 'machine': info, 'stage2': stage2, 'stage1': stage1,
                            'devices': devices, 'measured_cpu': measured, 'recipe_h100_estimate': parts,
                            'load_average_at_end': os.getloadavg()})


if __name__ == '__main__':
    main()
