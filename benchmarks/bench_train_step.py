"""Benchmark one stage-2 training step (forward, the whole MSP loss, backward, optimizer step) of a
randomly initialised ReIDModel, in several precision / attention / compile / memory-layout variants.

Each variant runs in its own process (own memory high-water mark, own compile cache) on the same
seeded weights and batch; the forward features of the first step are compared with the fp32 fused
(SDPA) variant, which is what the framework runs by default.

  published-style  nn.MultiheadAttention module calls, as the published CLIP-ReID code (fp16 autocast
                   on CUDA as it does; fp32 on CPU, where it has no mixed precision)
  explicit         softmax(Q K^T / sqrt(d)) V with the score matrix materialised
  sdpa             ours: F.scaled_dot_product_attention (fused kernels)
  +bf16 / +fp16    autocast (SOLVER.AMP)
  +compile         torch.compile of the model (SOLVER.COMPILE)
  +channels_last   model and images in channels-last memory format
  +per-param-groups  the published optimizer layout: one Adam group per parameter
                   (the framework's make_optimizer_stage2 builds two groups, stepped by foreach Adam)
  clipreid-code    CLIP-ReID's own model, loss and optimizer code (model/make_model_clipreid.py,
                   loss/make_loss.py, solver/make_optimizer_prompt.py of a checkout given with
                   --clipreid-repo; RN50 and ViT-B-16 only), its stage-2 step as do_train_stage2 runs
                   it (fp16 autocast on CUDA, fp32 on CPU), on the same CLIP weights and batch

Every other variant runs the trainer's own step, processor/stage2.py::train_step, with its Stage2Criterion.
--objective clipreid: CLIP-ReID's stage-2 loss (one image-to-text term) instead of MSP's two terms, and
no SIE (its configs leave it off; a ResNet never has it).

Usage: python benchmarks/bench_train_step.py [--model ViT-B-16 --batch 8 --steps 3 --out bench_train_step.json]
       python benchmarks/bench_train_step.py --model RN50 --objective clipreid --clipreid-repo ../CLIP-ReID
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (alternate_steps, attention_path, describe_machine, machine_info, print_table,  # noqa: E402
                          run_worker, sync, write_report)
from published_code import CLIPREID_REPO_HELP, keep_cuda_calls_on_cpu, published_packages  # noqa: E402

from loss.make_loss import Stage2Criterion  # noqa: E402
from model.clip_loader import RESNET_FAMILY, build_clip, image_tower_family  # noqa: E402
from model.make_model_clipreid import ReIDModel  # noqa: E402
from processor.stage2 import train_step  # noqa: E402
from solver.make_optimizer import make_optimizer_stage2  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
REFERENCE = 'sdpa fp32'
CLIPREID_CODE = 'clipreid-code'
PAIRED = 'paired'  # the worker that alternates the trainer's step and CLIP-ReID's in one process
CLIPREID_MODELS = ('RN50', 'ViT-B-16')  # the names CLIP-ReID's model code builds
CPU_VARIANTS = ('published-style', 'explicit fp32', 'sdpa fp32 +per-param-groups', 'sdpa fp32',
                'sdpa fp32 +channels_last', 'sdpa bf16', 'sdpa bf16 +compile')
CUDA_VARIANTS = ('published-style', 'explicit fp32', 'sdpa fp32', 'sdpa bf16 +per-param-groups', 'sdpa bf16',
                 'sdpa bf16 +channels_last', 'sdpa bf16 +compile')


def parse_variant(name: str, device: torch.device) -> dict:
    if name == CLIPREID_CODE:
        return {'attention': 'module', 'precision': 'fp16' if device.type == 'cuda' else 'fp32',
                'compile': False, 'channels_last': False, 'per_param_groups': True}
    if name == 'published-style':
        return {'attention': 'module', 'precision': 'fp16' if device.type == 'cuda' else 'fp32',
                'compile': False, 'channels_last': False, 'per_param_groups': True}
    words = name.split()
    attention, precision, flags = words[0], words[1], set(words[2:])
    if attention not in ('sdpa', 'explicit', 'module') or precision not in DTYPES or \
            not flags <= {'+compile', '+channels_last', '+per-param-groups'}:
        raise SystemExit(f"unknown variant '{name}'")
    return {'attention': attention, 'precision': precision, 'compile': '+compile' in flags,
            'channels_last': '+channels_last' in flags, 'per_param_groups': '+per-param-groups' in flags}


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every few milliseconds
    (torch's CPU allocator has no peak counter; ru_maxrss would include the setup's own peak)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

    def _poll(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())


def per_param_group_adam(model, base_lr, weight_decay, bias_lr_factor, weight_decay_bias):
    """The published optimizer: one Adam group per trainable parameter, the same rates and decays."""
    groups = [{'params': [p], 'lr': base_lr * bias_lr_factor if 'bias' in n else base_lr,
               'weight_decay': weight_decay_bias if 'bias' in n else weight_decay}
              for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.Adam(groups, lr=base_lr)


def is_resnet(model_name: str) -> bool:
    return image_tower_family(model_name) == RESNET_FAMILY


def uses_side_info(spec: dict) -> bool:
    """MSP's camera x view SIE on a ViT; none on a ResNet (as in CLIP-ReID) or with CLIP-ReID's objective
    (its configs leave SIE off)."""
    return spec['objective'] == 'msp' and not is_resnet(spec['model'])


def make_batch(spec: dict, embed_dim: int, cameras: int, device: torch.device) -> dict:
    """The seeded batch and stand-in text features every variant trains on."""
    generator = torch.Generator().manual_seed(1)
    text = {view: torch.nn.functional.normalize(torch.randn(spec['num_classes'], embed_dim, generator=generator),
                                                dim=1).to(device) for view in ('ground', 'sky')}
    batch, k = spec['batch'], 4
    images = torch.randn(batch, 3, *spec['size'], generator=generator).to(device)
    pids = torch.arange(batch // k).repeat_interleave(k).to(device)
    camids = torch.randint(0, cameras, (batch,), generator=generator).to(device)
    # MSP's terms: all images vs ground text, ground images vs sky text; CLIP-ReID's: all images vs its text.
    terms = [(text['ground'], 'all', 1.0)] + ([(text['sky'], 'ground', 0.1)] if spec['objective'] == 'msp' else [])
    return {'images': images, 'pids': pids, 'camids': camids, 'viewids': (camids % 2).to(device), 'terms': terms}


def make_step(spec: dict):
    """The variant's model, optimizer and batch, seeded; returns (step function, variant, device)."""
    device = torch.device(spec['device'])
    variant = parse_variant(spec['variant'], device)
    if spec['variant'] == CLIPREID_CODE:
        return make_clipreid_step(spec, device), variant, device
    torch.manual_seed(0)
    clip = build_clip(spec['model'])
    cameras, views = 15, 2
    side_info = uses_side_info(spec)
    model = ReIDModel(clip, spec['num_classes'], camera_num=cameras, view_num=views,
                      image_size=spec['size'], stride=spec['stride'], sie_camera=side_info, sie_view=side_info,
                      sie_coe=0.5, model_name=spec['model']).to(device).train()
    del clip
    data = make_batch(spec, model.image_encoder.embed_dim, cameras, device)
    images = data['images']

    base_lr, decay = 5e-6, 1e-4
    if variant['per_param_groups']:
        optimizer = per_param_group_adam(model, base_lr, decay, 2.0, decay)
    else:
        optimizer = make_optimizer_stage2(model.named_parameters(), base_lr, decay)
    if variant['channels_last']:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant['compile'] else model
    dtype = DTYPES[variant['precision']]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    criterion = Stage2Criterion(spec['num_classes'], id_weight=1.0, triplet_weight=1.0, margin=0.3,
                                label_smoothing=0.1, i2t_terms=data['terms']).to(device)
    captured = {}

    def forward_and_capture(*args, **kwargs):  # the step keeps the model's outputs to itself
        captured['out'] = forward(*args, **kwargs)
        return captured['out']

    def step():
        captured.clear()
        result = train_step(forward_and_capture, criterion, optimizer, scaler, images, data['pids'],
                            data['camids'], data['viewids'], dtype)
        return result.loss.item(), captured['out']['feats'][1].detach().float().cpu()

    return step, variant, device


