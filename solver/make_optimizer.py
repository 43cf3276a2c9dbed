"""Optimizers for the two training stages."""
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn

from utils.errors import UserError

OPTIMIZER_NAMES = ("Adam", "AdamW", "SGD")


def _build(name: str, param_groups: List[Dict], lr: float, weight_decay: float, momentum: float,
           key: str) -> torch.optim.Optimizer:
    if name == "Adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        return torch.optim.SGD(param_groups, lr=lr, weight_decay=weight_decay, momentum=momentum)
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
    """One group per trainable parameter: names containing ``bias`` get ``base_lr * bias_lr_factor``
    and ``weight_decay_bias``, the others ``base_lr`` and ``weight_decay``.

    Each group keeps the parameter name under ``"name"`` (ignored by torch, handy for logging)."""
    groups = []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if "bias" in name:
            lr, decay = base_lr * bias_lr_factor, weight_decay_bias
        else:
            lr, decay = base_lr, weight_decay
        groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": name})
    if not groups:
        raise ValueError("make_optimizer_stage2: no parameter requires grad")
    return _build(optimizer_name, groups, base_lr, weight_decay, momentum, key)
