"""NMS, checkpoints, EMA, optimizer groups and LR schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from efyolo import EfyoloError, build_model
from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from efyolo.training.ema import ModelEMA, ema_horizon
from efyolo.training.optim import build_optimizer, lr_lambda, set_learning_rates
from efyolo.ops.nms import non_max_suppression


def _pred(rows: list[list[float]], nc: int = 2) -> torch.Tensor:
    """Rows of (xc, yc, w, h, obj, cls0, cls1...) -> [1, N, 5 + nc]."""
    return torch.tensor(rows, dtype=torch.float32).view(1, -1, 5 + nc)


def test_nms_suppresses_overlaps_per_class() -> None:
    pred = _pred(
        [
            [50, 50, 20, 20, 0.9, 0.9, 0.1],  # class 0, score 0.81
            [51, 51, 20, 20, 0.8, 0.9, 0.1],  # overlaps the first, same class: suppressed
            [51, 51, 20, 20, 0.8, 0.1, 0.9],  # same place, other class: kept (class-aware)
            [150, 150, 10, 10, 0.1, 0.9, 0.1],  # below conf
        ]
    )
    (det,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert det.shape == (2, 6)
    assert det[0].tolist() == pytest.approx([40, 40, 60, 60, 0.81, 0], abs=1e-5)
    assert det[1, 5] == 1
    (agnostic,) = non_max_suppression(pred, 0.25, 0.45, agnostic=True)
    assert agnostic.shape[0] == 1
    (only1,) = non_max_suppression(pred, 0.25, 0.45, classes=[1])
    assert only1[:, 5].tolist() == [1.0]


def test_nms_multi_label_and_max_det() -> None:
    pred = _pred([[50, 50, 20, 20, 1.0, 0.6, 0.5]])
    (det,) = non_max_suppression(pred, 0.25, 0.45, multi_label=True)
    assert sorted(det[:, 5].tolist()) == [0.0, 1.0]
    many = _pred([[10 * i + 5, 5, 4, 4, 0.9, 0.9, 0.0] for i in range(20)])
    (det,) = non_max_suppression(many, 0.25, 0.45, max_det=7)
    assert det.shape[0] == 7
    (empty,) = non_max_suppression(torch.zeros(1, 0, 7), 0.25, 0.45)
    assert empty.shape == (0, 6)


def test_checkpoint_round_trip_is_weights_only_safe(tmp_path) -> None:
    model = build_model("yolov5n", nc=3)
    path = save_checkpoint(
        {"model_config": model.yaml, "state_dict": model.state_dict(), "names": ["a", "b", "c"], "imgsz": 64},
        tmp_path / "w" / "best.pt",
    )
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == "efyolo-checkpoint"
    restored = model_from_checkpoint(path)
    assert restored.names == ["a", "b", "c"]
    for (k, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed away


def test_bad_weights_files_give_clear_errors(tmp_path) -> None:
    with pytest.raises(EfyoloError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EfyoloError, match="junk.pt is not a readable"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, foreign)
    with pytest.raises(EfyoloError, match="foreign.pt is not an efyolo checkpoint"):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.pt"
    model = build_model("yolov5n", nc=1)
    save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(EfyoloError, match="truncated.pt"):
        load_checkpoint(truncated)


def test_checkpoint_with_wrong_shapes(tmp_path) -> None:
    model = build_model("yolov5n", nc=3)
    other = build_model("yolov5s", nc=3)
    path = save_checkpoint({"model_config": model.yaml, "state_dict": other.state_dict()}, tmp_path / "x.pt")
    with pytest.raises(EfyoloError, match="do not fit"):
        model_from_checkpoint(path)


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
