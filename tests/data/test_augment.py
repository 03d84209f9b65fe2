"""Augmentations keep boxes consistent: draw coloured rectangles, augment, check each box.

Every scene is filled rectangles in distinct colours on YOLOv5's grey (114), class id = colour
index. After an augmentation, the pixels of each colour (found as connected components) must
lie inside that class's box and match it (IoU of the component's tight box with the label box),
and the colour must fill most of the box. Pixels of a colour without a box may only be a small
fragment of an object that left the image (the box_candidates filter).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from efyolo.data.augment import (
    _clipped_quad_boxes,
    apply_colour_and_flip,
    apply_train_augment,
    augment_hsv,
    box_candidates,
    flip_lr,
    flip_ud,
    letterbox,
    letterbox_labels,
    load_mosaic,
    mixup,
    mosaic4,
    random_flip,
    random_perspective,
    resize_long_side,
    train_sample,
)
from efyolo.errors import EfyoloError
from efyolo.ops.boxes import scale_boxes

GREY = 114
# BGR colours far from each other and from any blend of another colour with the grey
PALETTE = {
    0: (0, 0, 255),
    1: (0, 255, 0),
    2: (255, 0, 0),
    3: (0, 255, 255),
    4: (255, 0, 255),
    5: (255, 255, 0),
    6: (0, 0, 0),
    7: (255, 255, 255),
}
TOL = 60  # max channel difference for a pixel to count as a colour (interpolated edges blend)

HYP = {  # hyp.scratch-low, with rotation and shear switched on to exercise the warp
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 10.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 5.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}
GEOMETRY_ONLY = {**HYP, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
EMPTY = np.zeros((0, 5), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Scenes and the consistency check
# --------------------------------------------------------------------------------------------


def draw_scene(h: int, w: int, objects: dict[int, tuple[int, int, int, int]]):
    """Grey ``[h, w, 3]`` image with filled rectangles ``{class: (x1, y1, x2, y2)}`` and labels."""
    img = np.full((h, w, 3), GREY, dtype=np.uint8)
    rows = []
    for c, (x1, y1, x2, y2) in objects.items():
        img[y1:y2, x1:x2] = PALETTE[c]
        rows.append((c, x1, y1, x2, y2))
    return img, np.array(rows, dtype=np.float32).reshape(-1, 5)


SCENE_A = (96, 128, {0: (10, 8, 50, 40), 1: (70, 45, 118, 90)})
SCENE_B = (128, 96, {2: (4, 10, 40, 60), 3: (50, 80, 92, 124)})
SCENE_C = (128, 128, {4: (30, 30, 80, 70), 5: (90, 2, 126, 40)})
SCENE_D = (64, 128, {6: (2, 20, 40, 62), 7: (60, 4, 120, 30)})
SCENES = [draw_scene(h, w, objs) for h, w, objs in (SCENE_A, SCENE_B, SCENE_C, SCENE_D)]
MAX_OBJECT_AREA = 50 * 40


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def colour_mask(img: np.ndarray, colour, tol: int = TOL) -> np.ndarray:
    return (np.abs(img.astype(np.int16) - np.array(colour)).max(-1) <= tol).astype(np.uint8)


def components(mask: np.ndarray) -> list[tuple[float, float, float, float, int]]:
    """Connected regions of a mask as ``(x1, y1, x2, y2, area)`` tight boxes."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [(x, y, x + w, y + h, a) for x, y, w, h, a in stats[1:n].tolist()]


def within(inner, outer, slack: float) -> bool:
    return (
        inner[0] >= outer[0] - slack
        and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack
        and inner[3] <= outer[3] + slack
    )


