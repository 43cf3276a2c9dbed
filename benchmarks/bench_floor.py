"""The hardware floor of MSP training: FLOPs of each kind of step, counted on the meta device (no
weights, no compute), divided by a device's peak rate, and the kernels an eager step launches
(counted on tiny real inputs); then the whole MSSL recipe projected from them. Every time printed here is an estimate from counts and peak rates, not a
measurement, except the CPU's matmul rates (measured) and, with --step-json, the CPU's measured step.

  stage-2 step    forward + MSP loss + backward of the image tower, optimizer step
  stage-1 step    prompt learner + text tower forward/backward (frozen weights) + SupCon, batch 64
  inference       forward of one test image (feature extraction, evaluation)

Usage: python benchmarks/bench_floor.py [--model ViT-B-16 --batch 64 --step-json bench_train_step.json]
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


# Operations that launch no device kernel: views and host-side bookkeeping.
HOST_ONLY = {'_unsafe_view', 'detach', '_local_scalar_dense', '_record_function_enter_new', '_record_function_exit',
             'lift_fresh', 'scalar_tensor'}


class KernelCounter(TorchDispatchMode):
    """Counts the aten operations that launch a kernel when run eagerly on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in HOST_ONLY:
            self.count += 1
        return func(*args, **(kwargs or {}))


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as flops:
        fn()
    return flops.get_total_flops()


def kernels_of(fn) -> int:
    with KernelCounter() as kernels:
        fn()
    return kernels.count


def reid_model(args, size, device) -> ReIDModel:
    torch.manual_seed(0)
    return ReIDModel(build_clip(args.model), args.num_classes, camera_num=15, view_num=2, image_size=size,
                     stride=args.stride, sie_camera=True, sie_view=True, sie_coe=0.5).to(device).train()


