"""Benchmark the stage-1 step: the trainer's own `processor.stage1.prompt_step` (prompt learner -> text
tower -> symmetric SupCon against cached image features -> Adam on the context vectors), on a randomly
initialised CLIP, in the ways the published code and this project run it:

  published-style   what the published stage 1 computes: all 77 positions, nn.MultiheadAttention module
                    calls with an additive causal mask, and the text tower's weight gradients (it leaves
                    the tower trainable although only the prompts are optimized)
  full-77 sdpa      77 positions, fused causal scaled_dot_product_attention, text tower frozen
  truncated sdpa    the trainer: positions after the end-of-text token dropped (the attention is causal, so
                    they never reach the token the feature is read from), text tower frozen
  trainer loop      `processor.stage1.learn_view` itself, one step per epoch (its image features and final
                    text features stubbed out): the trainer's time per step, loop included
  truncated sdpa bf16  the trainer under SOLVER.AMP bf16
  truncated + tower grads  the trainer as it was before it froze the text tower (issue 23): the tower's
                    weight gradients computed and kept, as the published code does

Text features of the first identities are compared with the published-style ones.

Usage: python benchmarks/bench_stage1.py [--model ViT-B-16 --batch 64 --steps 5 --out bench_stage1.json]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (attention_path, best_time, describe_machine, machine_info, print_table,  # noqa: E402
                          write_report)

from config import load_config  # noqa: E402
from model.clip_loader import build_clip  # noqa: E402
from model.make_model_clipreid import ReIDModel  # noqa: E402
from processor import stage1  # noqa: E402
from utils.device import autocast  # noqa: E402

VIEW = 'sky'
TEMPLATE = 'A sky photo of a X X X X person.'
VARIANTS = {  # name: (attention path, truncate at the end-of-text token, text tower gradients, autocast dtype)
    'published-style': ('module', False, True, None),
    'full-77 sdpa': ('sdpa', False, False, None),
    'truncated sdpa': ('sdpa', True, False, None),
    'trainer loop': ('sdpa', True, False, None),
    'truncated sdpa bf16': ('sdpa', True, False, torch.bfloat16),
    'truncated + tower grads': ('sdpa', True, True, None),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='ViT-B-16')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, default=64, help='SOLVER.STAGE1.IMS_PER_BATCH')
    parser.add_argument('--num-classes', type=int, default=1050)
    parser.add_argument('--steps', type=int, default=None, help='timed steps per repeat (default 50 CUDA, 3 CPU)')
    parser.add_argument('--repeat', type=int, default=2, help='timed repeats, the best is kept')
    parser.add_argument('--compare-ids', type=int, default=256, help='identities whose text features are compared')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--out', default='bench_stage1.json')
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    steps = args.steps or (50 if device.type == 'cuda' else 3)
    info = machine_info(device)
    torch.manual_seed(0)
    model = ReIDModel(build_clip(args.model), args.num_classes, prompt_templates={VIEW: TEMPLATE}).to(device)
    learner = model.prompt_learners[VIEW]
    eot = learner.end_of_text
    print(f"stage-1 step, {args.model} text tower random init, batch {args.batch}, '{TEMPLATE}' "
          f"(end-of-text at position {eot}: {eot + 1} of {learner.tokenized.shape[1]} positions); "
          f"{steps} steps x best of {args.repeat}; {describe_machine(info)}", flush=True)

    cfg = load_config('', ['SOLVER.STAGE1.BASE_LR', '1e-6',  # tiny: the prompts barely move between variants
                           'SOLVER.STAGE1.IMS_PER_BATCH', str(args.batch), 'SOLVER.STAGE1.WARMUP_EPOCHS', '0',
                           'SOLVER.STAGE1.MAX_EPOCHS', str(steps), 'SOLVER.STAGE1.LOG_PERIOD', str(10 ** 6),
                           'OUTPUT_DIR', tempfile.mkdtemp(prefix='bench_stage1_')])
    embed_dim = model.text_encoder.text_projection.shape[1]
    generator = torch.Generator().manual_seed(1)
    image_feats = torch.randn(args.batch, embed_dim, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch,), generator=generator).to(device)
    compared_ids = torch.arange(min(args.compare_ids, args.num_classes), device=device)
    snapshot = learner.cls_ctx.detach().clone()

    rows, reference = [], None
    for name in args.variants:
        attention, truncate, tower_grads, dtype = VARIANTS[name]
        optimizer, _, scaler = stage1.stage1_solver(cfg, model, VIEW, device, dtype)  # freezes the text tower
        model.text_encoder.requires_grad_(tower_grads)
        model.text_encoder.truncate = truncate

        def text_features(ids):
            with autocast(device, dtype):
                return model.text_features(VIEW, ids).float()

        def run_steps(count=steps):
            for _ in range(count):
                loss, _ = stage1.prompt_step(model, VIEW, optimizer, scaler, image_feats, labels, dtype)
            return float(loss)

        def run_trainer_loop():  # learn_view: one epoch of one batch per step
            items = [(f'{i}.jpg', int(pid), 0, 1) for i, pid in enumerate(labels.tolist())]
            with mock.patch.object(stage1, 'view_image_features', lambda *a, **k: image_feats), \
                    mock.patch.object(stage1, '_all_text_features', lambda *a, **k: image_feats):
                _, losses = stage1.learn_view(cfg, model, VIEW, items, args.num_classes, device,
                                              logging.getLogger('bench_stage1'), dtype)
            return losses[-1]

        timed, per = (run_trainer_loop, steps) if name == 'trainer loop' else (run_steps, steps)
        with attention_path(attention):
            with torch.no_grad():
                features = torch.cat([text_features(chunk) for chunk in compared_ids.split(args.batch)]).cpu()
            run_steps(1)  # warm-up
            seconds, loss, cpu_share = best_time(timed, args.repeat, device)
        with torch.no_grad():
            learner.cls_ctx.copy_(snapshot)
        for param in model.text_encoder.parameters():
            param.grad = None
        reference = features if reference is None else reference
        rows.append({'variant': name, 'attention': attention, 'truncate': truncate, 'text_tower_grads': tower_grads,
                     'precision': 'bf16' if dtype else 'fp32', 'step_ms': seconds / per * 1e3,
                     'cpu_share': cpu_share if device.type == 'cpu' else None,
                     'max_abs_diff': float((features - reference).abs().max()),
                     'rel_diff': float((features - reference).abs().max() / reference.abs().max())})
        print(f"  {name}: {rows[-1]['step_ms']:.1f} ms per step", flush=True)

    published = next((r for r in rows if r['variant'] == 'published-style'), rows[0])
    for row in rows:
        row['speedup_vs_published_style'] = published['step_ms'] / row['step_ms']
    print_table(rows, [('variant', 'variant', ''), ('step_ms', 'step ms', '.1f'),
                       ('speedup_vs_published_style', 'x published', '.2f'),
                       ('max_abs_diff', 'max |feat diff|', '.1e'), ('rel_diff', 'rel diff', '.1e'),
                       ('cpu_share', 'CPU share', '.0%')])
    print("step ms: the fastest repeat; CPU share: process CPU time / (wall time x threads) (below 100%: "
          "other processes competed)")
    print(f"feature diff: text features of {len(compared_ids)} identities against {rows[0]['variant']} "
          f"(max |feature| {float(reference.abs().max()):.3f})")
    write_report(args.out, {'args': vars(args), 'steps': steps, 'end_of_text_position': eot, 'machine': info,
                            'load_average_at_end': os.getloadavg(), 'rows': rows})


if __name__ == '__main__':
    main()