def make_clipreid_step(spec: dict, device: torch.device):
    """CLIP-ReID's model (`build_transformer`), `make_loss` and `make_optimizer_2stage` on the same random
    CLIP weights (open_clip's init under seed 0, the other variants' too) and batch; the step is
    do_train_stage2's: zero_grad, forward under its autocast, logits against the text features, its
    loss, scaled backward, scaled optimizer step."""
    import open_clip
    if device.type != 'cuda':
        keep_cuda_calls_on_cpu()
    with published_packages(spec['clipreid_repo']):
        from config import cfg as clipreid_defaults
        import model.make_model_clipreid as clipreid_model
        from loss.make_loss import make_loss
        from solver.make_optimizer_prompt import make_optimizer_2stage

    def random_clip(backbone_name, h_resolution, w_resolution, stride):  # instead of downloading OpenAI's
        torch.manual_seed(0)
        state = open_clip.create_model(spec['model'], pretrained=None, force_quick_gelu=True).state_dict()
        return clipreid_model.clip.build_model(state, h_resolution, w_resolution, stride)

    clipreid_model.load_clip_to_cpu = random_clip
    cfg = clipreid_defaults.clone()
    side_info = uses_side_info(spec)
    cfg.merge_from_list([
        'MODEL.NAME', spec['model'], 'INPUT.SIZE_TRAIN', list(spec['size']), 'MODEL.STRIDE_SIZE', list(spec['stride']),
        'MODEL.SIE_CAMERA', side_info, 'MODEL.SIE_VIEW', side_info, 'MODEL.SIE_COE', 0.5,
        'MODEL.ID_LOSS_WEIGHT', 1.0, 'MODEL.TRIPLET_LOSS_WEIGHT', 1.0, 'MODEL.I2T_LOSS_WEIGHT', 1.0,
        'SOLVER.STAGE2.BASE_LR', 5e-6, 'SOLVER.STAGE2.WEIGHT_DECAY', 1e-4, 'SOLVER.STAGE2.WEIGHT_DECAY_BIAS', 1e-4,
        'SOLVER.STAGE2.BIAS_LR_FACTOR', 2, 'DATASETS.NAMES', 'market1501',
        'DATALOADER.SAMPLER', 'softmax_triplet'])  # what every CLIP-ReID config sets
    cameras, views = 15, 2
    with contextlib.redirect_stdout(sys.stderr):  # it prints as it builds
        model = clipreid_model.make_model(cfg, num_class=spec['num_classes'], camera_num=cameras, view_num=views)
        loss_fn, center_criterion = make_loss(cfg, num_classes=spec['num_classes'])
        optimizer, _ = make_optimizer_2stage(cfg, model, center_criterion)
    model = model.to(device).train()
    data = make_batch(spec, model.in_planes_proj, cameras, device)
    text_features = data['terms'][0][0]
    cams = data['camids'] if side_info else None
    views_ = data['viewids'] if side_info else None
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == 'cuda')

    def step():
        optimizer.zero_grad()
        with torch.autocast(device.type, enabled=device.type == 'cuda'):
            score, feat, image_features = model(x=data['images'], label=data['pids'], cam_label=cams,
                                                view_label=views_)
            logits = image_features @ text_features.t()
            loss = loss_fn(score, feat, data['pids'], cams, logits)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item(), feat[1].detach().float().cpu()

    return step