def assert_consistent(
    img: np.ndarray,
    labels: np.ndarray,
    palette=PALETTE,
    *,
    min_iou: float = 0.7,
    min_fill: float = 0.6,
    slack: float = 2.0,
    max_stray: float = 0.0,
    tol: int = TOL,
) -> None:
    """Each box holds a matching region of its colour; colour outside boxes is a small stray.

    Args:
        min_iou: least IoU between the box and the tight box of its colour region.
        min_fill: least fraction of the box covered by its colour (rotation lowers it).
            Both are checked for boxes of at least 8 x 8 pixels.
        slack: pixels a colour region may stick out of its box (interpolation).
        max_stray: largest area (pixels) of a colour region that belongs to no box.
        tol: largest channel difference of a pixel that counts as the colour.
    """
    assert labels.dtype == np.float32 and labels.ndim == 2 and labels.shape[1] == 5
    for c, colour in palette.items():
        mask = colour_mask(img, colour, tol)
        regions = components(mask)
        boxes = labels[labels[:, 0] == c, 1:5]
        for box in boxes:
            inside = [r for r in regions if within(r, box, slack)]
            assert inside, f"class {c}: no region of its colour inside box {box}"
            x1, y1, x2, y2 = np.round(box).astype(int)
            if x2 - x1 >= 8 and y2 - y1 >= 8:  # slivers: anti-aliased edges dominate, skip
                best = max(iou(r, box) for r in inside)
                assert best > min_iou, f"class {c}: box {box} vs regions {inside}: IoU {best}"
                fill = mask[y1:y2, x1:x2].mean()
                assert fill > min_fill, f"class {c}: colour fills {fill:.2f} of box {box}"
        h, w = img.shape[:2]
        for r in regions:
            if not any(within(r, box, slack) for box in boxes):
                # only a fragment of an object that left the image may lose its box: at the
                # border, or a strip too thin to keep (a tile cut by the mosaic canvas edge)
                at_border = r[0] <= 1 or r[1] <= 1 or r[2] >= w - 1 or r[3] >= h - 1
                thin = min(r[2] - r[0], r[3] - r[1]) <= 3
                assert (at_border or thin) and r[4] <= max_stray, (
                    f"class {c}: region {r} of its colour has no box"
                )


# --------------------------------------------------------------------------------------------
# letterbox and resize
# --------------------------------------------------------------------------------------------


LETTERBOX_CASES = [
    # (src h, w), new_shape, auto, scaleup
    ((96, 128), 160, False, True),  # enlarge, non-square
    ((160, 120), 64, False, True),  # shrink, portrait
    ((100, 100), 64, False, True),  # square to square
    ((101, 160), 128, False, True),  # odd total padding (23.5 per side)
    ((50, 70), (96, 160), False, False),  # no enlarging: pure padding
    ((97, 141), 160, True, True),  # minimum rectangle
    ((150, 83), 96, True, True),
]


@pytest.mark.parametrize("src, new_shape, auto, scaleup", LETTERBOX_CASES)
def test_letterbox_round_trip(src, new_shape, auto, scaleup):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*src, 3), dtype=np.uint8)
    xy = rng.uniform(0, 1, (20, 4)) * (src[1], src[0], src[1], src[0])
    boxes = np.concatenate((np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])), 1)
    labels = np.concatenate((np.zeros((20, 1)), boxes), 1).astype(np.float32)

    out, gain, pad = letterbox(img, new_shape, auto=auto, scaleup=scaleup)
    mapped = letterbox_labels(labels, gain, pad)
    back = scale_boxes(mapped[:, 1:], out.shape[:2], src, ratio_pad=(gain, pad))
    np.testing.assert_allclose(back, labels[:, 1:], atol=1e-3)

    target = (new_shape, new_shape) if isinstance(new_shape, int) else tuple(new_shape)
    assert out.dtype == np.uint8 and out.shape[2] == 3
    if auto:
        assert all(o <= t and (t - o) % 32 == 0 for o, t in zip(out.shape[:2], target))
        assert any(round(s * gain) == o for s, o in zip(src, out.shape[:2]))  # one side fits
    else:
        assert out.shape[:2] == target
    if scaleup and not auto:
        # without ratio_pad, scale_boxes recomputes the same letterbox from the shapes (it
        # cannot know about scaleup=False or auto=True: pass ratio_pad for those)
        back = scale_boxes(mapped[:, 1:], out.shape[:2], src)
        np.testing.assert_allclose(back, labels[:, 1:], atol=1e-3)


