"""Stage 2: re-ID fine-tuning of the image tower against the cached per-view text features.

Loss (loss/make_loss.py, Stage2Criterion) = ID_LOSS_WEIGHT * (label-smoothed CE of both classifiers)
     + TRIPLET_LOSS_WEIGHT * (batch-hard triplet on the penultimate, last and projected features)
     + sum_i I2T_LOSS_WEIGHTS[i] * CE(images of I2T_IMAGE_VIEWS[i] vs text features of I2T_TEXT_VIEWS[i]).

`train_step` is the one training step (the trainer and benchmarks/bench_train_step.py call it). It leaves
its numbers on the device: the host reads them, and checks that the loss stayed finite, only every
LOG_PERIOD iterations and at the end of each epoch, so a GPU is never made to wait once per step.
"""
import os
import time
from dataclasses import dataclass

import torch

from loss.make_loss import Stage2Criterion
from model.checkpoint_meta import describe_model
from processor import resume as training_state
from processor.accumulation import accumulated_step, check_sub_batches
from processor.settings import description_settings
from reporting.metrics_log import log_evaluation, report
from solver.make_optimizer import make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR, begin_epoch, current_lr
from utils import atomic_io, distributed
from utils.device import grad_scaler
from utils.errors import UserError
from utils.out_of_memory import stop_on_out_of_memory
from utils.progress import progress
from utils.vocabulary import checkpoint_file


def i2t_terms(cfg, text_features: dict, device) -> list:
    """(text features on device, image view, weight) for every term with a non-zero weight."""
    return [(text_features[text_view].to(device), image_view, weight)
            for text_view, image_view, weight in zip(cfg.MODEL.I2T_TEXT_VIEWS, cfg.MODEL.I2T_IMAGE_VIEWS,
                                                     cfg.MODEL.I2T_LOSS_WEIGHTS) if weight > 0]


def checkpoint_path(cfg, epoch: int) -> str:
    return os.path.join(cfg.OUTPUT_DIR, checkpoint_file(cfg.MODEL.NAME, epoch))


def save_checkpoint(cfg, model, epoch: int) -> str:
    path = checkpoint_path(cfg, epoch)
    if distributed.is_main():
        atomic_io.torch_save({'model': model.image_state_dict(), 'epoch': epoch, 'config': cfg.dump(),
                              'meta': describe_model(description_settings(cfg), model)}, path)
        training_state.prune_checkpoints(cfg.OUTPUT_DIR, cfg.MODEL.NAME, cfg.SOLVER.KEEP_CHECKPOINTS, epoch)
    return path


def build_criterion(cfg, num_classes: int, text_features: dict) -> Stage2Criterion:
    return Stage2Criterion(num_classes, id_weight=cfg.MODEL.ID_LOSS_WEIGHT, triplet_weight=cfg.MODEL.TRIPLET_LOSS_WEIGHT,
                           margin=cfg.SOLVER.STAGE2.MARGIN,
                           label_smoothing=0.1 if cfg.MODEL.IF_LABELSMOOTH == 'on' else 0.0,
                           i2t_terms=i2t_terms(cfg, text_features, 'cpu'))


def stage2_solver(cfg, model, device, amp_dtype=None) -> tuple:
    """(optimizer, scheduler, gradient scaler) of stage 2. The text side (text tower, prompts) is frozen:
    stage 2 trains the image side against the fixed stage-1 text features."""
    for module in (getattr(model, 'text_encoder', None), getattr(model, 'prompt_learners', None)):
        if module is not None:
            module.requires_grad_(False)
    solver = cfg.SOLVER.STAGE2
    optimizer = make_optimizer_stage2(model.named_parameters(), solver.BASE_LR, solver.WEIGHT_DECAY,
                                      bias_lr_factor=solver.BIAS_LR_FACTOR,
                                      weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
                                      optimizer_name=solver.OPTIMIZER_NAME, momentum=solver.MOMENTUM)
    scheduler = WarmupMultiStepLR(optimizer, milestones=list(solver.STEPS), gamma=solver.GAMMA,
                                  warmup_factor=solver.WARMUP_FACTOR, warmup_iters=solver.WARMUP_EPOCHS,
                                  warmup_method=solver.WARMUP_METHOD)
    return optimizer, scheduler, grad_scaler(device, amp_dtype)


@dataclass
class StepResult:
    """One step's numbers, still on the device (reading them would wait for the step to finish)."""
    loss: torch.Tensor
    parts: dict
    correct: torch.Tensor  # images whose first classifier's top class is their identity
    images: int


