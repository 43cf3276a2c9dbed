"""Benchmark a stage-1 step (prompt learner -> frozen CLIP text encoder -> symmetric SupCon against
cached image features -> Adam on the context vectors) with the sequence truncated at the
end-of-text token (ours) against all 77 positions, on a randomly initialised text tower.

  published-style  77 positions, nn.MultiheadAttention module calls with an additive causal mask
  full-77          77 positions, fused causal scaled_dot_product_attention
  truncated        ours: positions after the end-of-text token are dropped (the attention is causal,
                   so they never influence the end-of-text token the feature is read from)

Text features of every identity are compared with the published-style ones.

Usage: python benchmarks/bench_stage1.py [--model ViT-B-16 --batch 64 --steps 5 --out bench_stage1.json]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (attention_path, best_time, describe_machine, machine_info, print_table,  # noqa: E402
                          write_report)

from loss.supcontrast import SupConLoss  # noqa: E402
from model.clip_loader import build_clip  # noqa: E402
from model.text_encoder import PromptLearner, TextEncoder  # noqa: E402
from utils.device import autocast  # noqa: E402

TEMPLATE = 'A sky photo of a X X X X person.'
VARIANTS = {  # name: (attention path, truncate at the end-of-text token, autocast dtype)
    'published-style': ('module', False, None),
    'full-77 sdpa': ('sdpa', False, None),
    'truncated sdpa': ('sdpa', True, None),
    'truncated sdpa bf16': ('sdpa', True, torch.bfloat16),
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
    clip = build_clip(args.model).to(device).eval()
    encoder = TextEncoder(clip).requires_grad_(False)
    learner = PromptLearner(args.num_classes, TEMPLATE, clip).to(device)
    embed_dim = clip.text_projection.shape[1]
    del clip
    eot = int(learner.tokenized.argmax(-1).max())
    print(f"stage-1 step, {args.model} text tower random init, batch {args.batch}, '{TEMPLATE}' "
          f"(end-of-text at position {eot}: {eot + 1} of {learner.tokenized.shape[1]} positions); "
          f"{steps} steps x best of {args.repeat}; {describe_machine(info)}", flush=True)

    generator = torch.Generator().manual_seed(1)
    image_feats = torch.randn(args.batch, embed_dim, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch,), generator=generator).to(device)
    supcon = SupConLoss()
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-6)  # tiny: the prompts barely move
    compared_ids = torch.arange(min(args.compare_ids, args.num_classes), device=device)

    rows, reference = [], None
    for name in args.variants:
        attention, truncate, dtype = VARIANTS[name]

        def text_features(ids):
            with autocast(device, dtype):
                return encoder(learner(ids), learner.tokenized, truncate=truncate).float()

        def run_steps(count=steps):
            for _ in range(count):
                text = text_features(labels)
                loss = supcon(image_feats, text, labels, labels) + supcon(text, image_feats, labels, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return loss.item()

        with attention_path(attention):
            snapshot = learner.cls_ctx.detach().clone()
            with torch.no_grad():
                features = torch.cat([text_features(chunk) for chunk in compared_ids.split(args.batch)]).cpu()
            run_steps(1)  # warm-up
            seconds, loss, cpu_share = best_time(run_steps, args.repeat, device)
            with torch.no_grad():
                learner.cls_ctx.copy_(snapshot)
        reference = features if reference is None else reference
        rows.append({'variant': name, 'attention': attention, 'truncate': truncate,
                     'precision': 'bf16' if dtype else 'fp32', 'step_ms': seconds / steps * 1e3,
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
