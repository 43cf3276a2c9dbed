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

--published-repo CHECKOUT adds the published code itself (github.com/sysuchx/SkyGroundReID): its
build_transformer (CLIP, PromptLearner, TextEncoder), make_optimizer_1stage and SupConLoss on the same
CLIP weights, stepped as its do_train_stage1 steps, alternating with the trainer's `prompt_step` in this
process (--rounds rounds, the order swapped every round). Both use the prompt of the published model file,
'A photo of a X X X X person.', and the same context vectors, so their text features are compared too.
Its autocast and gradient scaler are CUDA-only, so it runs in fp32 on a CPU; its calls of the tensor
method `cuda` are made no-ops there.

Usage: python benchmarks/bench_stage1.py [--model ViT-B-16 --batch 64 --steps 5 --out bench_stage1.json]
                                         [--published-repo CHECKOUT --rounds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (alternate_steps, attention_path, best_time, describe_machine, machine_info,  # noqa: E402
                          print_table, write_report)
from published_code import PUBLISHED_REPO_HELP, keep_cuda_calls_on_cpu, published_packages  # noqa: E402

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

PUBLISHED_PROMPT = 'A photo of a X X X X person.'  # the published PromptLearner's, as its file is committed
PUBLISHED_STAGE1_FILES = ('model/make_model_clipreid.py', 'model/clip/bpe_simple_vocab_16e6.txt.gz',
                          'loss/supcontrast.py', 'solver/make_optimizer_prompt.py', 'config/defaults.py')


def published_code_available(args) -> str | None:
    """None when the published stage-1 code can be timed, else why not."""
    if not args.published_repo:
        return 'no --published-repo (a checkout of github.com/sysuchx/SkyGroundReID)'
    if args.model not in ('ViT-B-16', 'RN50'):
        return f'the published model builds only ViT-B-16 and RN50 (--model {args.model})'
    missing = [f for f in PUBLISHED_STAGE1_FILES if not (Path(args.published_repo) / f).is_file()]
    return f"--published-repo '{args.published_repo}' has no {missing[0]}" if missing else None


def make_published_stage1(repo: str, model_name: str, num_classes: int, image_feats: torch.Tensor,
                          labels: torch.Tensor, device: torch.device):
    """(step, text features of ids) of the published stage 1: its build_transformer on CLIP weights of
    open_clip's init under seed 0 (`load_clip_to_cpu` is given them instead of downloading OpenAI's),
    make_optimizer_1stage and SupConLoss; the step is the inner loop of its do_train_stage1 (zero_grad,
    text features under its autocast, the two SupCon terms, scaled backward and optimizer step, loss.item())."""
    if device.type != 'cuda':
        keep_cuda_calls_on_cpu()
    with published_packages(repo):
        from config import cfg as published_defaults
        import model.make_model_clipreid as published_model
        from loss.supcontrast import SupConLoss
        from solver.make_optimizer_prompt import make_optimizer_1stage

    def random_clip(backbone_name, h_resolution, w_resolution, stride):
        torch.manual_seed(0)
        state = build_clip(backbone_name).state_dict()
        return published_model.clip.build_model(state, h_resolution, w_resolution, stride)

    published_model.load_clip_to_cpu = random_clip
    cfg = published_defaults.clone()
    cfg.merge_from_list(['MODEL.NAME', model_name, 'INPUT.SIZE_TRAIN', [256, 128], 'MODEL.STRIDE_SIZE', [12, 12],
                         'MODEL.SIE_CAMERA', True, 'MODEL.SIE_VIEW', True, 'SOLVER.STAGE1.BASE_LR', 1e-6,
                         'SOLVER.STAGE1.WEIGHT_DECAY', 1e-4])
    with contextlib.redirect_stdout(sys.stderr):  # it prints as it builds
        model = published_model.make_model(cfg, num_class=num_classes, camera_num=15, view_num=2)
    model = model.to(device).train()
    optimizer = make_optimizer_1stage(cfg, model)
    supcon = SupConLoss(device)
    # Its amp.GradScaler() and amp.autocast(enabled=True) are CUDA's: off on a CPU, fp16 on a GPU.
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == 'cuda')

    def step():
        optimizer.zero_grad()
        with torch.autocast(device.type, enabled=device.type == 'cuda'):
            text_features = model(label=labels, get_text=True)
        loss = supcon(image_feats, text_features, labels, labels) + supcon(text_features, image_feats, labels, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    def text_features(ids):
        with torch.no_grad(), torch.autocast(device.type, enabled=device.type == 'cuda'):
            return model(label=ids, get_text=True).float()

    return step, text_features, model.prompt_learner.cls_ctx


def compare_with_published_code(args, cfg, image_feats, labels, compared_ids, device) -> dict:
    """The trainer's step and the published code's, alternating in this process, from the same CLIP
    weights, prompt and context vectors; their text features before the first step are compared."""
    theirs, their_features, their_ctx = make_published_stage1(args.published_repo, args.model, args.num_classes,
                                                              image_feats, labels, device)
    torch.manual_seed(0)
    model = ReIDModel(build_clip(args.model), args.num_classes, prompt_templates={VIEW: PUBLISHED_PROMPT}).to(device)
    with torch.no_grad():
        model.prompt_learners[VIEW].cls_ctx.copy_(their_ctx)
    dtype = torch.float16 if device.type == 'cuda' else None  # what the published autocast runs
    optimizer, _, scaler = stage1.stage1_solver(cfg, model, VIEW, device, dtype)

    def ours():
        return stage1.prompt_step(model, VIEW, optimizer, scaler, image_feats, labels, dtype)

    with torch.no_grad(), autocast(device, dtype):
        our_feats = torch.cat([model.text_features(VIEW, chunk).float() for chunk in compared_ids.split(args.batch)])
    published_feats = torch.cat([their_features(chunk) for chunk in compared_ids.split(args.batch)])
    steps = {'ours': ours, 'published_code': theirs}
    for step in steps.values():
        step()  # warm-up
    walls, cpu = alternate_steps(steps, args.rounds, device)
    best = {name: min(times) for name, times in walls.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    difference = float((our_feats - published_feats).abs().max().cpu())
    return {'ours_step_s': best['ours'], 'published_code_step_s': best['published_code'],
            'speedup': best['published_code'] / best['ours'], 'ours_cpu_s': best_cpu['ours'],
            'published_code_cpu_s': best_cpu['published_code'],
            'cpu_speedup': best_cpu['published_code'] / best_cpu['ours'],
            'max_abs_feature_diff': difference,
            'rel_feature_diff': difference / float(published_feats.abs().max().cpu()),
            'prompt': PUBLISHED_PROMPT, 'end_of_text_position': model.prompt_learners[VIEW].end_of_text,
            'precision': 'fp16' if dtype else 'fp32', 'walls': walls, 'cpu': cpu, 'threads': torch.get_num_threads()}


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
    parser.add_argument('--published-repo', default='', help=PUBLISHED_REPO_HELP)
    parser.add_argument('--rounds', type=int, default=5,
                        help='alternating rounds of the trainer and the published code (--published-repo)')
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
    report = {'args': vars(args), 'steps': steps, 'end_of_text_position': eot, 'machine': info, 'rows': rows}
    published_note = published_code_available(args)
    if published_note:
        print(f'The published code is not timed: {published_note}', flush=True)
    else:
        paired = report['published_code'] = compare_with_published_code(
            args, cfg, image_feats, labels, compared_ids, device)
        print(f"The published code itself ({args.published_repo}), alternating with the trainer's step in this "
              f"process, {args.rounds} rounds, prompt '{paired['prompt']}', {paired['precision']}:")
        print_table([{'step': "the trainer's prompt_step", 'wall_ms': paired['ours_step_s'] * 1e3,
                      'cpu_ms': paired['ours_cpu_s'] * 1e3, 'x_wall': paired['speedup'],
                      'x_cpu': paired['cpu_speedup']},
                     {'step': "the published do_train_stage1 step", 'wall_ms': paired['published_code_step_s'] * 1e3,
                      'cpu_ms': paired['published_code_cpu_s'] * 1e3, 'x_wall': 1.0, 'x_cpu': 1.0}],
                    [('step', 'step', ''), ('wall_ms', 'wall ms', '.0f'), ('cpu_ms', 'CPU ms', '.0f'),
                     ('x_wall', 'x published (wall)', '.2f'), ('x_cpu', 'x published (CPU)', '.2f')])
        print(f"wall and CPU ms: the fastest round of each; text features of {len(compared_ids)} identities before "
              f"the first step: max |diff| {paired['max_abs_feature_diff']:.1e} "
              f"({paired['rel_feature_diff']:.1e} of the largest)")
    report['load_average_at_end'] = os.getloadavg()
    write_report(args.out, report)


if __name__ == '__main__':
    main()