def train_step(net, criterion, optimizer, scaler, images, pids, camids, viewids, amp_dtype=None,
               accum_steps: int = 1) -> StepResult:
    """Forward, the stage-2 loss, backward and the optimizer step on one batch (already on the device),
    in `accum_steps` sub-batches of whole identities (processor/accumulation.py)."""
    optimizer.zero_grad(set_to_none=True)
    loss, parts, correct = accumulated_step(net, criterion, images, pids, camids, viewids, scaler, amp_dtype,
                                            accum_steps)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss, parts, correct, len(pids))


class EpochTotals:
    """Running sums of an epoch on the device, and the first iteration whose loss was not finite."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_bad_step = torch.full((), -1, device=device, dtype=torch.int64)
        self.parts = {}  # loss part name -> running sum
        self.images = self.steps = 0

    def add(self, result: StepResult, step: int) -> None:
        bad = ~torch.isfinite(result.loss)
        self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step)
        self.loss += result.loss.double()
        for name, part in result.parts.items():
            self.parts[name] = self.parts.get(name, 0.0) + part.double()
        self.correct += result.correct
        self.images += result.images
        self.steps += 1

    def check_finite(self, epoch: int, where_to_resume: str) -> None:
        """Stop every process, naming the epoch and iteration, when any process saw a non-finite loss."""
        first_bad = int(self.first_bad_step)
        any_bad, = distributed.mean_across_ranks(float(first_bad >= 0))
        if any_bad > 0:
            at = f"iteration {first_bad}" if first_bad >= 0 else "an iteration of another process"
            raise UserError(f"stage 2 loss became non-finite (NaN or Inf) at epoch {epoch} {at}; {where_to_resume} "
                            f"(try a lower SOLVER.STAGE2.BASE_LR or SOLVER.AMP 'off')")

    def means(self) -> dict:
        """{'loss', 'acc', 'loss_<part>'...}: the epoch's means, over the processes too."""
        steps = max(self.steps, 1)
        names = ['loss', 'acc', *(f'loss_{name}' for name in self.parts)]
        values = (float(self.loss) / steps, int(self.correct) / max(self.images, 1),
                  *(float(total) / steps for total in self.parts.values()))
        return dict(zip(names, distributed.mean_across_ranks(*values)))