def test_letterbox_padding_split_like_yolov5():
    img = np.full((101, 160, 3), 200, dtype=np.uint8)  # -> 81 rows at gain 0.8, 47 rows of padding
    out, gain, (pad_w, pad_h) = letterbox(img, 128)
    assert gain == 0.8 and (pad_w, pad_h) == (0.0, 23.5)
    column = out[:, 64, 0]
    assert (column[:23] == GREY).all() and (column[23:104] == 200).all()
    assert (column[104:] == GREY).all()  # 23 rows above, 24 below


@pytest.mark.parametrize("new_shape, auto", [(160, False), (64, False), ((96, 160), True)])
def test_letterbox_keeps_boxes_on_objects(new_shape, auto):
    img, labels = SCENES[0]
    out, gain, pad = letterbox(img, new_shape, auto=auto)
    assert_consistent(out, letterbox_labels(labels, gain, pad), slack=1.5, min_iou=0.8)


def test_letterbox_labels_empty():
    out = letterbox_labels(EMPTY, 0.5, (3.0, 4.5))
    assert out.shape == (0, 5) and out.dtype == np.float32


@pytest.mark.parametrize(
    "shape, augment, expected_shape, interp",
    [
        ((200, 100), False, (128, 64), cv2.INTER_AREA),  # shrink for evaluation
        ((200, 100), True, (128, 64), cv2.INTER_LINEAR),  # shrink for training
        ((50, 75), False, (86, 128), cv2.INTER_LINEAR),  # enlarge: ceil(50 * 128 / 75) = 86
    ],
)
def test_resize_long_side(shape, augment, expected_shape, interp):
    img = np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8)
    out, hw0, hw = resize_long_side(img, 128, augment)
    assert hw0 == shape and hw == expected_shape and out.shape == (*expected_shape, 3)
    expected = cv2.resize(img, expected_shape[::-1], interpolation=interp)
    np.testing.assert_array_equal(out, expected)


def test_resize_long_side_no_op_copies():
    img = np.zeros((64, 128, 3), dtype=np.uint8)
    out, hw0, hw = resize_long_side(img, 128, augment=False)
    assert hw0 == hw == (64, 128) and out is not img
    np.testing.assert_array_equal(out, img)


def test_resize_long_side_is_exact_for_awkward_ratios():
    for h0, w0 in [(3, 7), (499, 333), (1, 640), (479, 641)]:
        _, _, (h, w) = resize_long_side(np.zeros((h0, w0, 3), np.uint8), 640, augment=True)
        assert max(h, w) == 640


# --------------------------------------------------------------------------------------------
# HSV
# --------------------------------------------------------------------------------------------


def test_augment_hsv_leaves_geometry_alone():
    img, _ = SCENES[2]
    before = img.copy()
    out = augment_hsv(img, np.random.default_rng(3), 0.015, 0.7, 0.4)
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    # a per-pixel table: every pixel of one input colour gets one output colour
    for colour in [PALETTE[4], PALETTE[5], (GREY,) * 3]:
        where = (img == colour).all(-1)
        assert where.any()
        assert len(np.unique(out[where], axis=0)) == 1