def worker(spec: dict) -> dict:
    step, variant, device = make_step(spec)
    batch = spec['batch']
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    with attention_path(variant['attention']), PeakRss() as rss:
        sync(device)
        start = time.perf_counter()
        first_loss, first_feat = step()
        first_step_s = time.perf_counter() - start
        for _ in range(spec['warmup'] - 1):
            step()
        sync(device)
        walls, cpu_start = [], time.process_time()
        for _ in range(spec['steps']):
            start = time.perf_counter()
            step()
            sync(device)
            walls.append(time.perf_counter() - start)
        # Share of the cores this process got while timed: below 100% = other processes took CPU time.
        cpu_share = (time.process_time() - cpu_start) / (sum(walls) * torch.get_num_threads())
    np.save(spec['feature_file'], first_feat.numpy())
    seconds = min(walls)  # the least disturbed step on a shared machine
    result = {'variant': spec['variant'], **variant, 'step_s': seconds, 'images_per_s': batch / seconds,
              'mean_step_s': sum(walls) / len(walls), 'cpu_share': cpu_share if device.type == 'cpu' else None,
              'first_step_s': first_step_s, 'first_loss': first_loss,
              'rss_before_mib': rss.start / 2**20, 'rss_peak_mib': rss.peak / 2**20,
              'step_memory_mib': (rss.peak - rss.start) / 2**20}
    if device.type == 'cuda':
        result['cuda_peak_mib'] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def paired_worker(spec: dict) -> dict:
    """The trainer's step (sdpa fp32) and CLIP-ReID's code's step in this one process, alternating step by
    step (the order swapped every round), so that both see the same machine load; the fastest of each,
    in wall time and in this process's CPU time (which other processes on a busy machine disturb less)."""
    device = torch.device(spec['device'])
    ours, _, _ = make_step({**spec, 'variant': REFERENCE})
    theirs = make_clipreid_step({**spec, 'variant': CLIPREID_CODE}, device)
    steps = {'ours': ours, 'clipreid_code': theirs}
    for step in steps.values():
        step()  # warm-up
    walls, cpu = alternate_steps(steps, spec['steps'], device)
    best = {name: min(times) for name, times in walls.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    return {'ours_step_s': best['ours'], 'clipreid_code_step_s': best['clipreid_code'],
            'speedup': best['clipreid_code'] / best['ours'], 'ours_cpu_s': best_cpu['ours'],
            'clipreid_code_cpu_s': best_cpu['clipreid_code'],
            'cpu_speedup': best_cpu['clipreid_code'] / best_cpu['ours'], 'walls': walls, 'cpu': cpu,
            'threads': torch.get_num_threads()}


def clipreid_code_available(args) -> str | None:
    """None when CLIP-ReID's model code can be timed, else why not."""
    if not args.clipreid_repo:
        return 'no --clipreid-repo (a checkout of github.com/Syliz517/CLIP-ReID)'
    if args.model not in CLIPREID_MODELS:
        return f"its model code builds only {' and '.join(CLIPREID_MODELS)}, not {args.model}"
    missing = [f for f in ('model/make_model_clipreid.py', 'loss/make_loss.py', 'solver/make_optimizer_prompt.py')
               if not (Path(args.clipreid_repo) / f).is_file()]
    return f"--clipreid-repo '{args.clipreid_repo}' has no {missing[0]}" if missing else None


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, device and batch of the step (make_step's spec); also benchmarks/bench_deterministic.py's."""
    parser.add_argument('--model', default='ViT-B-16')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=None, help='default: 64 on CUDA, 8 on CPU')
    parser.add_argument('--size', type=int, nargs=2, default=[256, 128])
    parser.add_argument('--stride', type=int, nargs=2, default=None,
                        help='ViT patch stride (default 12 12; a ResNet takes 16 16)')
    parser.add_argument('--objective', default='msp', choices=('msp', 'clipreid'),
                        help="the stage-2 loss: MSP's two image-to-text terms or CLIP-ReID's one")
    parser.add_argument('--clipreid-repo', default='', help=CLIPREID_REPO_HELP)
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads per worker (0: torch default); 1 is steadier on a busy machine')
    parser.add_argument('--num-classes', type=int, default=1050)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_step_arguments(parser)
    parser.add_argument('--steps', type=int, default=None, help='timed steps (default: 20 on CUDA, 3 on CPU)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed steps first (at least 2 with +compile: it compiles in the first)')
    parser.add_argument('--variants', nargs='+', default=None,
                        help=f"default CPU: {', '.join(CPU_VARIANTS)}; CUDA: {', '.join(CUDA_VARIANTS)}")
    parser.add_argument('--timeout', type=float, default=900, help='seconds per variant')
    parser.add_argument('--out', default='bench_train_step.json')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if spec.get('threads'):
            torch.set_num_threads(spec['threads'])
        print(json.dumps(paired_worker(spec) if spec['variant'] == PAIRED else worker(spec)))
        return

    device = torch.device(args.device)
    on_cuda = device.type == 'cuda'
    batch = args.batch or (64 if on_cuda else 8)
    steps = args.steps or (20 if on_cuda else 3)
    resnet = is_resnet(args.model)
    args.stride = args.stride or ([16, 16] if resnet else [12, 12])
    variants = list(args.variants or (CUDA_VARIANTS if on_cuda else CPU_VARIANTS))
    if REFERENCE not in variants:
        variants = [REFERENCE, *variants]
    clipreid_note = clipreid_code_available(args)
    if clipreid_note is None and CLIPREID_CODE not in variants:
        variants.append(CLIPREID_CODE)
    elif clipreid_note is not None:
        variants = [v for v in variants if v != CLIPREID_CODE]
    info = machine_info(device)
    if resnet:
        geometry = f"last-stage map {args.size[0] // 16}x{args.size[1] // 16}, no SIE"
    else:
        grid = [(s - 16) // t + 1 for s, t in zip(args.size, args.stride)]
        geometry = (f"stride {args.stride} ({grid[0]}x{grid[1]}+1 = {grid[0] * grid[1] + 1} tokens), "
                    f"{'camera x view SIE' if args.objective == 'msp' else 'no SIE'}")
    print(f"stage-2 step ({args.objective} loss), {args.model} random init, {args.size[0]}x{args.size[1]} {geometry}, "
          f"batch {batch}, {steps} timed steps after {args.warmup} warm-up (2 with +compile); "
          f"{describe_machine(info)}", flush=True)
    if clipreid_note:
        print(f"CLIP-ReID's model code is not timed: {clipreid_note}", flush=True)

    rows, features = [], {}
    scratch = Path(args.out).with_suffix('.features')
    scratch.mkdir(exist_ok=True)
    for n, name in enumerate(variants):
        spec = {'variant': name, 'model': args.model, 'device': args.device, 'batch': batch, 'size': args.size,
                'stride': args.stride, 'num_classes': args.num_classes, 'steps': steps, 'objective': args.objective,
                'clipreid_repo': args.clipreid_repo, 'threads': args.threads,
                'warmup': max(args.warmup, 2 if '+compile' in name else 1), 'feature_file': str((scratch / f'{n}.npy').resolve())}
        row = run_worker(str(Path(__file__).resolve()), spec, args.timeout)
        features[name] = np.load(spec['feature_file'])
        rows.append(row)
        print(f"  {name}: {row['images_per_s']:.2f} images/s", flush=True)
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    paired = None
    if clipreid_note is None:
        paired = run_worker(str(Path(__file__).resolve()), {**spec, 'variant': PAIRED, 'steps': max(steps, 3)},
                            2 * args.timeout)

    reference = features[REFERENCE]
    scale = float(np.abs(reference).max())
    published = next((r for r in rows if r['variant'] == 'published-style'), None)
    clipreid = next((r for r in rows if r['variant'] == CLIPREID_CODE), None)
    for row in rows:
        row['speedup_vs_clipreid_code'] = (row['images_per_s'] / clipreid['images_per_s']) if clipreid else None
        row['max_abs_diff_vs_sdpa_fp32'] = float(np.abs(features[row['variant']] - reference).max())
        row['rel_diff_vs_sdpa_fp32'] = row['max_abs_diff_vs_sdpa_fp32'] / scale
        row['speedup_vs_published_style'] = (row['images_per_s'] / published['images_per_s']) if published else None
        row['step_ms'] = row['step_s'] * 1e3
        row['memory_mib'] = row.get('cuda_peak_mib', row['step_memory_mib'])
    memory_header = 'peak CUDA MiB' if on_cuda else 'step RSS MiB'
    print_table(rows, [('variant', 'variant', ''), ('images_per_s', 'images/s', '.2f'),
                       ('step_ms', 'step ms', '.0f'), ('speedup_vs_published_style', 'x published', '.2f'),
                       ('speedup_vs_clipreid_code', 'x CLIP-ReID code', '.2f'),
                       ('memory_mib', memory_header, '.0f'), ('first_step_s', 'first step s', '.1f'),
                       ('cpu_share', 'CPU share', '.0%'),
                       ('rel_diff_vs_sdpa_fp32', 'feat rel diff', '.1e'), ('first_loss', 'loss', '.4f')])
    print(f"{memory_header}: " + ('torch.cuda.max_memory_allocated over all steps (weights included)'
                                  if on_cuda else 'peak resident memory during all steps minus before the first '
                                  '(activations, gradients, optimizer state; with +compile also the compiler)'))
    print("images/s and step ms: the fastest timed step; CPU share: process CPU time / (wall time x threads) "
          "over the timed steps (below 100%: other processes competed)")
    print("feat rel diff: max |feature - sdpa fp32 feature| / max |sdpa fp32 feature|, first step's forward")
    if paired:
        rounds = len(paired['walls']['ours'])
        print(f"same process, alternating for {rounds} rounds ({paired['threads']} threads), fastest step of each: "
              f"the trainer's step (sdpa fp32) {paired['ours_step_s'] * 1e3:.0f} ms wall / "
              f"{paired['ours_cpu_s'] * 1e3:.0f} ms CPU, CLIP-ReID's code {paired['clipreid_code_step_s'] * 1e3:.0f} ms "
              f"/ {paired['clipreid_code_cpu_s'] * 1e3:.0f} ms: {paired['speedup']:.2f}x wall, "
              f"{paired['cpu_speedup']:.2f}x CPU")
    write_report(args.out, {'args': vars(args), 'batch': batch, 'steps': steps, 'machine': info,
                            'load_average_at_end': os.getloadavg(), 'rows': rows, 'paired': paired})


if __name__ == '__main__':
    main()
