"""Optimizers for the two training stages."""
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

from utils.errors import UserError

OPTIMIZER_NAMES = ("Adam", "AdamW", "SGD")


def _build(name: str, param_groups: List[Dict], lr: float, weight_decay: float, momentum: float,
           key: str) -> torch.optim.Optimizer:
    # One fused kernel for all parameters of a group where torch has one (CPU and CUDA tensors);
    # the arithmetic is the per-parameter algorithm's.
    params = [p for group in param_groups for p in group["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if name == "Adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "AdamW":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "SGD":
        return torch.optim.SGD(param_groups, lr=lr, weight_decay=weight_decay, momentum=momentum, fused=fused)
    raise UserError(f"{key}: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")


def make_optimizer_stage1(params: Iterable[nn.Parameter], base_lr: float, weight_decay: float,
                          optimizer_name: str = "Adam", momentum: float = 0.9,
                          key: str = "SOLVER.STAGE1.OPTIMIZER_NAME") -> torch.optim.Optimizer:
    """One parameter group with every trainable parameter of ``params`` (stage 1: the prompt learner)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("make_optimizer_stage1: no parameter requires grad")
    group = {"params": trainable, "lr": base_lr, "weight_decay": weight_decay}
    return _build(optimizer_name, [group], base_lr, weight_decay, momentum, key)


def make_optimizer_stage2(named_params: Iterable[Tuple[str, nn.Parameter]], base_lr: float,
                          weight_decay: float, bias_lr_factor: float = 2.0, weight_decay_bias: float = 1e-4,
                          optimizer_name: str = "Adam", momentum: float = 0.9,
                          key: str = "SOLVER.STAGE2.OPTIMIZER_NAME") -> torch.optim.Optimizer:
    """The published learning rates and decays in two groups: parameters whose name contains ``bias``
    get ``base_lr * bias_lr_factor`` and ``weight_decay_bias`` (group "biases"), the others ``base_lr``
    and ``weight_decay`` (group "weights"). Frozen parameters are left out.

    The published code makes one group per parameter with these values; Adam, AdamW and SGD update each
    parameter on its own, so two groups give the same update with two fused kernels instead of ~150
    small ones."""
    weights, biases = [], []
    for name, param in named_params:
        if param.requires_grad:
            (biases if "bias" in name else weights).append(param)
    groups = [{"params": params, "lr": lr, "weight_decay": decay, "name": group_name}
              for group_name, params, lr, decay in (("weights", weights, base_lr, weight_decay),
                                                    ("biases", biases, base_lr * bias_lr_factor, weight_decay_bias))
              if params]
    if not groups:
        raise ValueError("make_optimizer_stage2: no parameter requires grad")
    return _build(optimizer_name, groups, base_lr, weight_decay, momentum, key)