def test_augment_hsv_zero_gains_is_identity():
    img, _ = SCENES[0]
    rng = np.random.default_rng(0)
    out = augment_hsv(img, rng, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_augment_hsv_value_gain_scales_brightness():
    img = np.full((8, 8, 3), 100, dtype=np.uint8)  # grey: saturation 0, value 100
    rng = np.random.default_rng(5)
    gain = 1 + np.random.default_rng(5).uniform(-1, 1, 3)[2] * 0.4
    out = augment_hsv(img, rng, 0.0, 0.0, 0.4)
    assert (out == int(100 * gain)).all()


# --------------------------------------------------------------------------------------------
# random_perspective
# --------------------------------------------------------------------------------------------


def _stray_bound(scale: float) -> float:
    """Largest colour fragment box_candidates may drop: 10% of the scaled area, or a 2-px strip."""
    side = np.sqrt(MAX_OBJECT_AREA) * 1.5 * (1 + scale)
    return 0.1 * MAX_OBJECT_AREA * (1 + scale) ** 2 * 1.5 + 3 * side


@pytest.mark.parametrize("seed", range(6))
def test_random_perspective_keeps_boxes_on_objects(seed):
    img, labels = SCENES[seed % 4]
    rng = np.random.default_rng(seed)
    out, new = random_perspective(
        img, labels, rng, degrees=10, translate=0.1, scale=0.3, shear=5, perspective=0.0
    )
    assert out.shape == img.shape and out.dtype == np.uint8
    assert new.dtype == np.float32 and new.shape[1] == 5 and len(new) <= len(labels)
    # boxes of rotated corners are larger than the objects: looser fill, still tight IoU
    assert_consistent(out, new, min_iou=0.7, min_fill=0.4, max_stray=_stray_bound(0.3))


def test_random_perspective_with_perspective_and_border():
    img, labels = SCENES[2]
    rng = np.random.default_rng(11)
    out, new = random_perspective(img, labels, rng, degrees=5, scale=0.2, perspective=0.0005,
                                  border=(8, -16))
    assert out.shape == (128 + 16, 128 - 32, 3)
    assert_consistent(out, new, min_iou=0.6, min_fill=0.4, max_stray=_stray_bound(0.2))


def test_random_perspective_identity():
    img, labels = SCENES[1]
    out, new = random_perspective(img, labels, np.random.default_rng(0), 0, 0, 0, 0, 0)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(new, labels)
    assert out is not img


def test_random_perspective_drops_objects_that_leave():
    # zero parameters and border -32: the output is exactly the centre crop img[32:96, 32:96]
    img, labels = draw_scene(
        128,
        128,
        {
            0: (2, 2, 20, 20),  # entirely outside the crop
            1: (20, 40, 50, 70),  # crosses the left edge: clipped to x 0..18
            2: (5, 80, 34, 110),  # leaves a 2-px strip: too thin, dropped
            3: (50, 50, 70, 60),  # fully inside
        },
    )
    out, new = random_perspective(img, labels, np.random.default_rng(0), 0, 0, 0, 0, 0,
                                  border=(-32, -32))
    np.testing.assert_array_equal(out, img[32:96, 32:96])
    expected = np.array([[1, 0, 8, 18, 38], [3, 18, 18, 38, 28]], dtype=np.float32)
    np.testing.assert_allclose(new, expected, atol=1e-4)
    assert_consistent(out, new, slack=0.0, min_iou=0.99, min_fill=0.99, max_stray=2 * 30, tol=0)


def _clip_polygon(poly: list, w: float, h: float) -> list:
    """Sutherland-Hodgman: the part of a polygon inside ``[0, w] x [0, h]``."""
    sides = [(0, 0.0, 1), (0, w, -1), (1, 0.0, 1), (1, h, -1)]  # axis, value, inward sign
    for axis, value, sign in sides:
        out = []
        for k, p in enumerate(poly):
            q = poly[k - 1]
            p_in, q_in = sign * (p[axis] - value) >= 0, sign * (q[axis] - value) >= 0
            if p_in != q_in:
                t = (value - q[axis]) / (p[axis] - q[axis])
                out.append((q[0] + t * (p[0] - q[0]), q[1] + t * (p[1] - q[1])))
            if p_in:
                out.append(p)
        poly = out
    return poly


def test_warped_boxes_are_the_visible_part():
    w, h = 100, 80
    rng = np.random.default_rng(0)
    quads = []
    for _ in range(300):  # rotated, sheared, scaled rectangles anywhere around the image
        centre = rng.uniform(-40, 140, 2)
        a, shear = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3)
        half = rng.uniform(1, 150, 2)
        basis = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ [[1, shear], [0, 1]]
        unit = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
        quads.append(centre + unit @ basis.T)
    boxes = _clipped_quad_boxes(np.array(quads), w, h)
    hits = 0
    for quad, box in zip(quads, boxes):
        part = np.array(_clip_polygon([tuple(p) for p in quad], w, h)).reshape(-1, 2)
        if len(part) and np.ptp(part, 0).min() > 1e-9:
            hits += 1
            np.testing.assert_allclose(box, [*part.min(0), *part.max(0)], atol=1e-6)
        else:  # misses the image
            assert (box[2:] - box[:2]).min() < 1e-6
    assert 100 < hits < 300


