"""Stage 2: re-ID fine-tuning of the image tower against the cached per-view text features.

Loss = ID_LOSS_WEIGHT * (label-smoothed CE of both classifiers)
     + TRIPLET_LOSS_WEIGHT * (batch-hard triplet on the penultimate, last and projected features)
     + sum_i I2T_LOSS_WEIGHTS[i] * CE(images of I2T_IMAGE_VIEWS[i] vs text features of I2T_TEXT_VIEWS[i]).
"""
import datetime
import math
import os
import time

import torch

from loss.make_loss import msp_stage2_loss
from model.checkpoint_meta import describe_model
from loss.softmax_loss import CrossEntropyLabelSmooth
from loss.triplet_loss import TripletLoss
from solver.make_optimizer import make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR, begin_epoch, current_lr
from utils import atomic_io, checkpoint, distributed
from utils.device import autocast
from utils.errors import UserError
from reporting.metrics_log import append_record, log_evaluation
from utils.progress import progress


def i2t_terms(cfg, text_features: dict, device) -> list:
    """(text features on device, image view, weight) for every term with a non-zero weight."""
    return [(text_features[text_view].to(device), image_view, weight)
            for text_view, image_view, weight in zip(cfg.MODEL.I2T_TEXT_VIEWS, cfg.MODEL.I2T_IMAGE_VIEWS,
                                                     cfg.MODEL.I2T_LOSS_WEIGHTS) if weight > 0]


def checkpoint_path(cfg, epoch: int) -> str:
    return os.path.join(cfg.OUTPUT_DIR, f'{cfg.MODEL.NAME}_{epoch}.pth')


def save_checkpoint(cfg, model, epoch: int) -> str:
    path = checkpoint_path(cfg, epoch)
    if distributed.is_main():
        atomic_io.torch_save({'model': model.image_state_dict(), 'epoch': epoch, 'config': cfg.dump(),
                              'meta': describe_model(cfg, model)}, path)
        checkpoint.prune_checkpoints(cfg.OUTPUT_DIR, cfg.MODEL.NAME, cfg.SOLVER.KEEP_CHECKPOINTS, epoch)
    return path


