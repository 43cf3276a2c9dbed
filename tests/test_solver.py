import math
import warnings

import pytest
import torch
from torch import nn

from solver.make_optimizer import make_optimizer_stage1, make_optimizer_stage2
from solver.scheduler import WarmupMultiStepLR, begin_epoch, make_stage1_scheduler
from utils.errors import UserError


def tiny_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    model[1].weight.requires_grad_(False)
    return model


def lr_per_epoch(scheduler, optimizer, epochs, first=1):
    """The rates of epochs first..first+epochs-1, stepped as the trainers step them."""
    rates = []
    for epoch in range(first, first + epochs):
        begin_epoch(scheduler, epoch)
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
    return rates


def flatten(rows):
    return [value for row in rows for value in row]


def test_stage1_optimizer_adam_single_group():
    model = tiny_model()
    opt = make_optimizer_stage1(model.parameters(), base_lr=3.5e-4, weight_decay=1e-4)
    assert isinstance(opt, torch.optim.Adam)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert group["lr"] == 3.5e-4 and group["weight_decay"] == 1e-4
    assert all(p.requires_grad for p in group["params"])
    assert len(group["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_stage2_bias_groups_get_factor_lr_and_bias_decay():
    model = tiny_model()
    opt = make_optimizer_stage2(model.named_parameters(), base_lr=5e-6, weight_decay=1e-4,
                                bias_lr_factor=2.0, weight_decay_bias=1e-5)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"weights", "biases"}
    params = dict(model.named_parameters())
    assert {id(p) for p in by_name["biases"]["params"]} == {id(params["0.bias"]), id(params["1.bias"])}
    assert {id(p) for p in by_name["weights"]["params"]} == {id(params["0.weight"]), id(params["2.weight"])}
    assert by_name["biases"]["lr"] == pytest.approx(1e-5) and by_name["biases"]["weight_decay"] == 1e-5
    assert by_name["weights"]["lr"] == 5e-6 and by_name["weights"]["weight_decay"] == 1e-4


def test_two_groups_update_like_one_group_per_parameter():
    """The published optimizer has one group per parameter; the merged groups give the same weights."""
    torch.manual_seed(0)
    # No BatchNorm here: it makes the first bias's gradient rounding noise, which Adam would amplify.
    merged_model, single_model = (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)) for _ in range(2))
    single_model.load_state_dict(merged_model.state_dict())
    merged = make_optimizer_stage2(merged_model.named_parameters(), 1e-2, 1e-4, weight_decay_bias=1e-3)
    per_param = torch.optim.Adam([{"params": [p], "lr": 2e-2 if "bias" in n else 1e-2,
                                   "weight_decay": 1e-3 if "bias" in n else 1e-4}
                                  for n, p in single_model.named_parameters() if p.requires_grad])
    x = torch.randn(8, 3)
    for _ in range(5):
        for model, opt in ((merged_model, merged), (single_model, per_param)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for (name, a), b in zip(merged_model.named_parameters(), single_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


def test_bias_lr_factor_kept_by_scheduler():
    model = tiny_model()
    opt = make_optimizer_stage2(model.named_parameters(), base_lr=1.0, weight_decay=0.0)
    sched = WarmupMultiStepLR(opt, [2], gamma=0.1, warmup_factor=0.5, warmup_iters=0)
    lr_per_epoch(sched, opt, 3)
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    assert by_name["biases"] == pytest.approx(0.2) and by_name["weights"] == pytest.approx(0.1)


@pytest.mark.parametrize("name, cls", [("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                       ("SGD", torch.optim.SGD)])
def test_optimizer_names(name, cls):
    opt = make_optimizer_stage2(tiny_model().named_parameters(), 0.1, 0.0, optimizer_name=name, momentum=0.8)
    assert isinstance(opt, cls)
    if name == "SGD":
        assert opt.param_groups[0]["momentum"] == 0.8


def test_unknown_optimizer_is_user_error_naming_key():
    with pytest.raises(UserError, match="SOLVER.STAGE2.OPTIMIZER_NAME.*'Adamm'"):
        make_optimizer_stage2(tiny_model().named_parameters(), 0.1, 0.0, optimizer_name="Adamm")
    with pytest.raises(UserError, match="SOLVER.STAGE1.OPTIMIZER_NAME"):
        make_optimizer_stage1(tiny_model().parameters(), 0.1, 0.0, optimizer_name="rmsprop")


def cosine_by_hand(t, base=3.5e-4, warmup=5, init=1e-5, lr_min=1e-6, total=120):
    """The published stage-1 rate at epoch t: warm-up, then the cosine of the whole cycle (no prefix)."""
    if t < warmup:
        return init + (base - init) * t / warmup
    if t >= total:
        return lr_min
    return lr_min + (base - lr_min) * (1 + math.cos(math.pi * t / total)) / 2


def test_stage1_cosine_values():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=3.5e-4)
    sched = make_stage1_scheduler(opt, max_epochs=120, warmup_epochs=5, warmup_lr_init=1e-5, lr_min=1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # set by the constructor, never trained with
    rates = [r[0] for r in lr_per_epoch(sched, opt, 125)]
    for epoch in range(1, 126):
        assert rates[epoch - 1] == pytest.approx(cosine_by_hand(epoch), rel=1e-9), epoch
    assert all(a >= b for a, b in zip(rates[4:], rates[5:]))


def multistep_by_hand(t, base=3.5e-4, steps=(30, 50), gamma=0.1, factor=0.1, warmup=10):
    warm = factor + (1 - factor) * t / warmup if t < warmup else 1.0
    return base * warm * gamma ** sum(t >= s for s in steps)


def test_warmup_multistep_values():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=3.5e-4)
    sched = WarmupMultiStepLR(opt, milestones=[30, 50], gamma=0.1, warmup_factor=0.1, warmup_iters=10)
    rates = [r[0] for r in lr_per_epoch(sched, opt, 60)]
    assert rates[0] == pytest.approx(3.5e-4 * 0.19)  # epoch 1 trains at t = 1, as published
    assert rates[29 - 1] == pytest.approx(3.5e-4) and rates[30 - 1] == pytest.approx(3.5e-5)
    assert rates[50 - 1] == pytest.approx(3.5e-6)
    for epoch in range(1, 61):
        assert rates[epoch - 1] == pytest.approx(multistep_by_hand(epoch), rel=1e-9)


def test_warmup_constant():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(opt, [4], warmup_factor=0.25, warmup_iters=3, warmup_method="constant")
    assert [r[0] for r in lr_per_epoch(sched, opt, 6)] == pytest.approx([0.25, 0.25, 1.0, 0.1, 0.1, 0.1])


def test_begin_epoch_raises_no_warning():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupMultiStepLR(opt, [4], warmup_iters=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        begin_epoch(sched, 1)


def test_scheduler_argument_validation():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(opt, [50, 30])
    with pytest.raises(ValueError, match="warmup_method"):
        WarmupMultiStepLR(opt, [30], warmup_method="cosine")
    with pytest.raises(ValueError, match="warmup_epochs"):
        make_stage1_scheduler(opt, max_epochs=5, warmup_epochs=6, warmup_lr_init=0.0, lr_min=0.0)


@pytest.mark.parametrize("kind", ["cosine", "multistep"])
def test_state_dict_round_trip_continues_identically(kind):
    def build():
        model = tiny_model()
        opt = make_optimizer_stage2(model.named_parameters(), base_lr=1e-3, weight_decay=1e-4)
        if kind == "cosine":
            sched = make_stage1_scheduler(opt, max_epochs=12, warmup_epochs=3, warmup_lr_init=1e-5, lr_min=1e-6)
        else:
            sched = WarmupMultiStepLR(opt, [4, 8], warmup_iters=3)
        return opt, sched

    opt, sched = build()
    reference = lr_per_epoch(sched, opt, 12)

    opt, sched = build()
    lr_per_epoch(sched, opt, 5)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2, sched2 = build()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = lr_per_epoch(sched2, opt2, 7, first=6)
    assert flatten(resumed) == pytest.approx(flatten(reference[5:]), rel=1e-12)
    assert len(resumed[0]) == 2