def test_axis_aligned_boxes_are_clipped_like_yolov5():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-60, 160, (200, 4))
    boxes = np.concatenate((np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])), 1)
    quads = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
    yolov5 = np.stack((boxes[:, 0].clip(0, 100), boxes[:, 1].clip(0, 80),
                       boxes[:, 2].clip(0, 100), boxes[:, 3].clip(0, 80)), 1)
    got = _clipped_quad_boxes(quads, 100, 80)
    area = (yolov5[:, 2] - yolov5[:, 0]) * (yolov5[:, 3] - yolov5[:, 1])
    np.testing.assert_array_equal(got[area > 0], yolov5[area > 0])
    assert (area > 0).sum() > 50


def test_box_candidates_thresholds():
    before = np.array([[0, 0, 10, 10]] * 4, dtype=np.float64)
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 4, 4]], np.float64)
    # same; 2 px wide (not > 2); 9% of the area; 16% of the area
    np.testing.assert_array_equal(box_candidates(before, after), [True, False, False, True])
    thin = np.array([[0, 0, 1000, 9.9]])
    assert not box_candidates(thin, thin)[0]  # aspect ratio 101


# --------------------------------------------------------------------------------------------
# flips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [flip_lr, flip_ud])
def test_flip_keeps_boxes_and_is_an_involution(flip):
    img, labels = SCENES[3]
    out, new = flip(img, labels)
    assert out.shape == img.shape and out.flags["C_CONTIGUOUS"]
    assert_consistent(out, new, slack=0.0, min_iou=0.99, min_fill=0.99, tol=0)
    back, again = flip(out, new)
    np.testing.assert_array_equal(back, img)
    np.testing.assert_allclose(again, labels)


def test_flip_lr_exact_coordinates():
    img = np.zeros((10, 100, 3), np.uint8)
    _, new = flip_lr(img, np.array([[3, 10, 1, 30, 9]], np.float32))
    np.testing.assert_array_equal(new, [[3, 70, 1, 90, 9]])
    _, new = flip_ud(img, np.array([[3, 10, 1, 30, 4]], np.float32))
    np.testing.assert_array_equal(new, [[3, 10, 6, 30, 9]])


def test_random_flip_probabilities():
    img, labels = SCENES[0]
    out, new = random_flip(img, labels, np.random.default_rng(0), flipud=1.0, fliplr=1.0)
    np.testing.assert_array_equal(out, img[::-1, ::-1])
    out, new = random_flip(img, labels, np.random.default_rng(0), flipud=0.0, fliplr=0.0)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(new, labels)
    rng = np.random.default_rng(0)
    flipped = sum(
        not np.array_equal(random_flip(img, labels, rng, 0.0, 0.5)[0], img) for _ in range(200)
    )
    assert 70 < flipped < 130


# --------------------------------------------------------------------------------------------
# mosaic and mixup
# --------------------------------------------------------------------------------------------


def test_mosaic4_places_tiles_around_the_centre():
    imgsz = 128
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (255, 255, 255)]
    shapes = [(96, 128), (128, 96), (128, 128), (64, 128)]
    tiles = [(np.full((*s, 3), c, np.uint8), EMPTY) for s, c in zip(shapes, colours)]
    for seed in range(5):
        canvas, labels, (xc, yc) = mosaic4(tiles, imgsz, np.random.default_rng(seed))
        assert canvas.shape == (256, 256, 3) and labels.shape == (0, 5)
        assert 64 <= xc <= 192 and 64 <= yc <= 192
        # (x1, y1, x2, y2) of each tile on the canvas: 0 ends at the centre, 1-3 start there
        expected = [
            (max(xc - 128, 0), max(yc - 96, 0), xc, yc),
            (xc, max(yc - 128, 0), min(xc + 96, 256), yc),
            (max(xc - 128, 0), yc, xc, min(yc + 128, 256)),
            (xc, yc, min(xc + 128, 256), min(yc + 64, 256)),
        ]
        for colour, box in zip(colours, expected):
            regions = components(colour_mask(canvas, colour))
            assert [r[:4] for r in regions] == [box]
        grey = (canvas == GREY).all(-1).sum()
        assert grey == 256 * 256 - sum((b[2] - b[0]) * (b[3] - b[1]) for b in expected)


