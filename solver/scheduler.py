"""Learning-rate schedules for the two training stages.

Both are ``torch.optim.lr_scheduler.LRScheduler`` subclasses with a closed-form rate, so
``state_dict()`` / ``load_state_dict()`` resume them exactly. They are stepped once per EPOCH:
build the scheduler (it sets the rate of epoch 0), train an epoch, call ``scheduler.step()``.
While training epoch ``e`` (0-based), ``scheduler.last_epoch == e``.
"""
import bisect
import math
from typing import List, Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler


class CosineWarmupLR(LRScheduler):
    """Linear warm-up from ``warmup_lr_init`` to the base rate over ``warmup_epochs`` epochs, then a
    half cosine from the base rate down to ``lr_min`` over the remaining ``max_epochs - warmup_epochs``
    epochs; ``lr_min`` afterwards. Stage-1 recipe: base 3.5e-4, 5 warm-up epochs from 1e-5,
    ``lr_min`` 1e-6, 120 epochs.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 0,
                 warmup_lr_init: float = 0.0, lr_min: float = 0.0, last_epoch: int = -1):
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if not 0 <= warmup_epochs <= max_epochs:
            raise ValueError(f"warmup_epochs must be in [0, max_epochs={max_epochs}], got {warmup_epochs}")
        if warmup_lr_init < 0 or lr_min < 0:
            raise ValueError("warmup_lr_init and lr_min must be >= 0")
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_lr_init = warmup_lr_init
        self.lr_min = lr_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr_init + (base_lr - self.warmup_lr_init) * epoch / self.warmup_epochs
        cosine_epochs = self.max_epochs - self.warmup_epochs
        if cosine_epochs == 0 or epoch >= self.max_epochs:
            return self.lr_min
        progress = (epoch - self.warmup_epochs) / cosine_epochs
        return self.lr_min + 0.5 * (base_lr - self.lr_min) * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> List[float]:
        return [self.lr_at(self.last_epoch, base_lr) for base_lr in self.base_lrs]


class WarmupMultiStepLR(LRScheduler):
    """``base_lr * warmup * gamma ** (number of milestones <= epoch)``.

    During the first ``warmup_iters`` epochs ``warmup`` is ``warmup_factor`` ('constant') or rises
    linearly from ``warmup_factor`` to 1 ('linear'); afterwards it is 1. Stage-2 recipe:
    milestones [30, 50], gamma 0.1, 10 linear warm-up epochs from factor 0.1.
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

    def factor_at(self, epoch: int) -> float:
        warmup = 1.0
        if epoch < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup = self.warmup_factor
            else:
                alpha = epoch / self.warmup_iters
                warmup = self.warmup_factor * (1.0 - alpha) + alpha
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def get_lr(self) -> List[float]:
        factor = self.factor_at(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
