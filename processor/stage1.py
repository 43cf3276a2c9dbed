"""Stage 1: per-identity prompt learning for each text view, with frozen image and text encoders.

For a text view ('sky', 'ground' or 'all'), the image features of that view's training images are
extracted once (no augmentation); the view's per-identity context vectors are then trained with the
symmetric supervised-contrastive image<->text loss. An identity that has no training image of the
view learns its prompt for that view from its images of the other view (documented fallback), so
every identity has a text feature in every view.

The learned text features are cached in OUTPUT_DIR/stage1_text_features.pt together with a
fingerprint of everything they depend on; a matching cache is reused, an out-of-date one is rebuilt,
and a damaged one stops the run with one line (it is never overwritten unasked).
"""
import hashlib
import json
import math
import os

import torch

from utils.vocabulary import PROMPT_TEMPLATE_KEYS, STAGE1_CACHE, VIEW_IDS
from datasets.make_dataloader import make_ordered_loader
from loss.make_loss import prompt_loss
from solver.make_optimizer import make_optimizer_stage1
from solver.scheduler import begin_epoch, current_lr, make_stage1_scheduler
from utils import atomic_io, distributed
from utils.device import autocast, grad_scaler
from reporting.metrics_log import report
from utils.errors import UserError
from utils.out_of_memory import stop_on_out_of_memory
from utils.progress import progress
from processor.settings import loader_settings

CACHE_NAME = STAGE1_CACHE


def text_views_to_learn(cfg) -> list:
    """Text views used by an image-to-text term with a non-zero weight, in config order."""
    views = []
    for view, weight in zip(cfg.MODEL.I2T_TEXT_VIEWS, cfg.MODEL.I2T_LOSS_WEIGHTS):
        if weight > 0 and view not in views:
            views.append(view)
    return views


def stage1_items(train_items: list, view: str, train_by_view: dict | None = None) -> list:
    """The images a view's prompts learn from: the view's training images (`train_by_view[view_id]`:
    the dataset's `bounding_box_train_air` / `_ground` folder when it has one, else the view's cameras),
    plus every training image of the identities that have none in that view."""
    if view == 'all':
        return list(train_items)
    view_id = VIEW_IDS[view]
    if train_by_view is None:
        view_items = [item for item in train_items if item[3] == view_id]
    else:
        view_items = list(train_by_view[view_id])
    present = {item[1] for item in view_items}
    return view_items + [item for item in train_items if item[1] not in present]


def _template(cfg, view: str) -> str:
    return cfg.MODEL[PROMPT_TEMPLATE_KEYS[view]]


def _pretrained_identity(path: str) -> dict:
    if not path or not os.path.isfile(path):
        return {'path': path}
    stat = os.stat(path)
    return {'path': os.path.abspath(path), 'size': stat.st_size, 'mtime': int(stat.st_mtime)}