def test_mosaic4_keeps_boxes_on_objects():
    for seed in range(4):
        canvas, labels, _ = mosaic4(SCENES, 128, np.random.default_rng(seed))
        assert canvas.shape == (256, 256, 3) and labels.shape == (8, 5)
        assert labels[:, 1:].min() >= 0 and labels[:, 1:].max() <= 256
        # tiles are cut only at the canvas edges; a cut object keeps a clipped box
        visible = labels[(labels[:, 3] > labels[:, 1]) & (labels[:, 4] > labels[:, 2])]
        assert_consistent(canvas, visible, slack=0.0, min_iou=0.99, min_fill=0.99, tol=0)


@pytest.mark.parametrize("seed", range(6))
def test_load_mosaic_keeps_boxes_on_objects(seed):
    out, labels = load_mosaic(SCENES, 128, np.random.default_rng(seed), GEOMETRY_ONLY)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert labels.dtype == np.float32 and labels.shape[1] == 5
    assert set(labels[:, 0].astype(int)) <= set(range(8))
    assert_consistent(out, labels, min_fill=0.4, max_stray=_stray_bound(HYP["scale"]))


def test_load_mosaic_without_warp_is_a_centre_crop():
    flat = {**GEOMETRY_ONLY, "degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0}
    out, labels = load_mosaic(SCENES, 128, np.random.default_rng(2), flat)
    canvas, _, _ = mosaic4(SCENES, 128, np.random.default_rng(2))
    np.testing.assert_array_equal(out, canvas[64:192, 64:192])
    assert_consistent(out, labels, slack=0.0, min_iou=0.99, min_fill=0.99, tol=0,
                      max_stray=0.1 * MAX_OBJECT_AREA + 2 * 50)


def test_mixup_blends_and_concatenates():
    img1, labels1 = draw_scene(64, 96, {0: (4, 4, 30, 30), 1: (4, 34, 40, 60)})
    img2, labels2 = draw_scene(64, 96, {2: (50, 4, 90, 30), 3: (60, 36, 92, 60)})
    out, labels = mixup(img1, labels1, img2, labels2, np.random.default_rng(7))
    r = np.random.default_rng(7).beta(32.0, 32.0)
    assert 0.2 < r < 0.8
    np.testing.assert_array_equal(out, (img1 * r + img2 * (1 - r)).astype(np.uint8))
    np.testing.assert_array_equal(labels, np.concatenate((labels1, labels2)))
    # each object now shows its colour blended with the other image's grey
    blended = {c: [int(v * r + GREY * (1 - r)) for v in PALETTE[c]] for c in (0, 1)}
    blended.update({c: [int(GREY * r + v * (1 - r)) for v in PALETTE[c]] for c in (2, 3)})
    assert_consistent(out, labels, blended, slack=0.0, min_iou=0.99, min_fill=0.99, tol=0)


def test_mixup_refuses_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        mixup(np.zeros((8, 8, 3), np.uint8), EMPTY, np.zeros((8, 9, 3), np.uint8), EMPTY,
              np.random.default_rng(0))


def test_mixup_ratio_is_beta_32_32():
    rng = np.random.default_rng(0)
    ones, zeros = np.full((1, 1, 3), 200, np.uint8), np.zeros((1, 1, 3), np.uint8)
    ratios = [mixup(ones, EMPTY, zeros, EMPTY, rng)[0][0, 0, 0] / 200 for _ in range(300)]
    assert abs(np.mean(ratios) - 0.5) < 0.02 and 0.03 < np.std(ratios) < 0.1  # sd 0.062


# --------------------------------------------------------------------------------------------
# compositions
# --------------------------------------------------------------------------------------------


def _loader(imgsz: int):
    """``load(i)`` of a 4-image dataset: resized to long side ``imgsz``, labels scaled along."""

    def load(i: int):
        img, labels = SCENES[i % 4]
        out, (h0, w0), (h, w) = resize_long_side(img, imgsz, augment=True)
        labels = labels.copy()
        labels[:, [1, 3]] *= w / w0
        labels[:, [2, 4]] *= h / h0
        return out, labels

    return load


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_train_sample_keeps_boxes_on_objects(mosaic):
    hyp = {**GEOMETRY_ONLY, "mosaic": mosaic, "flipud": 0.5}
    rng = np.random.default_rng(0)
    for i in range(6):
        img, labels = train_sample(i % 4, 4, _loader(128), 128, rng, hyp)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert labels.dtype == np.float32 and labels.shape[1] == 5
        assert_consistent(img, labels, min_fill=0.4, max_stray=_stray_bound(hyp["scale"]))


def test_apply_train_augment_keeps_boxes_on_objects():
    img, labels = SCENES[0]
    boxed, gain, pad = letterbox(img, 128)
    out, new = apply_train_augment(boxed, letterbox_labels(labels, gain, pad),
                                   np.random.default_rng(4), GEOMETRY_ONLY)
    assert out.shape == (128, 128, 3)
    assert_consistent(out, new, min_fill=0.4, max_stray=_stray_bound(HYP["scale"]))


def _run_all(rng: np.random.Generator, labels_of):
    """Every random function once; ``labels_of(k)`` gives the labels for scene k."""
    img = SCENES[0][0]
    tiles = [(s[0], labels_of(k)) for k, s in enumerate(SCENES)]
    hyp = {**HYP, "mixup": 1.0}
    return [
        augment_hsv(img, rng, 0.5, 0.5, 0.5),
        random_perspective(img, labels_of(0), rng, 10, 0.1, 0.5, 5, 0.001),
        random_flip(img, labels_of(0), rng, 0.5, 0.5),
        mosaic4(tiles, 128, rng),
        load_mosaic(tiles, 128, rng, hyp),
        mixup(img, labels_of(0), img[::-1], labels_of(1), rng),
        apply_train_augment(img, labels_of(0), rng, hyp),
        apply_colour_and_flip(img, labels_of(0), rng, hyp),
        train_sample(1, 4, lambda i: tiles[i], 128, rng, hyp),
        train_sample(1, 4, lambda i: tiles[i], 128, rng, {**hyp, "mosaic": 0.0}),
    ]


def _flatten(results):
    arrays = []
    for r in results:
        arrays.extend(r if isinstance(r, tuple) else (r,))
    return arrays


def test_same_seed_same_samples():
    labels_of = lambda k: SCENES[k][1]  # noqa: E731
    first = _flatten(_run_all(np.random.default_rng(123), labels_of))
    second = _flatten(_run_all(np.random.default_rng(123), labels_of))
    other = _flatten(_run_all(np.random.default_rng(124), labels_of))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    images = [a for a in first if isinstance(a, np.ndarray) and a.dtype == np.uint8]
    assert sum(not np.array_equal(a, b) for a, b in zip(images, other)) >= len(images) - 2


def test_empty_labels_flow_through_everything():
    results = _run_all(np.random.default_rng(0), lambda k: EMPTY)
    label_outputs = [r[1] for r in results if isinstance(r, tuple)]
    assert len(label_outputs) == len(results) - 1  # all but augment_hsv
    for labels in label_outputs:
        assert labels.shape == (0, 5) and labels.dtype == np.float32
    assert flip_lr(SCENES[0][0], EMPTY)[1].shape == (0, 5)
    assert flip_ud(SCENES[0][0], EMPTY)[1].shape == (0, 5)
    assert letterbox_labels(np.zeros((0,)), 1.0, (0, 0)).shape == (0, 5)


def test_inputs_are_not_modified():
    img, labels = SCENES[1]
    img_before, labels_before = img.copy(), labels.copy()
    rng = np.random.default_rng(0)
    for fn in (flip_lr, flip_ud):
        fn(img, labels)
    random_perspective(img, labels, rng, 10, 0.1, 0.5, 5)
    apply_train_augment(img, labels, rng, HYP)
    load_mosaic([(img, labels)] * 4, 128, rng, HYP)
    np.testing.assert_array_equal(img, img_before)
    np.testing.assert_array_equal(labels, labels_before)


def test_missing_hyperparameter_is_named():
    hyp = {k: v for k, v in HYP.items() if k != "shear"}
    with pytest.raises(EfyoloError, match="'shear'"):
        load_mosaic(SCENES, 128, np.random.default_rng(0), hyp)


def test_bad_label_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[n, 5\]"):
        flip_lr(SCENES[0][0], np.zeros((2, 4), np.float32))
