"""YOLOv5 loss and target assignment on hand-made cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torchvision

from efyolo.training.loss import ComputeLoss, bbox_ciou, bce_with_logits, scale_loss_gains, smooth_bce_targets
from efyolo.errors import EfyoloError

# COCO anchors in pixels, P3/8, P4/16, P5/32
ANCHORS_PX = torch.tensor(
    [
        [[10, 13], [16, 30], [33, 23]],
        [[30, 61], [62, 45], [59, 119]],
        [[116, 90], [156, 198], [373, 326]],
    ],
    dtype=torch.float32,
)
STRIDE = torch.tensor([8.0, 16.0, 32.0])
HYP = {
    "box": 0.05,
    "cls": 0.5,
    "obj": 1.0,
    "cls_pw": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "label_smoothing": 0.0,
}


def make_detect(nc: int = 3) -> SimpleNamespace:
    """A stand-in for the Detect head: anchors in grid units, as YOLOv5 stores them."""
    return SimpleNamespace(
        nc=nc,
        nl=3,
        na=3,
        no=nc + 5,
        stride=STRIDE.clone(),
        anchors=ANCHORS_PX / STRIDE.view(-1, 1, 1),
    )


def make_preds(detect, bs: int = 1, imgsz: int = 64, fill: float = 0.0) -> list[torch.Tensor]:
    return [
        torch.full((bs, detect.na, imgsz // int(s), imgsz // int(s), detect.no), fill)
        for s in detect.stride
    ]


def assigned(lt) -> set[tuple[int, int, int, int]]:
    return {tuple(int(v) for v in row) for row in torch.stack(lt.indices, 1)}


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def perfect_preds(loss: ComputeLoss, preds, targets):
    """Write raw logits that decode exactly to the assigned target boxes."""
    preds = [p.clone() for p in preds]
    for p, lt in zip(preds, loss.build_targets(preds, targets)):
        b, a, gj, gi = lt.indices
        p[b, a, gj, gi, 0:2] = logit((lt.box[:, :2] + 0.5) / 2)
        p[b, a, gj, gi, 2:4] = logit(torch.sqrt(lt.box[:, 2:4] / lt.anchors) / 2)
    return preds


# ---------------------------------------------------------------------------- assignment


def test_one_target_goes_to_its_cell_and_two_neighbours():
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect, bs=2)  # grids 8x8, 4x4, 2x2 at 64 px
    # image 1, class 2, centre (0.3, 0.45) -> level-0 grid (2.4, 3.6), an 8x8 px box (1x1 cells)
    targets = torch.tensor([[1, 2, 0.3, 0.45, 8 / 64, 8 / 64]])
    lts = loss.build_targets(preds, targets)

    # level 0 anchors (grid) 1.25x1.625, 2x3.75, 4.125x2.875: the third is > 4x too wide.
    # x = 2.4 is in the left half of cell 2 -> also cell 1; y = 3.6 is in the lower half of
    # row 3 -> also row 4.
    cells = {(3, 2), (3, 1), (4, 2)}
    assert assigned(lts[0]) == {(1, a, gj, gi) for a in (0, 1) for gj, gi in cells}
    # the box is relative to the assigned cell
    for (b, a, gj, gi), box, anc, c in zip(
        torch.stack(lts[0].indices, 1).tolist(), lts[0].box, lts[0].anchors, lts[0].cls
    ):
        assert torch.allclose(box, torch.tensor([2.4 - gi, 3.6 - gj, 1.0, 1.0]), atol=1e-5)
        assert torch.equal(anc, detect.anchors[0, a])
        assert c == 2
    # 8 px against P4 anchors (>= 30 px) and P5 anchors: nothing there
    assert lts[1].indices[0].numel() == 0
    assert lts[2].indices[0].numel() == 0


def test_neighbours_right_and_up_and_borders():
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect)
    # (6.7, 0.2) on the 8x8 grid: right half of column 6 -> column 7; upper half of row 0 but
    # row 0 has no row above (y > 1 fails) -> no vertical neighbour.
    # Two anchors fit an 8x8 px box on level 0, so each cell appears twice, and no more
    # (a neighbour outside the grid must not be clamped back onto the edge cell).
    targets = torch.tensor([[0, 0, 6.7 / 8, 0.2 / 8, 8 / 64, 8 / 64]])
    lt = loss.build_targets(preds, targets)[0]
    assert {(gj, gi) for _, _, gj, gi in assigned(lt)} == {(0, 6), (0, 7)}
    assert lt.indices[0].numel() == 2 * 2
    # (7.7, 4.3): right half of the last column -> no column to the right; upper half of row
    # 4 -> row 3
    targets = torch.tensor([[0, 0, 7.7 / 8, 4.3 / 8, 8 / 64, 8 / 64]])
    lt = loss.build_targets(preds, targets)[0]
    assert {(gj, gi) for _, _, gj, gi in assigned(lt)} == {(4, 7), (3, 7)}
    assert lt.indices[0].numel() == 2 * 2


def test_centre_on_image_edge_clamped_into_grid():
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect)
    targets = torch.tensor([[0, 0, 1.0, 1.0, 8 / 64, 8 / 64]])
    lt = loss.build_targets(preds, targets)[0]
    _, _, gj, gi = lt.indices
    assert gj.max() == 7 and gi.max() == 7
    # the box stays consistent with the clamped cell: centre at 1.0 cell from its corner
    centre = lt.box[(gj == 7) & (gi == 7), :2]
    assert torch.allclose(centre, torch.ones_like(centre))


def test_anchor_ratio_filter_per_level():
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect, imgsz=640)
    # 300x300 px: > 4x every P3 and P4 anchor, within 4x of all P5 anchors
    targets = torch.tensor([[0, 0, 0.5, 0.5, 300 / 640, 300 / 640]])
    lts = loss.build_targets(preds, targets)
    assert lts[0].indices[0].numel() == 0
    assert lts[1].indices[0].numel() == 0
    assert {a for _, a, _, _ in assigned(lts[2])} == {0, 1, 2}
    # anchor_t 2: 116x90 is out (300/90 = 3.3), 156x198 (1.92) and 373x326 (1.24) stay
    lts = ComputeLoss(detect, {**HYP, "anchor_t": 2.0}).build_targets(preds, targets)
    assert {a for _, a, _, _ in assigned(lts[2])} == {1, 2}


def test_no_targets_gives_empty_assignments():
    detect = make_detect()
    lts = ComputeLoss(detect, HYP).build_targets(make_preds(detect), torch.zeros((0, 6)))
    assert len(lts) == 3
    for lt in lts:
        assert lt.box.shape == (0, 4) and lt.anchors.shape == (0, 2)
        assert all(t.numel() == 0 for t in lt.indices)


def test_assignment_vectorised_over_many_targets():
    """Many targets: every assignment respects the ratio rule and lands near its centre."""
    gen = torch.Generator().manual_seed(0)
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect, bs=4, imgsz=128)
    n = 200
    targets = torch.cat(
        (
            torch.randint(0, 4, (n, 1), generator=gen).float(),
            torch.randint(0, 3, (n, 1), generator=gen).float(),
            torch.rand(n, 2, generator=gen),
            torch.rand(n, 2, generator=gen) * 0.6 + 0.02,
        ),
        1,
    )
    for i, lt in enumerate(loss.build_targets(preds, targets)):
        r = lt.box[:, 2:] / lt.anchors
        assert (torch.max(r, 1 / r).max(1)[0] < 4).all()
        assert ((lt.box[:, :2] >= -0.5) & (lt.box[:, :2] <= 1.5)).all()
        h, w = preds[i].shape[2:4]
        _, _, gj, gi = lt.indices
        assert gj.min() >= 0 and gj.max() < h and gi.min() >= 0 and gi.max() < w


# ---------------------------------------------------------------------------- CIoU


def test_ciou_matches_torchvision_and_hand_value():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=gen) * 4
    b1 = torch.cat((xy, torch.rand(50, 2, generator=gen) * 3 + 0.1), 1)
    xy2 = xy + torch.randn(50, 2, generator=gen) * 0.5
    b2 = torch.cat((xy2, torch.rand(50, 2, generator=gen) * 3 + 0.1), 1)
    ours = bbox_ciou(b1, b2)
    ref = 1 - torchvision.ops.complete_box_iou_loss(
        torchvision.ops.box_convert(b1, "cxcywh", "xyxy"),
        torchvision.ops.box_convert(b2, "cxcywh", "xyxy"),
        reduction="none",
    )
    assert torch.allclose(ours, ref, atol=1e-5)

    # hand case: 2x2 box at (1, 1) vs 2x1 box at (2, 1)
    # inter = 1*1 = 1, union = 4 + 2 - 1 = 5, iou = 0.2; enclosing box 3x2 -> c2 = 13; rho2 = 1
    # v = 4/pi^2 * (atan(2) - atan(1))^2, alpha = v / (v - 0.2 + 1)
    v = 4 / math.pi**2 * (math.atan(2) - math.atan(1)) ** 2
    expected = 0.2 - 1 / 13 - v * v / (v + 0.8)
    got = bbox_ciou(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 1.0, 2.0, 1.0]]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------- loss values


def test_box_loss_zero_for_perfect_prediction_and_grows_with_offset():
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    preds = make_preds(detect)
    targets = torch.tensor([[0, 1, 0.3, 0.45, 8 / 64, 12 / 64]])
    perfect = perfect_preds(loss, preds, targets)
    _, items = loss(perfect, targets)
    assert items[0].item() == pytest.approx(0.0, abs=1e-6)

    lbox = []
    for dx in (0.05, 0.2, 0.5, 1.0):
        shifted = perfect_preds(loss, preds, targets)
        shifted[0][..., 0] += dx  # shift every x logit
        lbox.append(loss(shifted, targets)[1][0].item())
    assert lbox[0] > 1e-5
    assert all(a < b for a, b in zip(lbox, lbox[1:]))


def test_obj_target_is_the_clamped_ciou():
    """Recover the objectness target from the gradient of the BCE: dL/dx = (sigmoid(x) - t) * w."""
    detect = make_detect(nc=1)
    loss = ComputeLoss(detect, HYP)
    gen = torch.Generator().manual_seed(2)
    targets = torch.tensor([[0, 0, 0.3, 0.45, 8 / 64, 12 / 64]])
    # near-perfect boxes plus noise: IoUs spread over (0, 1), some CIoUs maybe negative
    preds = perfect_preds(loss, make_preds(detect), targets)
    preds = [(p + torch.randn(p.shape, generator=gen) * 0.7).requires_grad_() for p in preds]
    loss(preds, targets)[0].backward()

    lt = loss.build_targets(preds, targets)[0]
    b, a, gj, gi = lt.indices
    p = preds[0].detach()
    weight = HYP["obj"] * 4.0 / p[..., 4].numel()  # obj gain * P3 balance / mean
    t = p[b, a, gj, gi, 4].sigmoid() - preds[0].grad[b, a, gj, gi, 4] / weight

    pxy = p[b, a, gj, gi, 0:2].sigmoid() * 2 - 0.5
    pwh = (p[b, a, gj, gi, 2:4].sigmoid() * 2) ** 2 * lt.anchors
    to_xyxy = lambda bx: torchvision.ops.box_convert(bx, "cxcywh", "xyxy")  # noqa: E731
    ref = 1 - torchvision.ops.complete_box_iou_loss(
        to_xyxy(torch.cat((pxy, pwh), 1)), to_xyxy(lt.box), reduction="none"
    )
    assert torch.allclose(t, ref.clamp(0), atol=1e-4)
    assert ref.max() > 0.3 and ref.max() - ref.min() > 0.1  # a case with varied, real IoUs
    # unassigned cells: target 0, so the gradient is sigmoid(x) * weight
    mask = torch.ones_like(p[..., 4], dtype=torch.bool)
    mask[b, a, gj, gi] = False
    expected = p[..., 4][mask].sigmoid() * weight
    assert torch.allclose(preds[0].grad[..., 4][mask], expected, atol=1e-7)


def test_class_loss_with_label_smoothing():
    nc, eps = 3, 0.1
    detect = make_detect(nc=nc)
    loss = ComputeLoss(detect, {**HYP, "label_smoothing": eps})
    preds = make_preds(detect)
    logits = torch.tensor([2.0, -1.0, 0.5])
    for p in preds:
        p[..., 5:] = logits
    targets = torch.tensor([[0, 1, 0.3, 0.45, 8 / 64, 8 / 64]])  # class 1, level 0 only
    _, items = loss(preds, targets)

    cp, cn = smooth_bce_targets(eps)
    assert (cp, cn) == (pytest.approx(0.95), pytest.approx(0.05))
    t = torch.tensor([cn, cp, cn])
    s = logits.sigmoid()
    expected = -(t * s.log() + (1 - t) * (1 - s).log()).mean()  # same for every assigned cell
    assert items[2].item() == pytest.approx(HYP["cls"] * expected.item(), rel=1e-5)


def test_single_class_has_no_class_loss():
    detect = make_detect(nc=1)
    preds = make_preds(detect, fill=0.3)
    targets = torch.tensor([[0, 0, 0.3, 0.45, 8 / 64, 8 / 64]])
    _, items = ComputeLoss(detect, HYP)(preds, targets)
    assert items[2].item() == 0.0 and items[0].item() > 0


def test_no_targets_only_objectness_loss():
    detect = make_detect()
    x, bs = -1.5, 2
    preds = make_preds(detect, bs=bs, fill=x)
    total, items = ComputeLoss(detect, HYP)(preds, torch.zeros((0, 6)))
    # every objectness target is 0: BCE = softplus(x) everywhere, on each level
    expected = HYP["obj"] * sum([4.0, 1.0, 0.4]) * math.log1p(math.exp(x))
    assert items[0].item() == 0.0 and items[2].item() == 0.0
    assert items[1].item() == pytest.approx(expected, rel=1e-5)
    assert total.shape == () and total.item() == pytest.approx(expected * bs, rel=1e-5)


def test_total_is_sum_of_items_times_batch():
    detect = make_detect()
    bs = 3
    preds = make_preds(detect, bs=bs, fill=0.2)
    targets = torch.tensor([[0, 1, 0.3, 0.45, 0.2, 0.3], [2, 2, 0.7, 0.6, 0.5, 0.4]])
    total, items = ComputeLoss(detect, HYP)(preds, targets)
    assert items.shape == (3,) and not items.requires_grad
    assert total.item() == pytest.approx(items.sum().item() * bs, rel=1e-6)
    assert (items > 0).all()


def test_focal_loss_value_and_balance_for_other_level_counts():
    x = torch.tensor([1.0, -2.0, 0.3])
    t = torch.tensor([1.0, 0.0, 0.2])
    p = x.sigmoid()
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    p_t = t * p + (1 - t) * (1 - p)
    alpha_t = t * 0.25 + (1 - t) * 0.75
    expected = (bce * alpha_t * (1 - p_t) ** 1.5).mean()
    assert bce_with_logits(x, t, gamma=1.5).item() == pytest.approx(expected.item(), rel=1e-6)
    assert bce_with_logits(x, t).item() == pytest.approx(bce.mean().item(), rel=1e-6)
    # positive weight scales the positive term only
    pw = -(2 * t * p.log() + (1 - t) * (1 - p).log())
    assert bce_with_logits(x, t, pos_weight=2.0).item() == pytest.approx(pw.mean().item(), rel=1e-6)

    four = SimpleNamespace(nc=2, nl=4, na=3, anchors=torch.ones(4, 3, 2), stride=torch.ones(4))
    assert ComputeLoss(four, HYP).balance == [4.0, 1.0, 0.25, 0.06, 0.02]
    assert ComputeLoss(make_detect(), HYP).balance == [4.0, 1.0, 0.4]


def test_scale_loss_gains():
    hyp = dict(HYP)
    out = scale_loss_gains(hyp, nc=6, nl=3, imgsz=320)
    assert out["box"] == pytest.approx(0.05)
    assert out["cls"] == pytest.approx(0.5 * 6 / 80)
    assert out["obj"] == pytest.approx(1.0 * 0.25)
    assert out["anchor_t"] == 4.0
    assert hyp == HYP  # input untouched
    out = scale_loss_gains(hyp, nc=80, nl=4, imgsz=1280)
    assert out["box"] == pytest.approx(0.05 * 0.75)
    assert out["cls"] == pytest.approx(0.5 * 0.75)
    assert out["obj"] == pytest.approx(4 * 0.75)


def test_missing_hyp_key_is_a_user_error():
    with pytest.raises(EfyoloError, match="anchor_t"):
        ComputeLoss(make_detect(), {k: v for k, v in HYP.items() if k != "anchor_t"})


# ---------------------------------------------------------------------------- gradients


def test_backward_gives_finite_grads():
    detect = make_detect()
    loss = ComputeLoss(detect, {**HYP, "fl_gamma": 1.5, "label_smoothing": 0.1})
    gen = torch.Generator().manual_seed(3)
    preds = [
        p.normal_(generator=gen).mul_(3).requires_grad_()
        for p in make_preds(detect, bs=2, imgsz=128)
    ]
    targets = torch.tensor(
        [[0, 0, 0.3, 0.4, 0.1, 0.2], [1, 2, 0.8, 0.2, 0.6, 0.5], [1, 1, 0.5, 0.5, 0.02, 0.03]]
    )
    total, _ = loss(preds, targets)
    total.backward()
    for p in preds:
        assert torch.isfinite(p.grad).all()
        assert p.grad[..., 4].abs().sum() > 0
    lt = loss.build_targets(preds, targets)[0]
    b, a, gj, gi = lt.indices
    assert preds[0].grad[b, a, gj, gi, :4].abs().sum() > 0  # box terms reach the assigned cells
    assert preds[0].grad[b, a, gj, gi, 5:].abs().sum() > 0  # class terms too


@pytest.fixture
def one_thread():
    """Tiny tensors: extra intra-op threads only add wake-up latency (10x slower on a busy
    2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_fit_free_predictions(one_thread):
    """Optimising raw predictions alone drives the loss down (about 14x in 50 Adam steps)."""
    detect = make_detect()
    loss = ComputeLoss(detect, HYP)
    torch.manual_seed(0)
    preds = [(torch.randn_like(p) * 0.5).requires_grad_() for p in make_preds(detect, bs=2)]
    targets = torch.tensor(
        [[0, 0, 0.3, 0.4, 0.15, 0.2], [0, 1, 0.7, 0.7, 0.5, 0.4], [1, 2, 0.5, 0.5, 0.9, 0.8]]
    )
    opt = torch.optim.Adam(preds, lr=0.1)
    first = None
    for _ in range(50):
        opt.zero_grad()
        total, items = loss(preds, targets)
        first = first if first is not None else total.item()
        total.backward()
        opt.step()
    final, items = loss(preds, targets)
    assert final.item() < 0.2 * first
    assert items[0].item() < 0.02  # boxes nearly exact (1 - CIoU < 0.4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loss_on_cuda_matches_cpu():
    detect = make_detect()
    preds = make_preds(detect, bs=2, fill=0.1)
    targets = torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [1, 2, 0.6, 0.5, 0.4, 0.2]])
    cpu_total, cpu_items = ComputeLoss(detect, HYP)(preds, targets)
    # anchors stay on the CPU: the loss follows the predictions' device
    gpu_total, gpu_items = ComputeLoss(detect, HYP)([p.cuda() for p in preds], targets.cuda())
    assert gpu_total.device.type == "cuda"
    assert torch.allclose(gpu_items.cpu(), cpu_items, atol=1e-5)