def stage2_batch(batch: int, size, num_classes: int, embed_dim: int, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(num_classes, embed_dim, generator=generator).to(device)
    return {'images': torch.randn(batch, 3, *size, generator=generator).to(device),
            'pids': (torch.arange(batch) // 4).to(device), 'cams': (torch.arange(batch) % 15).to(device),
            'views': (torch.arange(batch) % 2).to(device), 'terms': [(text, 'all', 1.0), (text, 'ground', 0.1)]}


def stage2_counts(args) -> dict:
    """FLOPs at full size on the meta device; kernels on real CPU tensors at a tiny image size (the
    operations do not depend on the sizes, and the loss takes data-dependent branches)."""
    id_loss, triplet = CrossEntropyLabelSmooth(args.num_classes), TripletLoss(0.3)
    counts = {}
    for device, size, batch in ((META, args.size, args.batch), (torch.device('cpu'), (32, 16), 8)):
        model = reid_model(args, size, device)
        data = stage2_batch(batch, size, args.num_classes, model.image_encoder.embed_dim, device)
        state = {}

        def forward():
            out = model(data['images'], data['cams'], data['views'])
            if device == META:  # meta tensors cannot take the loss's branches: its FLOPs are negligible
                state['loss'] = sum(s.sum() for s in out['cls_scores']) + sum(f.sum() for f in out['feats'])
            else:
                state['loss'] = msp_stage2_loss(out, data['pids'], data['views'], data['terms'], id_loss,
                                                triplet, 1.0, 1.0)[0]

        if device == META:
            counts['forward_flops'] = flops_of(forward)
            counts['step_flops'] = counts['forward_flops'] + flops_of(lambda: state['loss'].backward())
            model.eval()
            with torch.no_grad():
                counts['inference_flops_per_image'] = flops_of(
                    lambda: model(data['images'], data['cams'], data['views'])) / batch
            continue
        counts['forward_backward_kernels'] = kernels_of(forward) + kernels_of(lambda: state['loss'].backward())
        as_built = torch.optim.Adam(make_optimizer_stage2(model.named_parameters(), 1e-5, 1e-4).param_groups,
                                    lr=1e-5, foreach=True)  # foreach: what CUDA runs by default
        fused = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
        as_built.step(), fused.step()  # the first step also creates the optimizer state
        counts['optimizer_groups_as_built'] = len(as_built.param_groups)
        counts['optimizer_kernels_as_built'] = kernels_of(as_built.step)
        counts['optimizer_kernels_fused'] = kernels_of(fused.step)
        model.eval()
        with torch.no_grad():
            counts['inference_kernels_per_batch'] = kernels_of(lambda: model(data['images'], data['cams'],
                                                                             data['views']))
    return counts


def stage1_counts(args, truncate: bool) -> dict:
    """FLOPs on the meta device, kernels on real CPU tensors (batch 8) of one stage-1 step."""
    supcon = SupConLoss()
    counts = {}
    for device, batch in ((META, args.stage1_batch), (torch.device('cpu'), 8)):
        torch.manual_seed(0)
        clip = build_clip(args.model)
        encoder = TextEncoder(clip, truncate=truncate).requires_grad_(False).to(device)
        learner = PromptLearner(args.num_classes, 'A sky photo of a X X X X person.', clip).to(device)
        labels = torch.arange(batch, device=device) % args.num_classes
        image = torch.zeros(batch, clip.text_projection.shape[1], device=device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-6, foreach=True)
        if device == META:
            # On meta tensors the end-of-text position cannot be read (the truncation is done here),
            # and SupCon's branch cannot be taken (its FLOPs are negligible).
            length = args.eot + 1 if truncate else learner.tokenized.shape[1]
            counts['positions'] = length
            counts['step_flops'] = flops_of(lambda: (encoder(learner(labels)[:, :length],
                                                             learner.tokenized[:, :length], truncate=False)
                                                     * image).sum().backward())
            continue

        def step():
            text = encoder(learner(labels), learner.tokenized)
            (supcon(image, text, labels, labels) + supcon(text, image, labels, labels)).backward()
            optimizer.step()

        step()  # the first step also creates the optimizer state
        counts['step_kernels'] = kernels_of(step)
    return counts


def measured_matmul_tflops(dtype, size: int = 3072, repeat: int = 5) -> float:
    """The best rate of `repeat` square matmuls: the practical peak of this CPU."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float('inf')
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12


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
    stage2 = stage2_counts(args)
    stage1 = {'truncated': stage1_counts(args, True), 'full-77': stage1_counts(args, False)}
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
          f"({stage2['forward_flops'] / args.batch / 1e9:.1f} GFLOP forward per image); eager kernels: "
          f"{stage2['forward_backward_kernels']} forward + loss + backward, optimizer "
          f"{stage2['optimizer_kernels_as_built']} as built ({stage2['optimizer_groups_as_built']} parameter groups, "
          f"foreach) or {stage2['optimizer_kernels_fused']} fused")
    print(f"inference: {stage2['inference_flops_per_image'] / 1e9:.1f} GFLOP per image")
    for name, counts in stage1.items():
        print(f"stage-1 step ({name}: {counts['positions']} positions), batch {args.stage1_batch}: "
              f"{counts['step_flops'] / 1e9:.1f} GFLOP, {counts['step_kernels']} eager kernels")
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

    def step_time(flops: float, kernels: int) -> float:
        """Compute at the assumed utilisation, or the host's eager dispatch, whichever is slower."""
        return max(flops / (peak * utilisation), kernels * overhead)

    stage2_kernels = stage2['forward_backward_kernels']
    one = stage1['truncated']
    parts = [
        {'part': f'stage 1: {stage1_steps} steps of {args.stage1_batch} (upper bound: each view on all images)',
         'floor_s': stage1_steps * one['step_flops'] / peak,
         'projected_s': stage1_steps * step_time(one['step_flops'], one['step_kernels'])},
        {'part': f'stage 2: {stage2_steps} steps of {args.batch}, optimizer as built',
         'floor_s': stage2_steps * stage2['step_flops'] / peak,
         'projected_s': stage2_steps * step_time(stage2['step_flops'],
                                                 stage2_kernels + stage2['optimizer_kernels_as_built'])},
        {'part': f'forward passes: {forward_images} images ({evaluations} evaluations + stage-1 features)',
         'floor_s': forward_images * stage2['inference_flops_per_image'] / peak,
         'projected_s': forward_images * stage2['inference_flops_per_image'] / (peak * utilisation)},
        {'part': f'evaluator: {evaluations} x ALL at MSSL scale (taken as 1 s each; not measured)', 'floor_s': None,
         'projected_s': evaluations * 1.0},
    ]
    fused_stage2 = stage2_steps * step_time(stage2['step_flops'], stage2_kernels + stage2['optimizer_kernels_fused'])
    parts.append({'part': 'total', 'floor_s': sum(p['floor_s'] or 0 for p in parts),
                  'projected_s': sum(p['projected_s'] for p in parts)})
    for part in parts:
        part['floor'] = '-' if part['floor_s'] is None else fmt_time(part['floor_s'])
        part['projected'] = fmt_time(part['projected_s'])
    print(f"MSSL recipe on one H100 SXM, bf16 (ESTIMATES, not measurements: floor = FLOPs / peak; projected = "
          f"per step, FLOPs / ({utilisation:.0%} of peak) or {args.op_overhead_us:g} us of host time per eager "
          f"kernel, whichever is larger):")
    print_table(parts, [('part', 'part', ''), ('floor', 'floor', ''), ('projected', 'projected', '')])
    print(f"with a fused optimizer, stage 2 would project to {fmt_time(fused_stage2)}")
    write_report(args.out, {'args': vars(args), 'machine': info, 'stage2': stage2, 'stage1': stage1,
                            'devices': devices, 'measured_cpu': measured, 'recipe_h100_estimate': parts,
                            'stage2_fused_optimizer_estimate_s': fused_stage2,
                            'load_average_at_end': os.getloadavg()})


if __name__ == '__main__':
    main()