def cache_fingerprint(cfg, view: str, items: list, amp_dtype=None) -> str:
    """Everything a view's text features depend on: backbone, inputs, template, schedule, seed, labels, and
    the precision they were computed in (`amp_dtype`, what SOLVER.AMP resolves to on this device: 'auto'
    is fp32 on a CPU and bf16 on most GPUs)."""
    labels = sorted((os.path.basename(path), pid) for path, pid, _, _ in items)
    described = {
        'view': view, 'template': _template(cfg, view),
        'model': [cfg.MODEL.NAME, _pretrained_identity(cfg.MODEL.PRETRAIN_PATH), list(cfg.MODEL.STRIDE_SIZE)],
        'input': [list(cfg.INPUT.SIZE_TEST), list(cfg.INPUT.PIXEL_MEAN), list(cfg.INPUT.PIXEL_STD)],
        'solver': {key: cfg.SOLVER.STAGE1[key] for key in sorted(cfg.SOLVER.STAGE1) if key != 'LOG_PERIOD'},
        'seed': cfg.SOLVER.SEED, 'precision': str(amp_dtype or torch.float32),
        'labels': hashlib.sha256(json.dumps(labels).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def load_cache(path: str) -> dict:
    """The stage-1 cache, {} when there is none. A damaged one stops the run rather than being rebuilt
    over: it may hold hours of stage 1, and a copy of it elsewhere may be intact."""
    if not os.path.isfile(path):
        return {}
    try:
        cache = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        # torch's first line is short for a cut-off archive, and a paragraph for other bytes.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ''
        reason = f"{type(err).__name__}: {reason}" if reason and len(reason) < 120 else 'unreadable bytes'
        raise UserError(f"stage-1 cache '{path}' is damaged or not a cache ({reason}); "
                        f"copy an intact one there, or move it away (or delete it) to learn the text features "
                        f"again") from None
    if not isinstance(cache, dict):
        raise UserError(f"stage-1 cache '{path}' holds no cache (a {type(cache).__name__}); move it away (or "
                        f"delete it) to learn the text features again")
    return cache


@torch.no_grad()
def view_image_features(model, cfg, items: list, device, amp_dtype=None) -> torch.Tensor:
    """Projected image features [len(items), embed_dim] that a view's prompts learn against: the test
    transform, no side information, eval mode."""
    chunks = []
    model.eval()
    loader = make_ordered_loader(loader_settings(cfg), distributed.local_shard(items), device)
    for images, *_ in progress(loader, desc='stage 1 image features', leave=False, unit='batch'):
        with autocast(device, amp_dtype):
            chunks.append(model.encode_image_proj(images.to(device)).float())
    return distributed.gather_shards(torch.cat(chunks), len(items))


@torch.no_grad()
def _all_text_features(model, view: str, num_classes: int, batch: int, device) -> torch.Tensor:
    labels = distributed.local_shard(torch.arange(num_classes, device=device))
    features = torch.cat([model.text_features(view, chunk).float() for chunk in labels.split(batch)])
    return distributed.gather_shards(features, num_classes)


def stage1_solver(cfg, model, view: str, device, amp_dtype=None) -> tuple:
    """(optimizer, scheduler, gradient scaler) of a view's prompt learning. Only the view's prompts are
    optimized, so the text tower is frozen: its weight gradients would be computed and kept for nothing
    (the published code does so, docs/fidelity.md)."""
    model.text_encoder.requires_grad_(False)
    solver = cfg.SOLVER.STAGE1
    optimizer = make_optimizer_stage1(model.prompt_learners[view].parameters(), solver.BASE_LR,
                                      solver.WEIGHT_DECAY, solver.OPTIMIZER_NAME)
    scheduler = make_stage1_scheduler(optimizer, max_epochs=solver.MAX_EPOCHS, warmup_epochs=solver.WARMUP_EPOCHS,
                                      warmup_lr_init=solver.WARMUP_LR_INIT, lr_min=solver.LR_MIN)
    return optimizer, scheduler, grad_scaler(device, amp_dtype)


def prompt_step(model, view: str, optimizer, scaler, image_feats: torch.Tensor, labels: torch.Tensor,
                amp_dtype=None) -> tuple:
    """One stage-1 step on a batch of cached image features and their identities (on the device): the
    view's text features of those identities, `prompt_loss`, backward and the optimizer step (skipped by
    the fp16 scaler when the gradients are not finite). Returns (loss, parts), detached, on the device."""
    with autocast(image_feats.device, amp_dtype):  # each rank encodes its share of the batch's prompts
        text = model.text_features(view, distributed.local_shard(labels)).float()
    text = distributed.gather_shards(text, len(labels), keep_grad=True)
    loss, parts = prompt_loss(image_feats, text, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    distributed.all_reduce_grads(model.prompt_learners[view].parameters())
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), {name: part.detach() for name, part in parts.items()}


def learn_view(cfg, model, view: str, items: list, num_classes: int, device, logger, amp_dtype=None):
    """Train one view's prompts; returns its text features [num_classes, embed_dim] on the CPU and
    the mean loss of every epoch."""
    image_feats = view_image_features(model, cfg, items, device, amp_dtype)
    labels = torch.tensor([pid for _, pid, _, _ in items], device=device)
    learner = model.prompt_learners[view]
    solver = cfg.SOLVER.STAGE1
    optimizer, scheduler, scaler = stage1_solver(cfg, model, view, device, amp_dtype)
    generator = torch.Generator().manual_seed(cfg.SOLVER.SEED)
    learner.train()
    epoch_losses = []
    logger.info(f"Stage 1 [{view}]: {len(items)} images, {labels.unique().numel()} identities, "
                f"{solver.MAX_EPOCHS} epochs")
    epochs = progress(range(1, solver.MAX_EPOCHS + 1), desc=f'stage 1 [{view}]', unit='epoch', logger=logger)
    for epoch in epochs:
        begin_epoch(scheduler, epoch)
        order = torch.randperm(len(items), generator=generator).to(device)
        total, steps = torch.zeros((), device=device, dtype=torch.float64), 0  # read once per epoch
        batches = order.split(solver.IMS_PER_BATCH)
        for step, batch in enumerate(batches, start=1):
            loss, _ = prompt_step(model, view, optimizer, scaler, image_feats[batch], labels[batch], amp_dtype)
            distributed.check_replicas(learner.parameters(), f'stage 1 [{view}] epoch {epoch} step {step}')
            total, steps = total + loss, steps + 1
            if step % solver.LOG_PERIOD == 0:
                report(logger, cfg.OUTPUT_DIR, 'stage1_iter', f"Stage 1 [{view}] epoch {epoch} iter {step}",
                       view=view, epoch=epoch, iter=step, iters=len(batches), loss=float(loss))
        epoch_losses.append(float(total) / steps)
        if not math.isfinite(epoch_losses[-1]):  # every rank computes the same loss, so all stop alike
            raise UserError(f"stage 1 [{view}] loss became non-finite (NaN or Inf) in epoch {epoch}; this view's "
                            f"text features were not cached (try a lower SOLVER.STAGE1.BASE_LR or SOLVER.AMP 'off')")
        report(logger, cfg.OUTPUT_DIR, 'stage1_epoch', f"Stage 1 [{view}] epoch {epoch}/{solver.MAX_EPOCHS}",
               bar=epochs, view=view, epoch=epoch, epochs=solver.MAX_EPOCHS, loss=epoch_losses[-1],
               lr=current_lr(optimizer))
    learner.eval()
    return _all_text_features(model, view, num_classes, solver.IMS_PER_BATCH, device).cpu(), epoch_losses


def run_stage1(cfg, model, train_items: list, num_classes: int, device, logger, amp_dtype=None,
               train_by_view: dict | None = None) -> dict:
    """Text features per learned view {view: [num_classes, embed_dim]}, from the cache when it matches.
    `train_by_view`: the dataset's per-view training images (see `stage1_items`)."""
    path = os.path.join(cfg.OUTPUT_DIR, CACHE_NAME)
    cache = distributed.broadcast_object(load_cache(path) if distributed.is_main() else None)
    features = {}
    for view in text_views_to_learn(cfg):
        items = stage1_items(train_items, view, train_by_view)
        # Rank 0's fingerprint (file times of PRETRAIN_PATH may differ between nodes): all ranks decide alike.
        fingerprint = distributed.broadcast_object(cache_fingerprint(cfg, view, items, amp_dtype))
        cached = cache.get(view)
        if isinstance(cached, dict) and cached.get('fingerprint') == fingerprint:
            logger.info(f"Stage 1 [{view}]: reusing the text features cached in {path}")
            features[view] = cached['text_features']
            continue
        if cached is not None:
            logger.info(f"Stage 1 [{view}]: the cached text features are out of date; rebuilding")
        finished = f"the text views learned so far are in {path}" if cache else 'no text view was cached yet'
        with stop_on_out_of_memory(f'stage 1 [{view}]', 'lower SOLVER.STAGE1.IMS_PER_BATCH (prompt learning) or '
                                   'TEST.IMS_PER_BATCH (its image features)', lambda: finished):
            features[view], _ = learn_view(cfg, model, view, items, num_classes, device, logger, amp_dtype)
        cache[view] = {'fingerprint': fingerprint, 'text_features': features[view]}
        if distributed.is_main():
            atomic_io.torch_save(cache, path)
    return features
