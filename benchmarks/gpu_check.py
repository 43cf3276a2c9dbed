"""The GPU checks in one command: correctness on the device, then speed, then a projection of the
whole MSSL recipe. Written for the first minutes on a CUDA machine (under 8 minutes on one GPU); with
`--device cpu --quick` every part runs at toy size on the CPU, which is what CI runs.

  device_checks  the tiny model's features and gradients on the device against the CPU (TF32 off),
                 bf16 autocast against fp32, and the evaluator on the device against the CPU and
                 against the published evaluator's algorithm
  short_run      stage 1 + stage 2 of the demo config, two epochs each, MODEL.DEVICE <device>
  resume         train straight, and train with a SIGKILL after an epoch then SOLVER.RESUME auto:
                 the resumed weights must equal the straight ones bitwise, or, where a second
                 straight run differs from the first too (non-deterministic kernels), lie within
                 10x of that run-to-run difference
  train_step     the stage-2 step of ViT-B/16 at 256x128 stride 12, batch 64, in fp32, bf16 and
                 bf16 + torch.compile (benchmarks/bench_train_step.py): images/s, peak memory, achieved
                 TFLOP/s (FLOPs from benchmarks/bench_floor.py) and its fraction of the device's matmul
                 rate; and a stage-1 step (benchmarks/bench_stage1.py)
  evaluator      benchmarks/bench_eval.py at MSSL scale (3,000 x 28,600 x 1,280-d) on the device
  extraction     ViT-B/16 feature extraction images/s (fp32, bf16)
  loader         the training loader's images/s with the machine's cores on images resized to an
                 assumed MSSL-like source size, against the step rate of train_step
  demo           bash tools/demo.sh with two epochs per stage, wall time
  projection     the full MSSL recipe's time on this device from the measured rates

Writes DIR/gpu_check.json and DIR/gpu_check.md (rewritten after every part, so a run cut short still
leaves what it measured) and keeps every part's own files under DIR/work/ (its output in work/PART.log).

Time: each part runs in a process of its own, in its own process group, with a deadline (DEADLINE_S);
at the deadline the whole group is killed (the part's training runs, loader workers and benchmark
workers with it, so nothing keeps the GPU), and whatever a part sets (TF32) ends with it. A part starts
only if its deadline fits in what is left of --budget-s, so a full run ends within the budget (450 s)
plus the driver's own seconds: under 8 minutes, whatever the GPU. Skipped and killed parts are printed
and reported with the reason. With --quick every deadline is QUICK_DEADLINE_SCALE times longer (toy sizes
on a CPU shared with other work).

Usage: bash benchmarks/gpu_check.sh --out DIR [--device cuda] [--quick] [--parts evaluator loader ...]
                                    [--deadline train_step=150 ...] [--published-repo PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
for path in (str(ROOT), str(TOOLS)):
    if path not in sys.path:
        sys.path.insert(0, path)

from utils.atomic_io import write_text  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

PARTS = ('device_checks', 'short_run', 'resume', 'train_step', 'evaluator', 'extraction', 'loader', 'demo',
         'projection')
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'mssl_synthetic.yml'
# Dense (no sparsity) peak rates from NVIDIA's data sheets, TFLOP/s: fp32 (no tensor cores), bf16.
SPEC_TFLOPS = {'H200': (66.9, 989.4), 'H100 SXM': (66.9, 989.4), 'H100 PCIe': (51.2, 756.0), 'H100': (66.9, 989.4),
               'A100': (19.5, 312.0), 'L40S': (91.6, 362.1), 'L4': (30.3, 121.0), 'A10': (31.2, 125.0)}
# The MSSL recipe (configs/person/vit_clipreid.yml and the dataset): what the projection multiplies.
RECIPE = {'train_images': 35330, 'test_images': 31600, 'stage1_views': 2, 'stage1_epochs': 120,
          'stage1_batch': 64, 'stage2_epochs': 60, 'stage2_batch': 64, 'eval_period': 5}
RESUME_NOISE_FACTOR = 10.0
# Each part's deadline in seconds on one GPU ('data': making the synthetic MSSL when --data is not given).
# They sum to BUDGET_S: the whole check cannot run longer, and 450 s leaves the driver half a minute of
# its 8. Sized from the CPU runs and FLOP counts (a cold torch.compile of ViT-B/16 is the largest item).
DEADLINE_S = {'data': 20, 'device_checks': 25, 'short_run': 45, 'resume': 70, 'train_step': 130, 'evaluator': 35,
              'extraction': 25, 'loader': 35, 'demo': 55, 'projection': 10}
BUDGET_S = 450.0
QUICK_DEADLINE_SCALE = 4
NEEDS_DATA = ('short_run', 'resume', 'loader', 'demo')
LOADER_SOURCE_SIZE = (128, 256)  # width x height; assumed, see docs/BENCHMARKS.md


def sizes(args) -> SimpleNamespace:
    """Model and data sizes of each part: the real ones, or toys with --quick."""
    if args.quick:
        return SimpleNamespace(model='ViT-Tiny-16', size=(64, 32), stride=(12, 12), batch=8, steps=1,
                               extract_batch=8, extract_batches=2, matmul=512, eval_args=[
                                   '--num-query', '300', '--num-gallery', '2000', '--dim', '64', '--num-ids', '200'],
                               variants=['sdpa fp32', 'sdpa bf16'], stage1_batch=8,
                               stage1_variants=['truncated sdpa'], workers=[0],
                               loader_batches=2, data=dict(train_ids=8, test_ids=4, images_per_view=4))
    cores = os.cpu_count() or 1
    return SimpleNamespace(model='ViT-B-16', size=(256, 128), stride=(12, 12), batch=64, steps=10,
                           extract_batch=128, extract_batches=10, matmul=8192,
                           eval_args=['--baseline-queries', '300', '--repeat', '2'],
                           variants=['sdpa fp32', 'sdpa bf16', 'sdpa bf16 +compile'], stage1_batch=64,
                           stage1_variants=['truncated sdpa', 'truncated sdpa bf16'],
                           workers=sorted({min(4, cores), min(8, cores), cores}), loader_batches=8,
                           data=dict(train_ids=60, test_ids=40, images_per_view=10))


def short_training_overrides(args) -> list:
    """KEY VALUE overrides of the demo config for the short runs: two epochs per stage (toy sizes with
    --quick)."""
    opts = ['MODEL.DEVICE', args.device, 'SOLVER.STAGE1.MAX_EPOCHS', '2', 'SOLVER.STAGE1.WARMUP_EPOCHS', '1',
            'SOLVER.STAGE2.MAX_EPOCHS', '2', 'SOLVER.STAGE2.WARMUP_EPOCHS', '1', 'SOLVER.STAGE2.STEPS', '[2]',
            'SOLVER.STAGE2.EVAL_PERIOD', '2', 'SOLVER.STAGE2.CHECKPOINT_PERIOD', '2']
    if args.quick:
        opts += ['INPUT.SIZE_TRAIN', '[64,32]', 'INPUT.SIZE_TEST', '[64,32]', 'INPUT.PADDING', '4',
                 'DATALOADER.NUM_WORKERS', '0', 'SOLVER.STAGE1.IMS_PER_BATCH', '16',
                 'SOLVER.STAGE2.IMS_PER_BATCH', '16', 'TEST.IMS_PER_BATCH', '32']
    return opts


def tiny_training_opts(args, out_dir: str, data: str) -> list:
    return ['--config_file', str(DEMO_CONFIG), 'DATASETS.ROOT_DIR', data, 'OUTPUT_DIR', out_dir,
            *short_training_overrides(args)]


# ---------------------------------------------------------------------------------------------- parts

def part_device_checks(ctx) -> dict:
    from bench_eval import make_data
    from model.clip_loader import build_clip
    from model.make_model_clipreid import ReIDModel
    from utils.device import autocast
    from evaluation.rank import MODES, evaluate_protocols, mode_query_mask
    device = ctx.device
    if device.type == 'cuda':  # TF32 would make fp32 differ from the CPU by ~1e-3; compare true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cpu_model = ReIDModel(build_clip('ViT-Tiny-16'), 20, camera_num=15, view_num=2, image_size=(64, 32),
                          stride=(12, 12), sie_camera=True, sie_view=True, sie_coe=0.5)
    moved = ReIDModel(build_clip('ViT-Tiny-16'), 20, camera_num=15, view_num=2, image_size=(64, 32),
                      stride=(12, 12), sie_camera=True, sie_view=True, sie_coe=0.5)
    moved.load_state_dict(cpu_model.state_dict())
    moved.to(device)
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    cams, views = torch.arange(8) % 15, torch.arange(8) % 2

    def relative(a, b):
        return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max()
                     / b.detach().float().abs().max().clamp_min(1e-12))

    cpu_model.eval(), moved.eval()
    with torch.no_grad():
        feat_cpu = cpu_model(images, cams, views)
        feat_dev = moved(images.to(device), cams.to(device), views.to(device))
        with autocast(device, torch.bfloat16):
            feat_bf16 = moved(images.to(device), cams.to(device), views.to(device))
    cpu_model.train(), moved.train()
    grads = []
    for net, where in ((cpu_model, torch.device('cpu')), (moved, device)):
        out = net(images.to(where), cams.to(where), views.to(where))
        loss = sum(s.float().pow(2).mean() for s in out['cls_scores']) + sum(f.float().pow(2).mean()
                                                                               for f in out['feats'])
        loss.backward()
        grads.append(torch.cat([p.grad.flatten().cpu() for p in net.parameters() if p.grad is not None]))
    checks = {'features_fp32_rel_diff': relative(feat_dev, feat_cpu),
              'gradients_fp32_rel_diff': relative(grads[1], grads[0]),
              'features_bf16_rel_diff': relative(feat_bf16, feat_cpu)}
    limits = {'features_fp32_rel_diff': 1e-4, 'gradients_fp32_rel_diff': 1e-3, 'features_bf16_rel_diff': 5e-2}

    data = make_data(400, 3000, 64, 150, 15, seed=1)
    labels = [data[k] for k in ('q_pids', 'g_pids', 'q_camids', 'g_camids', 'q_views', 'g_views')]
    protocols = [(mode, np.flatnonzero(mode_query_mask(mode, data['q_views'])), None) for mode in MODES]
    # In float64: float32 distances from the device's matmul differ from the CPU's in the last bits, which
    # reorders near-ties and moves the metrics by ~1e-6 with both evaluators right.
    qf, gf = data['qf'].double(), data['gf'].double()
    on_cpu = evaluate_protocols(qf, gf, *labels, protocols, chunk_size=128)
    on_device = evaluate_protocols(qf.to(device), gf.to(device), *labels, protocols, chunk_size=128)
    eval_diff = 0.0
    for mode, rows, _ in protocols:
        a, b = on_device[mode], on_cpu[mode]
        eval_diff = max(eval_diff, abs(a['mAP'] - b['mAP']), abs(a['mINP'] - b['mINP']),
                        float(np.abs(a['cmc'] - b['cmc']).max()))
    # The CPU evaluator equals the published one on the published protocol vectors (tests/test_metrics.py).
    checks['evaluator_device_vs_cpu'] = eval_diff
    limits.update(evaluator_device_vs_cpu=1e-6)
    failed = [k for k in checks if not checks[k] <= limits[k]]
    summary = ', '.join(f"{k} {checks[k]:.1e} (limit {limits[k]:.0e})" for k in checks)
    return {'status': 'fail' if failed else 'pass', 'summary': summary, 'checks': checks, 'limits': limits,
            'failed': failed}


def part_short_run(ctx) -> dict:
    import train_clipreid
    out = ctx.work / 'short_run'
    start = time.perf_counter()
    train_clipreid.main(tiny_training_opts(ctx.args, str(out), ctx.data))
    seconds = time.perf_counter() - start
    results = {p.stem.split('_', 1)[1]: json.loads(p.read_text()) for p in sorted(out.glob('results_*.json'))}
    finite = bool(results) and all(math.isfinite(r['mAP']) and math.isfinite(r['rank1']) for r in results.values())
    summary = (f"{seconds:.1f} s; " + ', '.join(f"{m} mAP {r['mAP']:.1%} R1 {r['rank1']:.1%}"
                                                 for m, r in results.items()))
    return {'status': 'pass' if finite else 'fail', 'summary': summary, 'seconds': seconds,
            'results': {m: {k: r[k] for k in ('mAP', 'rank1', 'mINP')} for m, r in results.items()}}


def _final_weights(out: Path) -> dict:
    checkpoints = sorted(out.glob('*_[0-9]*.pth'), key=lambda p: int(p.stem.rsplit('_', 1)[1]))
    return torch.load(checkpoints[-1], map_location='cpu', weights_only=True)['model']


def _max_difference(a: dict, b: dict) -> tuple[float, bool]:
    worst, equal = 0.0, True
    for key in a:
        if a[key].is_floating_point():
            if not torch.equal(a[key], b[key]):
                equal = False
                worst = max(worst, float((a[key].double() - b[key].double()).abs().max()))
        elif not torch.equal(a[key], b[key]):
            equal, worst = False, float('inf')
    return worst, equal


def part_resume(ctx) -> dict:
    import train_clipreid
    epochs = 2  # killed after the first
    opts = ['SOLVER.STAGE2.MAX_EPOCHS', str(epochs), 'SOLVER.STAGE2.EVAL_PERIOD', str(epochs + 1),
            'SOLVER.STAGE2.CHECKPOINT_PERIOD', str(epochs), 'MODEL.I2T_LOSS_WEIGHTS', '(0.0, 0.0, 0.0)']
    runs = {name: ctx.work / f'resume_{name}' for name in ('straight', 'again', 'killed')}
    train_clipreid.main(tiny_training_opts(ctx.args, str(runs['straight']), ctx.data) + opts)
    # The interrupted run: a separate process, SIGKILLed once the state after an epoch is on disk.
    killed = runs['killed']
    command = [sys.executable, str(ROOT / 'train_clipreid.py'),
               *tiny_training_opts(ctx.args, str(killed), ctx.data), *opts]
    log_path = ctx.work / 'resume_killed.log'
    with open(log_path, 'w') as log:  # a file, not a pipe: a full pipe would stall the child
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        resume_file, killed_after, deadline = killed / 'resume.pth', None, time.perf_counter() + ctx.seconds_left()
        while process.poll() is None and time.perf_counter() < deadline:
            if resume_file.exists():
                try:
                    killed_after = torch.load(resume_file, map_location='cpu', weights_only=True)['epoch']
                except Exception:  # noqa: BLE001 - being replaced right now; atomic, so the next read works
                    killed_after = None
                if killed_after is not None and killed_after >= 1:
                    break
            time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    if killed_after is None or killed_after >= epochs or process.returncode != -signal.SIGKILL:
        tail = log_path.read_text()[-300:]
        return {'status': 'fail', 'summary': f"the run to interrupt was not killed after an epoch (exit "
                                             f"{process.returncode}, last resume epoch {killed_after}): {tail}"}
    train_clipreid.main(tiny_training_opts(ctx.args, str(killed), ctx.data) + opts + ['SOLVER.RESUME', 'auto'])
    straight, resumed = _final_weights(runs['straight']), _final_weights(killed)
    drift, bitwise = _max_difference(resumed, straight)
    noise, repeatable = 0.0, True
    if bitwise:
        status, rule = 'pass', 'bitwise equal'
    else:  # how far apart do two uninterrupted runs end? (non-deterministic kernels on a GPU)
        train_clipreid.main(tiny_training_opts(ctx.args, str(runs['again']), ctx.data) + opts)
        noise, repeatable = _max_difference(_final_weights(runs['again']), straight)
        if repeatable:
            status, rule = 'fail', 'two straight runs are bitwise equal, so the resumed one must be too'
        else:
            status = 'pass' if drift <= RESUME_NOISE_FACTOR * noise else 'fail'
            rule = (f"two straight runs differ by {noise:.2e} (non-deterministic kernels); the resumed one must "
                    f"lie within {RESUME_NOISE_FACTOR:g}x that")
    return {'status': status, 'summary': f"killed after epoch {killed_after} of {epochs}, resumed: max |diff| "
                                         f"{drift:.2e} vs straight; {rule}",
            'killed_after_epoch': killed_after, 'epochs': epochs, 'bitwise_equal': bitwise,
            'max_abs_diff_resumed_vs_straight': drift, 'rule': rule,
            'max_abs_diff_straight_vs_straight': None if bitwise else noise}


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeat: int = 5) -> float:
    """The best rate of square matmuls on `device`: its practical peak for that dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float('inf')
    for n in range(repeat + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if n:  # the first call is a warm-up
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def spec_tflops(gpu_name: str):
    for key, rates in SPEC_TFLOPS.items():
        if key in gpu_name:
            return dict(zip(('fp32', 'bf16'), rates))
    return None


def part_train_step(ctx) -> dict:
    import bench_floor
    import bench_stage1
    import bench_train_step
    s, device = ctx.sizes, ctx.device

    def step_rows(variants: list, name: str, reserve_s: float) -> list:
        out = ctx.work / f'{name}.json'
        bench_train_step.main(['--model', s.model, '--device', str(device), '--batch', str(s.batch), '--size',
                               *map(str, s.size), '--stride', *map(str, s.stride), '--steps', str(s.steps),
                               '--out', str(out), '--timeout', f'{max(ctx.seconds_left() - reserve_s, 1):.0f}',
                               '--variants', *variants])
        return json.loads(out.read_text())['rows']

    # The compiled variant last and on its own: a cold compile is the least predictable item, and if it
    # does not finish before the part's deadline the other rows are kept.
    compiled = [v for v in s.variants if '+compile' in v]
    measured = step_rows([v for v in s.variants if v not in compiled], 'train_step', reserve_s=40)
    stage1_out = ctx.work / 'stage1_step.json'
    bench_stage1.main(['--model', s.model, '--device', str(device), '--batch', str(s.stage1_batch),
                       '--steps', str(max(s.steps, 2)), '--repeat', '1', '--compare-ids', '16',
                       '--variants', *s.stage1_variants, '--out', str(stage1_out)])
    stage1 = json.loads(stage1_out.read_text())['rows']
    counts = bench_floor.stage2_counts(SimpleNamespace(model=s.model, size=list(s.size), stride=list(s.stride),
                                                       batch=s.batch, num_classes=1050))
    if device.type == 'cuda':  # what the fp32 step runs: full fp32 unless TF32 is switched on
        torch.backends.cuda.matmul.allow_tf32 = False
    peaks = {'fp32': measured_matmul_tflops(device, torch.float32, s.matmul),
             'bf16': measured_matmul_tflops(device, torch.bfloat16, s.matmul)}
    spec = spec_tflops(ctx.env.get('gpu', '')) if device.type == 'cuda' else None
    compile_note = ''
    if compiled:
        try:
            measured += [row for row in step_rows(compiled, 'train_step_compiled', reserve_s=3)
                         if row['variant'] in compiled]
        except (subprocess.TimeoutExpired, RuntimeError) as error:
            compile_note = f"{', '.join(compiled)} not measured: {type(error).__name__} before the part's deadline"
    rows = []
    for row in measured:
        achieved = row['images_per_s'] * counts['step_flops'] / s.batch / 1e12
        precision = row['precision']
        rows.append({'variant': row['variant'], 'images_per_s': row['images_per_s'], 'step_ms': row['step_ms'],
                     'peak_memory_mib': row['memory_mib'], 'achieved_tflops': achieved,
                     'of_measured_matmul_peak': achieved / peaks[precision],
                     'of_spec_peak': achieved / spec[precision] if spec else None,
                     'feature_rel_diff': row['rel_diff_vs_sdpa_fp32'], 'loss': row['first_loss']})
    best = max(rows, key=lambda r: r['images_per_s'])
    summary = '; '.join(f"{r['variant']} {r['images_per_s']:.1f} images/s, {r['peak_memory_mib']:.0f} MiB, "
                        f"{r['achieved_tflops']:.3g} TFLOP/s = {r['of_measured_matmul_peak']:.0%} of matmul peak"
                        for r in rows)
    return {'status': 'measured', 'summary': summary, 'rows': rows, 'step_flops': counts['step_flops'],
            'batch': s.batch, 'model': s.model, 'size': list(s.size), 'stride': list(s.stride),
            'measured_matmul_tflops': peaks, 'spec_tflops': spec, 'best_variant': best['variant'],
            'stage1_rows': [{'variant': r['variant'], 'step_ms': r['step_ms']} for r in stage1],
            'stage1_batch': s.stage1_batch,
            'note': compile_note if compiled else
                    'bf16 + compile left out with --quick (a cold compile takes about a minute on a CPU)'}


def part_evaluator(ctx) -> dict:
    import bench_eval
    published = ['--published-repo', ctx.args.published_repo] if ctx.args.published_repo else []
    args = bench_eval.parse_args([*ctx.sizes.eval_args, *published, '--device', str(ctx.device),
                                  '--out', str(ctx.work / 'eval.json')])
    report = bench_eval.run(args)
    bench_eval.print_table(report)
    write_text(args.out, json.dumps(report, indent=1))
    every = report['rows'][-1]
    baseline = (f", the published code {every['published_s']:.2f} s on the CPU ({every['speedup_vs_published']:.1f}x); "
                f"metrics equal within 1e-6 on the published distances" if published
                else '; the published code not run (no --published-repo)')
    return {'status': 'measured', 'summary': f"ALL ({every['num_query']} protocol queries x {every['num_gallery']} "
                                             f"gallery): ours {every['ours_s']:.2f} s on {ctx.device}" + baseline,
            'all_seconds': every['ours_s'], 'rows': report['rows'], 'dim': args.dim}


def part_extraction(ctx) -> dict:
    from model.clip_loader import build_clip
    from model.make_model_clipreid import ReIDModel
    from utils.device import autocast
    s, device = ctx.sizes, ctx.device
    torch.manual_seed(0)
    model = ReIDModel(build_clip(s.model), 1050, camera_num=15, view_num=2, image_size=s.size, stride=s.stride,
                      sie_camera=True, sie_view=True, sie_coe=0.5).to(device).eval()
    images = torch.randn(s.extract_batch, 3, *s.size, device=device)
    cams = torch.arange(s.extract_batch, device=device) % 15
    views = torch.arange(s.extract_batch, device=device) % 2
    rows = []
    for name, dtype in (('fp32', None), ('bf16', torch.bfloat16)):
        with torch.no_grad(), autocast(device, dtype):
            for _ in range(2):
                model(images, cams, views)
            sync(device)
            start = time.perf_counter()
            for _ in range(s.extract_batches):
                model(images, cams, views)
            sync(device)
        seconds = time.perf_counter() - start
        rows.append({'precision': name, 'images_per_s': s.extract_batch * s.extract_batches / seconds})
    return {'status': 'measured', 'model': s.model, 'batch': s.extract_batch, 'rows': rows,
            'summary': ', '.join(f"{r['precision']} {r['images_per_s']:.0f} images/s" for r in rows)
            + f" ({s.model}, {s.size[0]}x{s.size[1]}, batch {s.extract_batch})"}


def _sized_copy(source: Path, target: Path, size: tuple[int, int]) -> None:
    """The synthetic MSSL with every training image resized to `size` (real crops are larger than the
    synthetic ones, and decoding and resizing cost grows with the source size); test images copied."""
    import shutil
    from PIL import Image
    for split in source.iterdir():
        if not split.is_dir():
            continue
        if split.name != 'bounding_box_train':
            shutil.copytree(split, target / split.name, dirs_exist_ok=True)
            continue
        for image_path in split.rglob('*.jpg'):
            destination = target / image_path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(image_path) as image:
                image.convert('RGB').resize(size, Image.BICUBIC).save(destination, quality=90)


def part_loader(ctx) -> dict:
    import bench_loader
    from config import load_config
    from datasets import init_dataset
    s = ctx.sizes
    sized = ctx.work / 'mssl_sized'
    if not sized.exists():
        _sized_copy(Path(ctx.data), sized, LOADER_SOURCE_SIZE)
    dataset = init_dataset('mssl', str(sized))
    rows = []
    for workers in s.workers:
        cfg = load_config('', ['DATASETS.NAMES', 'mssl', 'DATASETS.ROOT_DIR', str(sized),
                               'INPUT.SIZE_TRAIN', str(list(s.size)), 'INPUT.SIZE_TEST', str(list(s.size)),
                               'SOLVER.STAGE2.IMS_PER_BATCH', '16' if ctx.args.quick else '64',
                               'DATALOADER.NUM_WORKERS', str(workers), 'MODEL.DEVICE', str(ctx.device)])
        rows.append(bench_loader.loader_rate(cfg, dataset.train, ctx.device, s.loader_batches))
    step = ctx.results.get('train_step', {})
    step_rate = max((r['images_per_s'] for r in step.get('rows', [])), default=None)
    best = max(rows, key=lambda r: r['images_per_s'])
    for row in rows:
        row['loader_over_step'] = row['images_per_s'] / step_rate if step_rate else None
    if step_rate:
        verdict = ('the device is fed' if best['images_per_s'] >= step_rate else 'the loader limits training') + \
                  f" ({best['images_per_s']:.0f} images/s with {best['workers']} workers vs the fastest step's " \
                  f"{step_rate:.0f})"
    else:
        verdict = f"{best['images_per_s']:.0f} images/s with {best['workers']} workers (no step rate measured)"
    return {'status': 'measured', 'summary': verdict, 'rows': rows, 'step_rate': step_rate,
            'source_size': list(LOADER_SOURCE_SIZE), 'cpu_count': os.cpu_count()}


def part_demo(ctx) -> dict:
    out = ctx.work / 'demo'
    # The demo's script as a user runs it, with two epochs per stage (its 20 + 60 epochs would not fit the
    # 8 minutes; the projection covers the full recipe); with --quick also at toy size.
    overrides = short_training_overrides(ctx.args)
    env = dict(os.environ, PYTHON=sys.executable, DEMO_DATA=ctx.data, DEMO_OUT=str(out), DEMO_OPTS=' '.join(overrides))
    start = time.perf_counter()
    # No timeout of its own: at the part's deadline the driver kills the part's process group, the demo's
    # bash and the Python processes it started included.
    done = subprocess.run(['bash', str(ROOT / 'tools' / 'demo.sh')], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    (ctx.work / 'demo.log').write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {'status': 'fail', 'summary': f"tools/demo.sh exited {done.returncode} after {seconds:.0f} s: "
                                             f"{done.stderr.strip().splitlines()[-1:] }", 'seconds': seconds}
    results = {p.stem.split('_', 1)[1]: json.loads(p.read_text())['mAP']
               for p in sorted((out / 'test').glob('results_*.json'))}
    return {'status': 'pass' if results else 'fail', 'seconds': seconds, 'trained_mAP': results,
            'summary': f"{seconds:.0f} s wall for the whole demo; trained mAP "
                       + ', '.join(f"{m} {v:.1%}" for m, v in results.items())}


def part_data(ctx) -> dict:
    from datasets.synthetic_mssl import generate
    generate(ctx.data, seed=0, overwrite=True, **ctx.sizes.data)
    return {'status': 'pass', 'summary': f"synthetic MSSL in {ctx.data}"}


def part_projection(ctx) -> dict:
    """The MSSL recipe from measured rates: stage 1 (feature caching + steps), stage 2 at the slower of
    the step and the loader, and the periodic evaluations (extraction + evaluator)."""
    step, evaluator = ctx.results.get('train_step'), ctx.results.get('evaluator')
    extraction, loader = ctx.results.get('extraction'), ctx.results.get('loader')
    missing = [name for name, part in (('train_step', step), ('evaluator', evaluator), ('extraction', extraction),
                                       ('loader', loader)) if not part or 'rows' not in part]
    if missing:
        return {'status': 'skipped', 'summary': f"needs the parts {', '.join(missing)}"}
    r = RECIPE
    # The recipe runs SOLVER.AMP auto (bf16 where supported) without compile: the 'sdpa bf16' row.
    recipe_row = next((row for row in step['rows'] if row['variant'] == 'sdpa bf16'), step['rows'][0])
    scale_batch = r['stage2_batch'] / step['batch']  # quick: a toy batch, the per-image rate is what is used
    step_rate = recipe_row['images_per_s']
    loader_rate = max(row['images_per_s'] for row in loader['rows'])
    fed_rate = min(step_rate, loader_rate)
    extract_rate = next(row['images_per_s'] for row in extraction['rows'] if row['precision'] == 'bf16')
    stage1_ms = min(row['step_ms'] for row in step['stage1_rows'])
    stage1_steps = r['stage1_views'] * r['stage1_epochs'] * math.ceil(r['train_images'] / r['stage1_batch'])
    stage2_images = r['stage2_epochs'] * (r['train_images'] // r['stage2_batch']) * r['stage2_batch']
    evaluations = math.ceil(r['stage2_epochs'] / r['eval_period'])
    parts = [
        {'part': f"stage 1: features of {r['stage1_views']} x {r['train_images']} images",
         'seconds': r['stage1_views'] * r['train_images'] / extract_rate},
        {'part': f"stage 1: {stage1_steps} steps of {step['stage1_batch']} at {stage1_ms:.1f} ms (upper bound: "
                 f"each view on all training images)",
         'seconds': stage1_steps * stage1_ms / 1e3},
        {'part': f"stage 2: {stage2_images} images at {fed_rate:.0f} images/s (step {step_rate:.0f}, loader "
                 f"{loader_rate:.0f})", 'seconds': stage2_images / fed_rate},
        {'part': f"{evaluations} evaluations: {r['test_images']} images at {extract_rate:.0f} images/s + evaluator "
                 f"{evaluator['all_seconds']:.2f} s", 'seconds': evaluations * (r['test_images'] / extract_rate
                                                                                 + evaluator['all_seconds'])},
    ]
    total = sum(p['seconds'] for p in parts)
    parts.append({'part': 'total', 'seconds': total})
    toy = ctx.args.quick
    return {'status': 'measured', 'parts': parts, 'total_seconds': total, 'recipe': r, 'toy_sizes': toy,
            'stage2_batch_measured': step['batch'], 'batch_scale': scale_batch,
            'summary': f"full MSSL recipe ~{total / 60:.1f} min on {ctx.env.get('gpu', ctx.device)}"
                       + (' (from toy-size rates: meaningless as a figure, it checks the arithmetic)' if toy else '')}


# ------------------------------------------------------------------------------------------- driver

def environment(device: torch.device, argv: list) -> dict:
    env = {'command': ' '.join(shlex.quote(a) for a in ['bash', 'benchmarks/gpu_check.sh', *argv]),
           'device': str(device), 'torch': torch.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           'python': platform.python_version(), 'platform': platform.platform(), 'cpu_count': os.cpu_count(),
           'started': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}")
        try:
            env['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                           capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env['driver'] = 'unknown (nvidia-smi not available)'
    return env


def markdown(report: dict) -> str:
    env = report['environment']
    lines = [f"# GPU check: {env.get('gpu', env['device'])}", '',
             f"`{env['command']}`  ", f"started {env['started']}; torch {env['torch']}, CUDA {env['cuda']}, "
             f"cuDNN {env['cudnn']}, driver {env.get('driver', '-')}, {env['cpu_count']} CPU cores; "
             f"{'toy sizes (--quick)' if report['quick'] else 'full sizes'}", '',
             '| part | status | seconds | deadline | result |', '|---|---|--:|--:|---|']
    for name in report['parts']:
        part = report['results'].get(name, {'status': 'not run', 'summary': ''})
        seconds, deadline = part.get('part_seconds'), part.get('deadline_s')
        text = str(part.get('summary', '')).replace('|', '/').replace('\n', ' ')
        lines.append(f"| {name} | {part['status']} | {'' if seconds is None else f'{seconds:.0f}'} | "
                     f"{'' if deadline is None else f'{deadline:.0f}'} | {text} |")
    step = report['results'].get('train_step', {})
    if step.get('rows'):
        lines += ['', f"Stage-2 step, {step['model']} {step['size'][0]}x{step['size'][1]} stride "
                      f"{step['stride'][0]}, batch {step['batch']} ({step['step_flops'] / 1e12:.3g} TFLOP per step):",
                  '', '| variant | images/s | step ms | peak MiB | TFLOP/s | of matmul peak | of spec peak |',
                  '|---|--:|--:|--:|--:|--:|--:|']
        for row in step['rows']:
            spec = '-' if row['of_spec_peak'] is None else f"{row['of_spec_peak']:.0%}"
            lines.append(f"| {row['variant']} | {row['images_per_s']:.1f} | {row['step_ms']:.1f} | "
                         f"{row['peak_memory_mib']:.0f} | {row['achieved_tflops']:.3g} | "
                         f"{row['of_measured_matmul_peak']:.0%} | {spec} |")
        peaks = step['measured_matmul_tflops']
        lines.append(f"\nMeasured matmul rate: fp32 {peaks['fp32']:.3g}, bf16 {peaks['bf16']:.3g} TFLOP/s.")
    projection = report['results'].get('projection', {})
    if projection.get('parts'):
        lines += ['', 'Projection of the MSSL recipe (from the measured rates above):', '',
                  '| part | time |', '|---|--:|']
        lines += [f"| {p['part']} | {p['seconds'] / 60:.1f} min |" for p in projection['parts']]
    lines.append('')
    return '\n'.join(lines)


class Context:
    def __init__(self, args, device, out: Path, environment: dict):
        self.args, self.device, self.out, self.env = args, device, out, environment
        self.work = out / 'work'
        self.sizes = sizes(args)
        self.results: dict = {}
        self.started = time.perf_counter()
        self.data = args.data or str(self.work / 'mssl_synthetic')
        self.part_end = float('inf')  # in a part's process: when the driver kills it

    def seconds_left(self) -> float:
        """In a part's process: the seconds before its deadline."""
        return self.part_end - time.perf_counter()


def _deadline(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition('=')
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if name not in DEADLINE_S or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PART=SECONDS with PART one of "
                                         f"{', '.join(DEADLINE_S)} and SECONDS > 0")
    return name, value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='folder for gpu_check.json, gpu_check.md and work/')
    parser.add_argument('--device', default='cuda', help="'cuda' (default), 'cuda:N', or 'cpu' (with --quick)")
    parser.add_argument('--quick', action='store_true', help='every part at toy size')
    parser.add_argument('--parts', nargs='+', default=list(PARTS), help=f"a subset of: {' '.join(PARTS)}")
    parser.add_argument('--data', default='', help='an existing synthetic MSSL folder (default: generate one)')
    parser.add_argument('--budget-s', type=float, default=None,
                        help=f'a part starts only if its deadline fits in what is left (default {BUDGET_S:.0f} s, '
                             f'x{QUICK_DEADLINE_SCALE} with --quick)')
    parser.add_argument('--deadline', nargs='+', type=_deadline, default=[], metavar='PART=SECONDS',
                        help='another deadline for a part (defaults: ' +
                             ', '.join(f'{k} {v:.0f} s' for k, v in DEADLINE_S.items()) + ')')
    parser.add_argument('--published-repo', default='',
                        help='a checkout of the published MSP code: the evaluator part times it too')
    parser.add_argument('--run-part', default='', help=argparse.SUPPRESS)  # how the driver starts a part's process
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        raise UserError(f"--parts: unknown part(s) {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    scale = QUICK_DEADLINE_SCALE if args.quick else 1
    args.deadlines = {name: seconds * scale for name, seconds in DEADLINE_S.items()}
    args.deadlines.update(dict(args.deadline))
    if args.budget_s is None:
        args.budget_s = BUDGET_S * scale
    return args


def resolve(args) -> torch.device:
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UserError(f"--device {args.device!r} is not a device name ({error})") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError("no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                        "on a CPU run `bash benchmarks/gpu_check.sh --device cpu --quick --out DIR`")
    if device.type == 'cpu' and not args.quick:
        raise UserError("--device cpu runs only with --quick (the full sizes take hours on a CPU)")
    if device.type not in ('cuda', 'cpu'):
        raise UserError(f"--device {args.device!r}: only cuda and cpu are supported")
    return device


def run_part_here(ctx, name: str) -> None:
    """In the part's own process: run it and leave its result in work/PART.result.json."""
    report = json.loads((ctx.out / 'gpu_check.json').read_text())  # the driver writes it before each part
    ctx.env, ctx.results = report['environment'], report['results']  # the parts before: loader, projection use them
    ctx.part_end = time.perf_counter() + ctx.args.deadlines[name]
    try:
        result = globals()[f'part_{name}'](ctx)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - reported as the part's failure
        (ctx.work / f'{name}.traceback.txt').write_text(traceback.format_exc())
        first_line = (str(error).splitlines() or [''])[0]
        what = (f"stopped with exit code {error.code} (its error line is in work/{name}.log)"
                if isinstance(error, SystemExit) else f"{type(error).__name__}: {first_line}")
        result = {'status': 'fail', 'summary': f"{what} (traceback in work/{name}.traceback.txt)"}
    write_text(str(ctx.work / f'{name}.result.json'), json.dumps(result, default=str))


def group_members(group: int) -> list:
    """The processes in a process group (Linux: from /proc; elsewhere an empty list)."""
    members = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):  # ended meanwhile
            continue
        if int(fields[2]) == group and fields[0] != 'Z':
            members.append(int(stat.parent.name))
    return members


def _kill_group(process: subprocess.Popen) -> int:
    """Kill the part's process group: the part and every process it started (training runs, loader
    workers, benchmark workers, the demo's bash and its Pythons). Returns how many were still running."""
    running = len(group_members(process.pid))
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is empty: all of it has ended
        pass
    process.wait()
    return running


def run_part(ctx, name: str, argv: list) -> dict:
    """Run a part in a new process group, relay its output, kill the group at the deadline."""
    deadline = ctx.args.deadlines[name]
    log_path, result_path = ctx.work / f'{name}.log', ctx.work / f'{name}.result.json'
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *argv, '--run-part', name]
    start = time.perf_counter()
    with open(log_path, 'w') as log, open(log_path) as relay:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while process.poll() is None and time.perf_counter() - start < deadline:
                time.sleep(0.2)
                sys.stdout.write(relay.read())
                sys.stdout.flush()
            timed_out = process.poll() is None
        finally:
            killed = _kill_group(process)  # also what a finished part left behind; and on Ctrl-C
        sys.stdout.write(relay.read())
    seconds = time.perf_counter() - start
    last_lines = ' / '.join(log_path.read_text().strip().splitlines()[-2:])
    if timed_out:
        result = {'status': 'timeout', 'process_group': process.pid, 'killed_processes': killed,
                  'summary': f"killed at its deadline of {deadline:.0f} s with the {killed} processes of its group; "
                             f"its last output: {last_lines}"}
    elif result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        result = {'status': 'fail', 'summary': f"its process ended (exit {process.returncode}) without a result: "
                                               f"{last_lines}"}
    result.update(part_seconds=seconds, deadline_s=deadline)
    return result


def skip_reason(ctx, name: str) -> str:
    """Why a part cannot start now ('' when it can)."""
    data = ctx.results.get('data')
    if name in NEEDS_DATA and data is not None and data['status'] != 'pass':
        return 'no synthetic MSSL to run on (the data part did not finish)'
    left = ctx.args.budget_s - (time.perf_counter() - ctx.started)
    if ctx.args.deadlines[name] > left:
        return (f"its deadline of {ctx.args.deadlines[name]:.0f} s does not fit in the {max(left, 0):.0f} s left of "
                f"the {ctx.args.budget_s:.0f} s budget")
    return ''


@exit_on_user_error
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = resolve(args)
    out = Path(args.out)
    try:
        (out / 'work').mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {args.out!r} cannot be created: {error.strerror}") from None
    if args.run_part:
        run_part_here(Context(args, device, out, environment={}), args.run_part)
        return 0
    ctx = Context(args, device, out, environment(device, argv))
    parts = ([] if args.data or (Path(ctx.data) / 'query').is_dir() else ['data']) + list(args.parts)
    report = {'environment': ctx.env, 'quick': args.quick, 'parts': parts, 'results': ctx.results,
              'budget_s': args.budget_s, 'deadlines_s': {name: args.deadlines[name] for name in parts}}

    def save():
        write_text(str(out / 'gpu_check.json'), json.dumps(report, indent=1, default=str))
        write_text(str(out / 'gpu_check.md'), markdown(report))

    print(f"GPU check on {ctx.env.get('gpu', device)}: parts {', '.join(parts)} within {args.budget_s:.0f} s; "
          f"results in {out}", flush=True)
    save()
    for name in parts:
        reason = skip_reason(ctx, name)
        if reason:
            ctx.results[name] = {'status': 'skipped', 'summary': reason}
            print(f"== {name}: skipped: {reason}", flush=True)
        else:
            print(f"== {name} (deadline {args.deadlines[name]:.0f} s)", flush=True)
            ctx.results[name] = run_part(ctx, name, argv)
            print(f"   {ctx.results[name]['status']}: {ctx.results[name].get('summary', '')}", flush=True)
        save()
    report['total_seconds'] = time.perf_counter() - ctx.started
    save()
    failed = [name for name, part in ctx.results.items() if part['status'] in ('fail', 'timeout')]
    skipped = [name for name, part in ctx.results.items() if part['status'] == 'skipped']
    verdict = (f"FAILED or killed: {', '.join(failed)}" if failed else 'no part failed') + \
              (f"; skipped: {', '.join(skipped)} (reasons above and in gpu_check.md)" if skipped else '')
    print(f"done in {report['total_seconds']:.0f} s; {verdict}; wrote {out / 'gpu_check.json'} and "
          f"{out / 'gpu_check.md'}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