def train_stage2(cfg, model, text_features: dict, train_loader, num_classes: int, device, logger,
                 evaluate_fn=None, amp_dtype=None, resume: dict | None = None) -> dict:
    """Train; returns {'checkpoint': last path, 'history': [{'epoch', 'loss', 'acc', 'eval'?}]}.

    `resume`: a state from processor.resume.start_or_resume; training continues after its epoch. Every
    epoch ends by writing OUTPUT_DIR/resume.pth.
    """
    solver = cfg.SOLVER.STAGE2
    optimizer, scheduler, scaler = stage2_solver(cfg, model, device, amp_dtype)
    criterion = build_criterion(cfg, num_classes, text_features).to(device)
    net = distributed.wrap_ddp(model, device)  # training steps go through DDP; `model` is the plain module
    if cfg.SOLVER.COMPILE:
        net = torch.compile(net)
    history, last_checkpoint, first_epoch, resumable = [], None, 1, ''
    if resume is not None:
        first_epoch, history, last_checkpoint = training_state.restore_training_state(
            resume, model, optimizer, scheduler, scaler, device, logger)
        resumable = f"{resume['path']} holds the state after epoch {first_epoch - 1}"
        if first_epoch > solver.MAX_EPOCHS:
            logger.info(f"nothing left to train: the resume state is at epoch {first_epoch - 1} and "
                        f"SOLVER.STAGE2.MAX_EPOCHS is {solver.MAX_EPOCHS} (raise it to train on)")
    local_batch = solver.IMS_PER_BATCH // distributed.world_size()
    not_splittable = check_sub_batches(local_batch, solver.ACCUM_STEPS, cfg.DATALOADER.NUM_INSTANCE)
    if not_splittable:
        raise UserError(not_splittable)
    finer = [n for n in range(solver.ACCUM_STEPS + 1, local_batch + 1)
             if not check_sub_batches(local_batch, n, cfg.DATALOADER.NUM_INSTANCE)]
    batch_advice = (f"set SOLVER.STAGE2.ACCUM_STEPS {finer[0]} to train the same batch of SOLVER.STAGE2.IMS_PER_BATCH "
                    f"{solver.IMS_PER_BATCH} in smaller pieces, or lower SOLVER.STAGE2.IMS_PER_BATCH" if finer
                    else f"lower SOLVER.STAGE2.IMS_PER_BATCH ({solver.IMS_PER_BATCH})")

    def last_good() -> str:
        where = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                 else "no weights checkpoint was written yet")
        return where + (f", and {resumable}" if resumable else '')

    bar, run_start, epochs_run = None, time.monotonic(), 0
    logger.info(f"Stage 2: {len(train_loader)} iterations per epoch, {solver.MAX_EPOCHS} epochs, "
                f"{len(criterion.term_views)} image-to-text term(s)")
    for epoch in range(first_epoch, solver.MAX_EPOCHS + 1):
        begin_epoch(scheduler, epoch)
        train_loader.sampler.set_epoch(epoch)
        # Worker seeds depend on the epoch only, so a resumed epoch sees the same augmentation.
        train_loader.generator = training_state.epoch_generator(cfg.SOLVER.SEED, epoch)
        model.train()
        if bar is None:  # made here so that a run starting at a later epoch counts from there
            bar = progress(initial=(epoch - 1) * len(train_loader), desc='stage 2', unit='it', logger=logger)
        bar.total = bar.n + (solver.MAX_EPOCHS - epoch + 1) * len(train_loader)  # epochs differ in length
        epoch_start = time.monotonic()
        totals = EpochTotals(device)
        for step, (images, pids, camids, viewids, _) in enumerate(train_loader, start=1):
            with stop_on_out_of_memory(f'stage 2 epoch {epoch} iteration {step}', batch_advice, last_good):
                # non-blocking: the loader pins its batches, so the copies queue behind the previous step
                images, pids, camids, viewids = (tensor.to(device, non_blocking=True)
                                                 for tensor in (images, pids, camids, viewids))
                result = train_step(net, criterion, optimizer, scaler, images, pids, camids, viewids, amp_dtype,
                                    solver.ACCUM_STEPS)
            totals.add(result, step)
            distributed.check_replicas(model.parameters(), f'stage 2 epoch {epoch} step {step}')
            bar.update()
            if step % solver.LOG_PERIOD == 0:
                totals.check_finite(epoch, last_good())
                report(logger, cfg.OUTPUT_DIR, 'stage2_iter', f"Stage 2 epoch {epoch} iter {step}/{len(train_loader)}",
                       bar=bar, epoch=epoch, iter=step, iters=len(train_loader), loss=float(result.loss),
                       acc=int(result.correct) / result.images, lr=current_lr(optimizer),
                       **{f'loss_{name}': float(part) for name, part in result.parts.items()})
        totals.check_finite(epoch, last_good())
        distributed.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere before saving and evaluating
        means = totals.means()
        record = {'epoch': epoch, 'epochs': solver.MAX_EPOCHS, 'loss': means.pop('loss'), 'acc': means.pop('acc'),
                  'lr': current_lr(optimizer)}
        epochs_run += 1
        epoch_s = time.monotonic() - epoch_start
        eta = (time.monotonic() - run_start) / epochs_run * (solver.MAX_EPOCHS - epoch)
        report(logger, cfg.OUTPUT_DIR, 'stage2_epoch', f"Stage 2 epoch {epoch}/{solver.MAX_EPOCHS}", bar=bar,
               **record, **means, time_s=epoch_s, eta_s=eta)
        record.pop('epochs')
        last_epoch = epoch == solver.MAX_EPOCHS
        if epoch % solver.CHECKPOINT_PERIOD == 0 or last_epoch:
            last_checkpoint = save_checkpoint(cfg, model, epoch)
            logger.info(f"Saved {last_checkpoint}")
        if evaluate_fn is not None and (epoch % solver.EVAL_PERIOD == 0 or last_epoch):
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), \
                    stop_on_out_of_memory(f'the evaluation after epoch {epoch}', 'lower TEST.IMS_PER_BATCH', last_good):
                record['eval'] = evaluate_fn(model)  # RNG-neutral: evaluating never changes the training
            log_evaluation(cfg.OUTPUT_DIR, record['eval'], epoch=epoch)
        history.append(record)
        path = training_state.save_resume_state(cfg, model, optimizer, scheduler, scaler, epoch, text_features,
                                            history, last_checkpoint, device, meta=describe_model(description_settings(cfg), model))
        resumable = f"{path} holds the state after epoch {epoch}"
    if bar is not None:
        bar.close()
    return {'checkpoint': last_checkpoint, 'history': history}
