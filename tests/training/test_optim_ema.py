"""EMA, optimizer groups, the backbone LR multiplier, Adam betas and LR schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from efyolo import EfyoloError, build_model
from efyolo.training.ema import ModelEMA, ema_horizon
from efyolo.training.optim import build_optimizer, lr_lambda, set_learning_rates


def test_ema_follows_model() -> None:
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1))
    assert ema.ema.weight.detach() != pytest.approx(1.0)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.ema.weight, torch.ones(1, 2), atol=1e-6)
    assert 0 < d < 0.9


def test_ema_update_is_the_exact_average_of_every_tensor() -> None:
    """Parameters and float buffers: d * ema + (1 - d) * model; integer buffers copied; the
    cached tensor pairing follows in-place updates and a different model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.9, tau=5)
    for step in range(3):
        expected = {k: v.clone() for k, v in ema.ema.state_dict().items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 3, 8, 8))  # moves BN running stats and num_batches_tracked
        ema.update(model)
        d = ema.decay()
        for k, v in ema.ema.state_dict().items():
            m = model.state_dict()[k]
            want = m if not v.dtype.is_floating_point else d * expected[k] + (1 - d) * m
            assert torch.allclose(v, want, atol=1e-6), (step, k)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.fill_(2.0)
    before = ema.ema[0].weight.clone()
    ema.update(other)
    d = ema.decay()
    assert torch.allclose(ema.ema[0].weight, d * before + (1 - d) * 2.0, atol=1e-6)


def test_ema_horizon_keeps_yolov5_for_long_runs_and_shortens_it_for_short_ones() -> None:
    assert ema_horizon(500_000) == (0.9999, 2000)
    decay, tau = ema_horizon(1000)  # the CPU demo: a window of 100 steps, ramp 20
    assert decay == pytest.approx(0.99) and tau == pytest.approx(20)
    for steps in (1, 10, 300, 5000, 50_000):
        decay, tau = ema_horizon(steps)
        window = 1 / (1 - decay)
        assert 1 <= window <= max(steps / 10, 1) + 1e-6 and 0 < tau <= window / 5 + 1e-9


def test_optimizer_groups_and_warmup() -> None:
    model = build_model("yolov5n", nc=2)
    opt = build_optimizer(model, "SGD", lr=0.01, weight_decay=5e-4)
    by_kind = {g["kind"]: g for g in opt.param_groups}
    assert set(by_kind) == {"bias", "decay", "no_decay"}
    assert by_kind["decay"]["weight_decay"] == 5e-4 and by_kind["bias"]["weight_decay"] == 0
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    set_learning_rates(opt, 0.01, 1.0, warmup_progress=0.0, warmup_bias_lr=0.1)
    assert by_kind["bias"]["lr"] == pytest.approx(0.1) and by_kind["decay"]["lr"] == 0
    set_learning_rates(opt, 0.01, 0.5, warmup_progress=None)
    assert all(g["lr"] == pytest.approx(0.005) for g in opt.param_groups)
    with pytest.raises(EfyoloError, match="unknown optimizer"):
        build_optimizer(model, "Lion")


def test_backbone_lr_multiplier() -> None:
    model = build_model("yolov5n-efficientformer-l1", nc=2)
    opt = build_optimizer(model, "AdamW", lr=0.001, backbone_lr_mult=0.1)
    names = {g["name"]: g for g in opt.param_groups}
    assert names["backbone.decay"]["lr_scale"] == 0.1 and names["decay"]["lr_scale"] == 1.0
    set_learning_rates(opt, 0.001, 1.0)
    assert names["backbone.decay"]["lr"] == pytest.approx(1e-4)


def test_adam_betas_follow_momentum_and_beta2() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(model, "AdamW", lr=0.001, momentum=0.9, beta2=0.99)
    assert all(g["betas"] == (0.9, 0.99) for g in opt.param_groups)
    assert build_optimizer(model, "Adam").param_groups[0]["betas"] == (0.937, 0.999)  # YOLOv5's
    with pytest.raises(EfyoloError, match="adam_beta2"):
        build_optimizer(model, "AdamW", beta2=1.0)


def test_lr_schedules() -> None:
    lin, cos = lr_lambda(10, 0.01, False), lr_lambda(10, 0.01, True)
    assert lin(0) == pytest.approx(1) and lin(10) == pytest.approx(0.01)
    assert cos(0) == pytest.approx(1) and cos(10) == pytest.approx(0.01)
    assert cos(5) == pytest.approx(0.505)
