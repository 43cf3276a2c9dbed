"""Feature extraction speed (PyTorch fp32, PyTorch bf16 autocast, ONNX Runtime fp32) and the search
CLI's time and peak memory on a 10,000-image gallery.

    python benchmarks/bench_extract.py                   # both parts, the table and docs/benchmarks/extract_cpu.json
    python benchmarks/bench_extract.py --skip-search     # extraction only
    python benchmarks/bench_extract.py --models tiny     # the tiny demo model only

Extraction: the model's forward on preprocessed batches ([N, 3, H, W] normalised tensors; decoding and
resizing are not timed), camera/view labels given, images/s of the fastest of the timed repetitions.
Models: the tiny demo model at the demo's 128x64 and ViT-B/16 at 256x128 stride 12 (the published
recipe), both randomly initialised (only the shapes matter for speed). ONNX Runtime runs the graph of
tools/export_onnx.py; its features are checked against PyTorch fp32 (max relative difference).
Search: search_clipreid.py in a fresh process on 100 queries and a 10,000-image gallery of the
synthetic MSSL images under arbitrary names (copies), tiny demo model; wall time and peak RSS.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from bench_common import ROOT, best_time, describe_machine, machine_info, print_table, write_report

sys.path.insert(0, str(ROOT / 'tools'))  # export_onnx is a user tool

import torch  # noqa: E402

from config import load_config  # noqa: E402
from model import make_model  # noqa: E402
from model.checkpoint_meta import describe_model  # noqa: E402
from processor.stage2 import save_checkpoint  # noqa: E402
from processor.settings import description_settings, model_settings  # noqa: E402

MODELS = {
    'tiny': ['MODEL.NAME', 'ViT-Tiny-16', 'INPUT.SIZE_TRAIN', '[128, 64]', 'INPUT.SIZE_TEST', '[128, 64]'],
    'vit-b-16': ['MODEL.NAME', 'ViT-B-16', 'INPUT.SIZE_TRAIN', '[256, 128]', 'INPUT.SIZE_TEST', '[256, 128]'],
}
COMMON = ['MODEL.STRIDE_SIZE', '[12, 12]', 'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True',
          'MODEL.SIE_COE', '0.5', 'MODEL.DEVICE', 'cpu']


def build(name: str, output_dir: str = ''):
    cfg = load_config('', COMMON + MODELS[name] + (['OUTPUT_DIR', output_dir] if output_dir else []))
    torch.manual_seed(0)
    model = make_model(model_settings(cfg), 2099, 15, 2, load_pretrained=False).eval()
    model.reid_meta = describe_model(description_settings(cfg), model)
    return cfg, model


def onnx_session(model):
    import onnxruntime as ort
    from export_onnx import ExportedReID, to_onnx_bytes
    exported = ExportedReID(model, 'normalized', 'inputs', {}, normalize_output=False, dtype=torch.float32).eval()
    options = ort.SessionOptions()
    # Idle ORT threads otherwise spin for a while after each run and slow the PyTorch paths timed next.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the PyTorch paths
    return ort.InferenceSession(to_onnx_bytes(exported, 18), options, providers=['CPUExecutionProvider'])


def bench_model(name: str, batches: list, min_seconds: float) -> list:
    _, model = build(name)
    height, width = model.reid_meta['image_size']
    session = onnx_session(model)
    rows = []
    for batch in batches:
        generator = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, height, width, generator=generator)
        cams, views = torch.randint(0, 15, (batch,), generator=generator), torch.randint(0, 2, (batch,), generator=generator)
        feeds = {'images': images.numpy(), 'camera': cams.numpy(), 'view': views.numpy()}

        def eager():
            with torch.no_grad():
                return model(images, cam_label=cams, view_label=views)

        def bf16():
            with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
                return model(images, cam_label=cams, view_label=views).float()

        def onnx():
            return torch.from_numpy(session.run(['features'], feeds)[0])

        reference = None
        for path, fn in (('PyTorch eager fp32', eager), ('PyTorch bf16 autocast', bf16), ('ONNX Runtime fp32', onnx)):
            fn()  # warm-up
            start, reps = time.perf_counter(), 0
            while reps < 2 or (time.perf_counter() - start < min_seconds and reps < 50):
                fn()
                reps += 1
            seconds, result, share = best_time(fn, max(2, min(reps, 10)), torch.device('cpu'))
            reference = result if reference is None else reference
            diff = float((result - reference).abs().max() / reference.abs().max())
            rows.append({'model': name, 'batch': batch, 'path': path, 'ms': 1000 * seconds,
                         'images_s': batch / seconds, 'cpu_share': share, 'rel_diff': diff})
            print(f"  {name} batch {batch} {path}: {batch / seconds:.1f} images/s", flush=True)
    return rows


def make_gallery(folder: str, count: int, source_root: str) -> None:
    sources = [os.path.join(dp, f) for dp, _, files in os.walk(source_root) for f in files if f.endswith('.jpg')]
    rng = random.Random(0)
    os.makedirs(folder, exist_ok=True)
    for k in range(count):
        shutil.copy(rng.choice(sources), os.path.join(folder, f'cam_frame_{rng.getrandbits(40):010x}_{k}.jpg'))


def bench_search(workdir: str, gallery_size: int, query_size: int) -> dict:
    data = os.path.join(workdir, 'mssl')
    subprocess.run([sys.executable, '-m', 'datasets.synthetic_mssl', data, '--seed', '0'], cwd=ROOT, check=True,
                   capture_output=True)
    make_gallery(os.path.join(workdir, 'gallery'), gallery_size, data)
    make_gallery(os.path.join(workdir, 'query'), query_size, os.path.join(data, 'query'))
    cfg, model = build('tiny', workdir)
    weight = save_checkpoint(cfg, model, 1)
    command = [sys.executable, 'search_clipreid.py', '--weight', weight, '--query', os.path.join(workdir, 'query'),
               '--gallery', os.path.join(workdir, 'gallery'), '--output', os.path.join(workdir, 'out'),
               '--device', 'cpu', '--workers', '2']
    # Through a fresh Python that only waits for the search, so that the children's high-water mark is the
    # search's own (or one of its decoding workers'), not this script's earlier subprocesses'.
    measure = ('import resource, subprocess, sys, time; start = time.perf_counter(); '
               'code = subprocess.run(sys.argv[1:]).returncode; '
               'print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); '
               'sys.exit(code)')
    done = subprocess.run([sys.executable, '-c', measure, *command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    wall, peak_kib = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    log = open(os.path.join(workdir, 'out', 'search_log.txt')).read()
    extraction = float(log.split('images in ')[1].split(' s')[0])
    ranking = float(log.split('ranking in ')[1].split(' s')[0])
    peak = peak_kib / 1024
    return {'gallery': gallery_size, 'queries': query_size, 'wall_s': wall, 'extraction_s': extraction,
            'ranking_s': ranking, 'peak_rss_mib': peak, 'command': ' '.join(command[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--batches', nargs='+', type=int, default=[1, 32])
    parser.add_argument('--min-seconds', type=float, default=5.0, help='time each path for at least this long')
    parser.add_argument('--threads', type=int, default=0,
                        help='threads of PyTorch and ONNX Runtime (0: PyTorch default); 1 is steadier on a busy machine')
    parser.add_argument('--skip-search', action='store_true')
    parser.add_argument('--skip-extraction', action='store_true')
    parser.add_argument('--gallery', type=int, default=10_000)
    parser.add_argument('--queries', type=int, default=100)
    parser.add_argument('--json', default=os.path.join(ROOT, 'docs', 'benchmarks', 'extract_cpu.json'))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(torch.device('cpu'))
    print(describe_machine(info))
    rows = [] if args.skip_extraction else [
        row for name in args.models for row in bench_model(name, args.batches, args.min_seconds)]
    for row in rows:  # ratios against PyTorch eager fp32 of the same model and batch
        base = next(r for r in rows if r['model'] == row['model'] and r['batch'] == row['batch'])
        row['speedup'] = row['images_s'] / base['images_s']
    if rows:
        print_table(rows, [('model', 'model', ''), ('batch', 'batch', 'd'), ('path', 'path', ''),
                           ('ms', 'ms/batch', '.1f'), ('images_s', 'images/s', '.1f'), ('speedup', 'x fp32', '.2f'),
                           ('cpu_share', 'CPU share', '.0%'), ('rel_diff', 'max rel diff', '.1e')])
    report = {'machine': info, 'rows': rows}
    if not args.skip_search:
        with tempfile.TemporaryDirectory() as workdir:
            search = bench_search(workdir, args.gallery, args.queries)
        print_table([search], [('gallery', 'gallery', 'd'), ('queries', 'queries', 'd'), ('wall_s', 'wall s', '.1f'),
                               ('extraction_s', 'extraction s', '.1f'), ('ranking_s', 'ranking s', '.2f'),
                               ('peak_rss_mib', 'peak RSS MiB', '.0f')])
        report['search'] = search
    write_report(args.json, report)


if __name__ == '__main__':
    main()