def train_stage2(cfg, model, text_features: dict, train_loader, num_classes: int, device, logger,
                 evaluate_fn=None, amp_dtype=None, resume: dict | None = None) -> dict:
    """Train; returns {'checkpoint': last path, 'history': [{'epoch', 'loss', 'acc', 'eval'?}]}.

    `resume`: a state from utils.checkpoint.start_or_resume; training continues after its epoch. Every
    epoch ends by writing OUTPUT_DIR/resume.pth.
    """
    solver = cfg.SOLVER.STAGE2
    for module in (getattr(model, 'text_encoder', None), getattr(model, 'prompt_learners', None)):
        if module is not None:
            module.requires_grad_(False)
    smoothing = 0.1 if cfg.MODEL.IF_LABELSMOOTH == 'on' else 0.0
    id_loss = CrossEntropyLabelSmooth(num_classes, epsilon=smoothing)
    triplet = TripletLoss(margin=solver.MARGIN)
    terms = i2t_terms(cfg, text_features, device)
    net = distributed.wrap_ddp(model, device)  # training steps go through DDP; `model` is the plain module
    if cfg.SOLVER.COMPILE:
        net = torch.compile(net)
    optimizer = make_optimizer_stage2(model.named_parameters(), solver.BASE_LR, solver.WEIGHT_DECAY,
                                      bias_lr_factor=solver.BIAS_LR_FACTOR,
                                      weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
                                      optimizer_name=solver.OPTIMIZER_NAME, momentum=solver.MOMENTUM)
    scheduler = WarmupMultiStepLR(optimizer, milestones=list(solver.STEPS), gamma=solver.GAMMA,
                                  warmup_factor=solver.WARMUP_FACTOR, warmup_iters=solver.WARMUP_EPOCHS,
                                  warmup_method=solver.WARMUP_METHOD)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    history, last_checkpoint, first_epoch, resumable = [], None, 1, ''
    if resume is not None:
        first_epoch, history, last_checkpoint = checkpoint.restore_training_state(
            resume, model, optimizer, scheduler, scaler, device, logger)
        resumable = f"{resume['path']} holds the state after epoch {first_epoch - 1}"
        if first_epoch > solver.MAX_EPOCHS:
            logger.info(f"nothing left to train: the resume state is at epoch {first_epoch - 1} and "
                        f"SOLVER.STAGE2.MAX_EPOCHS is {solver.MAX_EPOCHS} (raise it to train on)")
    bar, run_start, epochs_run = None, time.monotonic(), 0
    logger.info(f"Stage 2: {len(train_loader)} iterations per epoch, {solver.MAX_EPOCHS} epochs, "
                f"{len(terms)} image-to-text term(s)")
    for epoch in range(first_epoch, solver.MAX_EPOCHS + 1):
        begin_epoch(scheduler, epoch)
        train_loader.sampler.set_epoch(epoch)
        # Worker seeds depend on the epoch only, so a resumed epoch sees the same augmentation.
        train_loader.generator = checkpoint.epoch_generator(cfg.SOLVER.SEED, epoch)
        model.train()
        if bar is None:  # made here so that a run starting at a later epoch counts from there
            bar = progress(initial=(epoch - 1) * len(train_loader), desc='stage 2', unit='it', logger=logger)
        bar.total = bar.n + (solver.MAX_EPOCHS - epoch + 1) * len(train_loader)  # epochs differ in length
        epoch_start = time.monotonic()
        total_loss, total_acc, steps = 0.0, 0.0, 0
        for step, (images, pids, camids, viewids, _) in enumerate(train_loader, start=1):
            images, pids = images.to(device, non_blocking=True), pids.to(device)
            camids, viewids = camids.to(device), viewids.to(device)
            with autocast(device, amp_dtype):
                out = net(images, cam_label=camids, view_label=viewids)
            loss, parts = msp_stage2_loss(out, pids, viewids, terms, id_loss, triplet,
                                          cfg.MODEL.ID_LOSS_WEIGHT, cfg.MODEL.TRIPLET_LOSS_WEIGHT)
            step_loss, = distributed.mean_across_ranks(loss.item())  # a non-finite loss on any rank stops all
            if not math.isfinite(step_loss):
                where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                         else "no weights checkpoint was written yet")
                where += f", and {resumable}" if resumable else ''
                raise UserError(f"stage 2 loss became {step_loss} at epoch {epoch} iteration {step}; "
                                f"{where} (try a lower SOLVER.STAGE2.BASE_LR or SOLVER.AMP 'off')")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            distributed.check_replicas(model.parameters(), f'stage 2 epoch {epoch} step {step}')
            acc = (out['cls_scores'][0].argmax(dim=1) == pids).float().mean().item()
            total_loss, total_acc, steps = total_loss + loss.item(), total_acc + acc, steps + 1
            bar.set_postfix({'epoch': f'{epoch}/{solver.MAX_EPOCHS}', 'loss': f'{loss.item():.4f}',
                             'acc': f'{acc:.3f}', 'lr': f'{current_lr(optimizer):.2e}'}, refresh=False)
            bar.update()
            if step % solver.LOG_PERIOD == 0:
                logger.info(f"Stage 2 epoch {epoch} iter {step}/{len(train_loader)}: loss {loss.item():.4f}, "
                            f"acc {acc:.3f}, lr {current_lr(optimizer):.2e}")
                append_record(cfg.OUTPUT_DIR, 'stage2_iter', epoch=epoch, iter=step, iters=len(train_loader),
                              loss=loss.item(), acc=acc, lr=current_lr(optimizer),
                              **{f'loss_{name}': part.item() for name, part in parts.items()})
        distributed.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere before saving and evaluating
        record = {'epoch': epoch, 'loss': total_loss / max(steps, 1), 'acc': total_acc / max(steps, 1),
                  'lr': current_lr(optimizer)}
        record['loss'], record['acc'] = distributed.mean_across_ranks(record['loss'], record['acc'])
        epochs_run += 1
        eta = (time.monotonic() - run_start) / epochs_run * (solver.MAX_EPOCHS - epoch)
        logger.info(f"Stage 2 epoch {epoch}/{solver.MAX_EPOCHS}: loss {record['loss']:.4f}, "
                    f"acc {record['acc']:.3f}, lr {record['lr']:.2e}, "
                    f"{time.monotonic() - epoch_start:.1f} s, eta {datetime.timedelta(seconds=round(eta))}")
        append_record(cfg.OUTPUT_DIR, 'stage2_epoch', **record, epochs=solver.MAX_EPOCHS,
                      time_s=time.monotonic() - epoch_start, eta_s=eta)
        last_epoch = epoch == solver.MAX_EPOCHS
        if epoch % solver.CHECKPOINT_PERIOD == 0 or last_epoch:
            last_checkpoint = save_checkpoint(cfg, model, epoch)
            logger.info(f"Saved {last_checkpoint}")
        if evaluate_fn is not None and (epoch % solver.EVAL_PERIOD == 0 or last_epoch):
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
                record['eval'] = evaluate_fn(model)  # RNG-neutral: evaluating never changes the training
            log_evaluation(cfg.OUTPUT_DIR, record['eval'], epoch=epoch)
        history.append(record)
        path = checkpoint.save_resume_state(cfg, model, optimizer, scheduler, scaler, epoch, text_features,
                                            history, last_checkpoint, device)
        resumable = f"{path} holds the state after epoch {epoch}"
    if bar is not None:
        bar.close()
    return {'checkpoint': last_checkpoint, 'history': history}
