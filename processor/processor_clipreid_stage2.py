"""Stage 2: re-ID fine-tuning of the image tower against the cached per-view text features.

Loss = ID_LOSS_WEIGHT * (label-smoothed CE of both classifiers)
     + TRIPLET_LOSS_WEIGHT * (batch-hard triplet on the penultimate, last and projected features)
     + sum_i I2T_LOSS_WEIGHTS[i] * CE(images of I2T_IMAGE_VIEWS[i] vs text features of I2T_TEXT_VIEWS[i]).
"""
import math
import os

import torch
from torch import nn

from loss.make_loss import msp_stage2_loss
from loss.softmax_loss import CrossEntropyLabelSmooth
from loss.triplet_loss import TripletLoss
from solver.make_optimizer import make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR
from utils import atomic_io
from utils.device import autocast
from utils.errors import UserError


def i2t_terms(cfg, text_features: dict, device) -> list:
    """(text features on device, image view, weight) for every term with a non-zero weight."""
    return [(text_features[text_view].to(device), image_view, weight)
            for text_view, image_view, weight in zip(cfg.MODEL.I2T_TEXT_VIEWS, cfg.MODEL.I2T_IMAGE_VIEWS,
                                                     cfg.MODEL.I2T_LOSS_WEIGHTS) if weight > 0]


def checkpoint_path(cfg, epoch: int) -> str:
    return os.path.join(cfg.OUTPUT_DIR, f'{cfg.MODEL.NAME}_{epoch}.pth')


def save_checkpoint(cfg, model, epoch: int) -> str:
    path = checkpoint_path(cfg, epoch)
    atomic_io.torch_save({'model': model.image_state_dict(), 'epoch': epoch, 'config': cfg.dump()}, path)
    return path


def train_stage2(cfg, model, text_features: dict, train_loader, num_classes: int, device, logger,
                 evaluate_fn=None, amp_dtype=None) -> dict:
    """Train; returns {'checkpoint': last path, 'history': [{'epoch', 'loss', 'acc', 'eval'?}]}."""
    solver = cfg.SOLVER.STAGE2
    for module in (getattr(model, 'text_encoder', None), getattr(model, 'prompt_learners', None)):
        if module is not None:
            module.requires_grad_(False)
    smoothing = 0.1 if cfg.MODEL.IF_LABELSMOOTH == 'on' else 0.0
    id_loss = CrossEntropyLabelSmooth(num_classes, epsilon=smoothing)
    triplet = TripletLoss(margin=solver.MARGIN)
    terms = i2t_terms(cfg, text_features, device)
    optimizer = make_optimizer_stage2(model.named_parameters(), solver.BASE_LR, solver.WEIGHT_DECAY,
                                      bias_lr_factor=solver.BIAS_LR_FACTOR,
                                      weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
                                      optimizer_name=solver.OPTIMIZER_NAME, momentum=solver.MOMENTUM)
    scheduler = WarmupMultiStepLR(optimizer, milestones=list(solver.STEPS), gamma=solver.GAMMA,
                                  warmup_factor=solver.WARMUP_FACTOR, warmup_iters=solver.WARMUP_EPOCHS,
                                  warmup_method=solver.WARMUP_METHOD)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history, last_checkpoint = [], None
    logger.info(f"Stage 2: {len(train_loader)} iterations per epoch, {solver.MAX_EPOCHS} epochs, "
                f"{len(terms)} image-to-text term(s)")
    for epoch in range(1, solver.MAX_EPOCHS + 1):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        total_loss, total_acc, steps = 0.0, 0.0, 0
        for step, (images, pids, camids, viewids, _) in enumerate(train_loader, start=1):
            images, pids = images.to(device, non_blocking=True), pids.to(device)
            camids, viewids = camids.to(device), viewids.to(device)
            with autocast(device, amp_dtype):
                out = model(images, cam_label=camids, view_label=viewids)
            loss, parts = msp_stage2_loss(out, pids, viewids, terms, id_loss, triplet,
                                          cfg.MODEL.ID_LOSS_WEIGHT, cfg.MODEL.TRIPLET_LOSS_WEIGHT)
            if not math.isfinite(loss.item()):
                where = f"the last checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
                raise UserError(f"stage 2 loss became {loss.item()} at epoch {epoch} iteration {step}; "
                                f"{where} (try a lower SOLVER.STAGE2.BASE_LR or SOLVER.AMP 'off')")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            acc = (out['cls_scores'][0].argmax(dim=1) == pids).float().mean().item()
            total_loss, total_acc, steps = total_loss + loss.item(), total_acc + acc, steps + 1
            if step % solver.LOG_PERIOD == 0:
                logger.info(f"Stage 2 epoch {epoch} iter {step}/{len(train_loader)}: loss {loss.item():.4f}, "
                            f"acc {acc:.3f}, lr {scheduler.get_last_lr()[0]:.2e}")
        record = {'epoch': epoch, 'loss': total_loss / max(steps, 1), 'acc': total_acc / max(steps, 1),
                  'lr': scheduler.get_last_lr()[0]}
        logger.info(f"Stage 2 epoch {epoch}/{solver.MAX_EPOCHS}: loss {record['loss']:.4f}, "
                    f"acc {record['acc']:.3f}, lr {record['lr']:.2e}")
        scheduler.step()
        last_epoch = epoch == solver.MAX_EPOCHS
        if epoch % solver.CHECKPOINT_PERIOD == 0 or last_epoch:
            last_checkpoint = save_checkpoint(cfg, model, epoch)
            logger.info(f"Saved {last_checkpoint}")
        if evaluate_fn is not None and (epoch % solver.EVAL_PERIOD == 0 or last_epoch):
            record['eval'] = evaluate_fn(model)
        history.append(record)
    return {'checkpoint': last_checkpoint, 'history': history}
