"""Learning-rate schedules of the two training stages, stepped as the published code steps them.

Both are stepped once per epoch, at the START of the epoch (`begin_epoch`), so that epoch e (1-based)
trains at the rate the published code uses in its epoch e:
- Stage 1: timm's `CosineLRScheduler` (what the published `create_scheduler` builds), stepped with the
  epoch number: linear warm-up from WARMUP_LR_INIT for t < WARMUP_EPOCHS, then the cosine of the single
  cycle `LR_MIN + (BASE_LR - LR_MIN)(1 + cos(pi t / MAX_EPOCHS)) / 2` (no warm-up prefix: the cosine
  does not restart after the warm-up), LR_MIN at t = MAX_EPOCHS.
- Stage 2: `WarmupMultiStepLR`, a closed-form torch scheduler: `base_lr * warmup * gamma ** (number of
  milestones <= t)` with a linear warm-up from WARMUP_FACTOR over WARMUP_EPOCHS; stepped without an
  argument at the start of each epoch after the constructor's own step, so epoch 1 trains at t = 1
  (warm-up factor 0.19 in the recipe) and the decays apply from the milestone epochs themselves.
Both resume exactly from `state_dict()` / `load_state_dict()`.
"""
import bisect
import re
import warnings
from typing import List, Sequence

import torch
from timm.scheduler import CosineLRScheduler
from torch.optim.lr_scheduler import LRScheduler


def make_stage1_scheduler(optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int,
                          warmup_lr_init: float, lr_min: float) -> CosineLRScheduler:
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if not 0 <= warmup_epochs <= max_epochs:
        raise ValueError(f"warmup_epochs must be in [0, max_epochs={max_epochs}], got {warmup_epochs}")
    # The published create_scheduler's fixed arguments: one cycle, no warm-up prefix, no noise.
    return CosineLRScheduler(optimizer, t_initial=max_epochs, lr_min=lr_min, cycle_mul=1.0, cycle_decay=0.1,
                             cycle_limit=1, warmup_t=warmup_epochs, warmup_lr_init=warmup_lr_init,
                             warmup_prefix=False, t_in_epochs=True, noise_range_t=None)


class WarmupMultiStepLR(LRScheduler):
    """``base_lr * warmup * gamma ** (number of milestones <= t)``.

    For ``t < warmup_iters``, ``warmup`` is ``warmup_factor`` ('constant') or rises linearly from
    ``warmup_factor`` to 1 ('linear'); afterwards it is 1. Stage-2 recipe: milestones [30, 50],
    gamma 0.1, 10 linear warm-up epochs from factor 0.1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_factor: float = 0.1, warmup_iters: int = 10, warmup_method: str = "linear",
                 last_epoch: int = -1):
        milestones = list(milestones)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor_at(self, t: int) -> float:
        warmup = 1.0
        if t < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                alpha = t / self.warmup_iters
                warmup = self.warmup_factor * (1.0 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, t)

    def get_lr(self) -> List[float]:
        factor = self.factor_at(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]


def begin_epoch(scheduler, epoch: int) -> None:
    """Set the rate of 1-based `epoch` before it trains, as the published trainers do."""
    if isinstance(scheduler, CosineLRScheduler):
        scheduler.step(epoch)
        return
    if scheduler.last_epoch >= epoch:  # already there (a resumed run that saved after this step)
        return
    with warnings.catch_warnings():
        # Stepping before the epoch's first optimizer step is the published order, not a mistake.
        warnings.filterwarnings('ignore', message=re.escape('Detected call of `lr_scheduler.step()` before'))
        while scheduler.last_epoch < epoch:
            scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate of the optimizer's first parameter group (the base rate)."""
    return optimizer.param_groups[0]['lr']
