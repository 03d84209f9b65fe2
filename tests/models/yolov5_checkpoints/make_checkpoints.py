"""Regenerate the YOLOv5 v7.0 checkpoint fixtures in this folder with YOLOv5's own code.

Run (reference venv, never the project venv), from the repository root:

    nice /work/y5env/bin/python tests/models/yolov5_checkpoints/make_checkpoints.py

The reference venv has torch 2.14.1 and ``pip install --no-deps yolov5==7.0.14`` (the PyPI
packaging of YOLOv5 v7.0) plus ``ultralytics==8.4.190`` (``--no-deps``, imported by that package
and used for ``ultralytics_v8.pt``) and ``setuptools<81`` (for ``pkg_resources``).

How it works
------------
* The PyPI package rewrote every import to ``yolov5.models...``.  Official YOLOv5 checkpoints
  pickle ``models.yolo.DetectionModel``, ``models.common.Conv``, ... because the repository
  root is on ``sys.path``.  So the installed package is copied to a fixed temporary folder
  ($TMPDIR/efyolo_yolov5_fixtures/yolov5) with the ``yolov5.`` import prefix removed
  (``from yolov5.utils.general import x`` -> ``from utils.general import x``), that folder is put
  first on ``sys.path`` and YOLOv5's modules are imported as top-level ``models``, ``utils``,
  ``train``, ``detect``, ... like a clone of github.com/ultralytics/yolov5 at v7.0.
  The only other text change: the fork's train scripts save ``'yolov5pip_version'`` or nothing
  where upstream v7.0 saves ``'git': GIT_INFO`` (``GIT_INFO = check_git_info()``); the copy is
  put back to the upstream form, so the checkpoint dicts have upstream v7.0's keys.
* Runtime patches (nothing can be downloaded): the fork-only ``attempt_download_from_hub``
  (HuggingFace) returns None, ``check_requirements`` and ``check_font`` (Arial.ttf, plots only)
  are no-ops, the fork-only ``utils.roboflow`` is a stub, ``np.trapz = np.trapezoid`` on
  numpy 2.x, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` lets YOLOv5's plain ``torch.load`` work on
  torch >= 2.6, and ``datetime.now()`` in the train scripts returns 2024-01-01T00:00:00 so that
  reruns are byte-identical (all files except tiny_legacy.pt, whose legacy format stores storage
  keys taken from memory addresses).
* Width: the tiny models use yolov5n.yaml rows with ``width_multiple: 0.03125`` (channels
  8, 8, 8, 16, 32; 0.0625 made tiny_last.pt 1.3 MB), ``depth_multiple: 0.33``, ``nc: 3``.
* Detection: YOLOv5's real ``train.py`` (``train.main(opt)``) runs 3 epochs (``--weights ''
  --cfg tiny.yaml --hyp hyp.scratch-low.yaml --img 64 --batch 8 --workers 0 --noplots
  --device cpu --seed 0``; not ``--noval``: the fork crashes on it) on a generated data set
  (96 images, 64-128 px, filled circles / rectangles / triangles; names circle, square,
  triangle).  About a third of the rectangles are thin bars, so train.py's own AutoAnchor
  (``check_anchors``) finds BPR 0.93 < 0.98 and replaces the YAML anchors with k-means/genetic
  ones before training.  ``tiny_last.pt`` is the byte copy of ``weights/last.pt`` taken by an
  ``on_model_save`` callback right after train.py saved it in the final epoch (before train.py's
  closing ``strip_optimizer``); ``tiny_best.pt`` is ``weights/best.pt`` after that
  ``strip_optimizer``; ``tiny_legacy.pt`` is tiny_best.pt's dict re-saved with
  ``torch.save(..., _use_new_zipfile_serialization=False)``.  Three epochs (36 steps, all inside
  YOLOv5's 100-step warm-up) leave the model close to its objectness prior: confidences are low.
* Segmentation: YOLOv5's real ``segment/train.py`` runs 1 epoch on the same images with
  polygon labels and a tiny ``models/segment/yolov5n-seg.yaml``; ``tiny_seg.pt`` is its best.pt
  after its own ``strip_optimizer``.
* Classification: YOLOv5's real ``classify/train.py`` runs 1 epoch with ``--model tiny_best.pt``
  (it builds ``ClassificationModel(model=<detection model>, nc=3, cutoff=10)``, as upstream
  does for yolov5*-cls) on 32 px crops of the shapes; ``tiny_cls.pt`` is its best.pt passed
  through ``utils.general.strip_optimizer`` (classify/train.py itself never strips).
* ``tiny_reference.npz``: ``models.experimental.attempt_load(w, device='cpu', inplace=True,
  fuse=False/True)`` on tiny_best.pt and tiny_last.pt (ema), input ``torch.manual_seed(0);
  torch.rand(1, 3, 64, 96)``.
* ``tiny_detect.json``: a replica of detect.py's loop (DetectMultiBackend + LoadImages +
  non_max_suppression + scale_boxes + round) on images/*.jpg, asserted equal to the labels
  written by YOLOv5's own ``detect.run(save_txt=True, save_conf=True)``.
* ``ultralytics_v8.pt``: a tiny YOLOv8 built with ``ultralytics.nn.tasks.DetectionModel``
  (yolov8.yaml, scale depth 0.33 / width 0.03125), saved as a dict with the keys of ultralytics
  8.4's ``BaseTrainer.save_model`` and then passed through
  ``ultralytics.utils.torch_utils.strip_optimizer`` (the ultralytics trainer itself is not run).
"""

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import pickletools
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ['circle', 'square', 'triangle']
FIXED_DATE = _dt.datetime(2024, 1, 1, 0, 0, 0)
WIDTH = 0.03125  # width_multiple of the tiny models (channels round up to multiples of 8: 8..32)
DETECT_IMGSZ = (96, 96)
DETECT_CONF = 0.003  # a 3-epoch model stays near its objectness prior (conf ~0.006 at P5, ~0.0017 at P4):
#                      0.003 sits in that gap, giving a few to ~20 boxes per image
DETECT_IOU = 0.45
N_IMAGES = 96  # 12 batches of 8 per epoch
DET_EPOCHS = 3

# ---------------------------------------------------------------------------------------------
# Environment (before torch / yolov5 are imported)
# ---------------------------------------------------------------------------------------------
# a fixed work folder: the legacy (non-zip) format records each module class's source file path
_WORK = Path(tempfile.gettempdir()) / 'efyolo_yolov5_fixtures'
shutil.rmtree(_WORK, ignore_errors=True)
_WORK.mkdir(parents=True)
os.environ.setdefault('YOLO_CONFIG_DIR', str(_WORK / 'ultralytics_cfg'))
os.environ['YOLO_OFFLINE'] = '1'
os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'
os.environ['CUDA_VISIBLE_DEVICES'] = ''
os.environ['WANDB_MODE'] = 'disabled'
os.environ['OMP_NUM_THREADS'] = '1'


def prepare_yolov5_source(dst: Path) -> Path:
    """Copy the installed yolov5 package to dst with upstream (unprefixed) imports."""
    spec = importlib.util.find_spec('yolov5')  # does not import it
    src = Path(spec.submodule_search_locations[0])
    version = importlib.metadata.version('yolov5')
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    for f in dst.rglob('*.py'):
        t = f.read_text()
        t0 = t
        t = re.sub(r'^(\s*)from yolov5 import __version__\s*$', rf"\1__version__ = '{version}'", t, flags=re.M)
        t = re.sub(r'\bfrom yolov5\.', 'from ', t)
        t = re.sub(r'\bimport yolov5\.', 'import ', t)
        if f.relative_to(dst).as_posix() in ('train.py', 'segment/train.py', 'classify/train.py'):
            t = t.replace('#GIT_INFO = check_git_info()', 'GIT_INFO = check_git_info()')
            git = "'git': GIT_INFO,  # {remote, branch, commit} if a git repo\n                    "
            old = "'date': datetime.now().isoformat(),\n                    'yolov5pip_version': __version__}"
            old2 = "'opt': vars(opt),\n                    'date': datetime.now().isoformat()}"
            assert (old in t) != (old2 in t), f'unexpected save block in {f}'
            t = t.replace(old, git + "'date': datetime.now().isoformat()}")
            t = t.replace(old2, "'opt': vars(opt),\n                    " + git + "'date': datetime.now().isoformat()}")
        if t != t0:
            f.write_text(t)
    return dst


Y5 = prepare_yolov5_source(_WORK / 'yolov5')
sys.path.insert(0, str(Y5))
# YOLOv5's @WorkingDirectory(ROOT) decorators (check_git_info, check_git_status) chdir back to the cwd
# of *import time* when they return: import everything from inside the work folder.
_OLD_CWD = os.getcwd()
os.chdir(_WORK)


def _stub_module(name, **attrs):
    """Stand-in for a fork-only module that needs a service client (never called here)."""
    import types
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m


import utils  # noqa: E402  (YOLOv5's utils package, from the copy)

if importlib.util.find_spec('roboflow') is None:
    _stub_module('utils.roboflow', RoboflowConnector=None)  # fork-only Roboflow upload/download helper

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(1)
if not hasattr(np, 'trapz'):  # numpy 2.x renamed it; YOLOv5 v7.0's metrics.compute_ap uses np.trapz
    np.trapz = np.trapezoid

import models.common  # noqa: E402
import models.experimental  # noqa: E402
import models.yolo  # noqa: E402
import utils.general  # noqa: E402
from models.experimental import attempt_load  # noqa: E402
from models.common import DetectMultiBackend  # noqa: E402
from utils.dataloaders import LoadImages  # noqa: E402
from utils.general import non_max_suppression, scale_boxes, check_img_size, xyxy2xywh  # noqa: E402
from utils.callbacks import Callbacks  # noqa: E402


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE


def _no_hub(*args, **kwargs):
    return None


def _no_requirements(*args, **kwargs):
    return True


def _no_font(*args, **kwargs):  # check_dataset() would download Arial.ttf (only used for plots)
    return None


def _patch(mod):
    for name, value in (('attempt_download_from_hub', _no_hub), ('check_requirements', _no_requirements),
                        ('check_font', _no_font)):
        if hasattr(mod, name):
            setattr(mod, name, value)
    if getattr(mod, 'datetime', None) is _dt.datetime:  # `from datetime import datetime` in the train scripts
        mod.datetime = _FixedDatetime


import utils.downloads  # noqa: E402

_patch(utils.downloads)
_patch(models.common)
_patch(utils.general)


# ---------------------------------------------------------------------------------------------
# Tiny data set
# ---------------------------------------------------------------------------------------------
def draw_scene(rng, w, h, n_obj):
    """Returns (bgr image, list of (cls, polygon Nx2 float pixels))."""
    bg = rng.integers(40, 200, size=3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, size=(h, w, 3)), 0, 255).astype(np.uint8)
    objs = []
    for _ in range(n_obj):
        c = int(rng.integers(0, 3))
        color = tuple(int(v) for v in (255 - bg + rng.integers(-40, 41, size=3)).clip(0, 255))
        cx, cy = float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h)
        s = float(rng.uniform(0.12, 0.35) * min(w, h))
        if c == 0:  # circle
            r = s / 2
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
            cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(r)), color, -1, cv2.LINE_AA)
        elif c == 1:  # square / rectangle, a third of them thin bars (poor fit for default anchors)
            if rng.uniform() < 0.35:
                bw, bh = s * rng.uniform(1.8, 2.6), s * rng.uniform(0.12, 0.2)
                if rng.uniform() < 0.5:
                    bw, bh = bh, bw
            else:
                bw, bh = s * rng.uniform(0.8, 1.2), s * rng.uniform(0.8, 1.2)
            x1, y1 = max(cx - bw / 2, 0), max(cy - bh / 2, 0)
            x2, y2 = min(cx + bw / 2, w - 1), min(cy + bh / 2, h - 1)
            poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
            cv2.rectangle(img, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), color, -1)
        else:  # triangle
            r = s / 2
            a0 = rng.uniform(0, 2 * np.pi)
            t = a0 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], color, cv2.LINE_AA)
        poly[:, 0] = poly[:, 0].clip(0, w - 1)
        poly[:, 1] = poly[:, 1].clip(0, h - 1)
        objs.append((c, poly))
    return img, objs


def make_dataset(root: Path, n=N_IMAGES, seed=0):
    """YOLO detection + segmentation + classification data sets under root."""
    rng = np.random.default_rng(seed)
    for sub in ('det', 'seg'):
        (root / sub / 'images' / 'train').mkdir(parents=True)
        (root / sub / 'labels' / 'train').mkdir(parents=True)
    for split in ('train', 'test'):
        for name in NAMES:
            (root / 'cls' / split / name).mkdir(parents=True)
    k = 0
    for i in range(n):
        w, h = int(rng.integers(64, 129)), int(rng.integers(64, 129))
        img, objs = draw_scene(rng, w, h, int(rng.integers(1, 4)))
        for sub in ('det', 'seg'):
            cv2.imwrite(str(root / sub / 'images' / 'train' / f'{i:03d}.jpg'), img)
        det_lines, seg_lines = [], []
        for c, poly in objs:
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            det_lines.append(f'{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}')
            seg_lines.append(f'{c} ' + ' '.join(f'{x / w:.6f} {y / h:.6f}' for x, y in poly))
            # classification crop (padded)
            pad = 4
            crop = img[max(int(y1) - pad, 0):int(y2) + pad + 1, max(int(x1) - pad, 0):int(x2) + pad + 1]
            split = 'test' if k % 4 == 3 else 'train'
            cv2.imwrite(str(root / 'cls' / split / NAMES[c] / f'{k:03d}.jpg'), crop)
            k += 1
        (root / 'det' / 'labels' / 'train' / f'{i:03d}.txt').write_text('\n'.join(det_lines) + '\n')
        (root / 'seg' / 'labels' / 'train' / f'{i:03d}.txt').write_text('\n'.join(seg_lines) + '\n')
    for sub in ('det', 'seg'):
        d = {'path': str(root / sub), 'train': 'images/train', 'val': 'images/train', 'nc': 3, 'names': NAMES}
        (root / f'{sub}.yaml').write_text(yaml.safe_dump(d, sort_keys=False))
    # every class must be present in both splits for the classifier
    for split in ('train', 'test'):
        for name in NAMES:
            assert any((root / 'cls' / split / name).iterdir()), (split, name)


def tiny_cfg(src: Path, dst: Path, nc=3):
    t = src.read_text()
    t = re.sub(r'^nc: *\d+', f'nc: {nc}', t, flags=re.M)
    t = re.sub(r'^width_multiple: *[0-9.]+', f'width_multiple: {WIDTH}', t, flags=re.M)
    assert f'width_multiple: {WIDTH}' in t and f'nc: {nc}' in t
    dst.write_text(t)
    return dst


# ---------------------------------------------------------------------------------------------
# Training runs (YOLOv5's own train scripts)
# ---------------------------------------------------------------------------------------------
def _run_train(module_name, keep_dir: Path, **kwargs):
    """Run <module>.main(opt) with opt from its parse_opt(True) + kwargs; keep every last.pt it saves."""
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = [argv[0]]
    try:
        mod = importlib.import_module(module_name)
        _patch(mod)
        opt = mod.parse_opt(True)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    for k, v in kwargs.items():
        setattr(opt, k, v)
    cb = Callbacks()
    saved = []

    def on_model_save(last, epoch, final_epoch, best_fitness, fi):
        f = keep_dir / f'last_epoch{epoch}.pt'
        shutil.copyfile(last, f)
        saved.append(f)

    if 'on_model_save' in cb._callbacks:
        cb.register_action('on_model_save', name='keep_last', callback=on_model_save)
    import inspect
    if 'callbacks' in inspect.signature(mod.main).parameters:
        mod.main(opt, callbacks=cb)
    else:  # classify/train.py
        mod.main(opt)
    return opt, saved


def train_detection(work: Path):
    cfg = tiny_cfg(Y5 / 'models' / 'yolov5n.yaml', work / 'tiny.yaml')
    shutil.copyfile(Y5 / 'data' / 'hyps' / 'hyp.scratch-low.yaml', work / 'hyp.scratch-low.yaml')
    keep = work / 'keep_det'
    keep.mkdir()
    opt, saved = _run_train('train', keep, weights='', cfg=cfg.name, data='det.yaml', hyp='hyp.scratch-low.yaml',
                            epochs=DET_EPOCHS, batch_size=8, imgsz=64, workers=0, noplots=True, noval=False, device='cpu',
                            project='runs/train', name='exp', exist_ok=True, seed=0, patience=100)
    w = Path(opt.save_dir) / 'weights'
    assert saved, 'on_model_save never ran'
    return saved[-1], w / 'best.pt'


def train_segmentation(work: Path):
    cfg = tiny_cfg(Y5 / 'models' / 'segment' / 'yolov5n-seg.yaml', work / 'tiny-seg.yaml')
    keep = work / 'keep_seg'
    keep.mkdir()
    opt, _ = _run_train('segment.train', keep, weights='', cfg=cfg.name, data='seg.yaml', hyp='hyp.scratch-low.yaml',
                        epochs=1, batch_size=8, imgsz=64, workers=0, noplots=True, noval=True, device='cpu',
                        project='runs/train-seg', name='exp', exist_ok=True, seed=0, patience=100)
    return Path(opt.save_dir) / 'weights' / 'best.pt'


def train_classification(work: Path, det_weights: Path):
    # classify/train.py loads --model inside WorkingDirectory(ROOT): put it there, keep opt.model short
    shutil.copyfile(det_weights, Y5 / 'tiny_det_for_cls.pt')
    keep = work / 'keep_cls'
    keep.mkdir()
    opt, _ = _run_train('classify.train', keep, model='tiny_det_for_cls.pt', data='cls', epochs=1,
                        batch_size=8, imgsz=32, workers=0, device='cpu', project='runs/train-cls', name='exp',
                        exist_ok=True, seed=0)
    best = Path(opt.save_dir) / 'weights' / 'best.pt'
    # classify/train.py v7.0 saves model=EMA, ema/optimizer None but does not strip: finish it like the released
    # *-cls.pt files with YOLOv5's own strip_optimizer (epoch -1, best_fitness/updates None, half)
    utils.general.strip_optimizer(best)
    return best


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def reference_arrays(weights, x, prefix=''):
    """Outputs of YOLOv5's own model loaded with attempt_load (unfused and fused)."""
    out = {}
    for fuse in (False, True):
        p = prefix + ('fused_' if fuse else '')
        model = attempt_load(str(weights), device='cpu', inplace=True, fuse=fuse)
        det = model.model[-1]
        with torch.no_grad():
            y = model(x)
            out[p + 'decoded'] = y[0].numpy()
            # raw head outputs: Detect in training mode, rest of the model in eval mode (BN running stats)
            m2 = __import__('copy').deepcopy(model)
            m2.model[-1].training = True
            for i, r in enumerate(m2(x)):
                out[f'{p}raw{i}'] = r.numpy()
            if not fuse:  # whole model in training mode (BatchNorm uses the batch statistics of x)
                m3 = __import__('copy').deepcopy(model).train()
                for i, r in enumerate(m3(x)):
                    out[f'{p}train_raw{i}'] = r.numpy()
        if not fuse:
            out[prefix + 'anchors'] = det.anchors.numpy()
            out[prefix + 'stride'] = det.stride.numpy()
            out[prefix + 'anchors_pixels'] = (det.anchors * det.stride.view(-1, 1, 1)).numpy()
    return out


def detect_reference(weights: Path, images: Path, work: Path):
    """Replica of detect.py's loop for a .pt, cross-checked against YOLOv5's own detect.run txt output."""
    device = torch.device('cpu')
    model = DetectMultiBackend(str(weights), device=device, dnn=False, data=None, fp16=False)
    stride, names, pt = model.stride, model.names, model.pt
    imgsz = check_img_size(list(DETECT_IMGSZ), s=stride)
    dataset = LoadImages(str(images), img_size=imgsz, stride=stride, auto=pt, vid_stride=1)
    res = {'weights': weights.name, 'source': 'images', 'imgsz': list(imgsz), 'conf_thres': DETECT_CONF,
           'iou_thres': DETECT_IOU, 'max_det': 1000, 'agnostic_nms': False, 'fuse': True,
           'box_format': '[x1, y1, x2, y2, conf, cls] in original image pixels (rounded like detect.py)',
           'names': names, 'images': {}}
    for path, im, im0s, _, _ in dataset:
        imt = torch.from_numpy(im).to(device).float() / 255
        if imt.ndim == 3:
            imt = imt[None]
        with torch.no_grad():
            pred = model(imt, augment=False, visualize=False)
        y = pred[0][0]
        scores = torch.cat([y[:, 4], (y[:, 4:5] * y[:, 5:]).flatten()])  # NMS thresholds obj, then obj*cls
        margin = float((scores - DETECT_CONF).abs().min())
        pred = non_max_suppression(pred, DETECT_CONF, DETECT_IOU, None, False, max_det=1000)
        det = pred[0]
        det[:, :4] = scale_boxes(imt.shape[2:], det[:, :4], im0s.shape).round()
        res['images'][Path(path).name] = {
            'orig_shape_hw': list(im0s.shape[:2]),
            'letterbox_shape_hw': list(imt.shape[2:]),
            'detections': [[float(v) for v in row] for row in det.tolist()],
            'min_abs_score_margin_to_conf_thres': margin,  # smallest |obj or obj*cls - conf_thres| before NMS
        }
        assert 3 <= len(det) <= 60, (path, len(det))
    # cross-check with YOLOv5's own detect.py
    import detect
    _patch(detect)
    detect.run(weights=str(weights), source=str(images), imgsz=DETECT_IMGSZ, conf_thres=DETECT_CONF,
               iou_thres=DETECT_IOU, max_det=1000, device='cpu', save_txt=True, save_conf=True, nosave=True,
               project=str(work / 'runs' / 'detect'), name='exp', exist_ok=True)
    for name, r in res['images'].items():
        txt = work / 'runs' / 'detect' / 'exp' / 'labels' / (Path(name).stem + '.txt')
        lines = txt.read_text().split('\n') if txt.exists() else []
        got = np.array([[float(v) for v in ln.split()] for ln in lines if ln.strip()]).reshape(-1, 6)
        d = torch.tensor(r['detections']).reshape(-1, 6)
        h, w = r['orig_shape_hw']
        gn = torch.tensor([w, h, w, h], dtype=torch.float32)
        mine = torch.cat([d[:, 5:6], xyxy2xywh(d[:, :4]) / gn, d[:, 4:5]], 1).flip(0).numpy()  # detect.py reverses
        assert got.shape == mine.shape, (name, got.shape, mine.shape)
        assert np.allclose(got, mine, rtol=1e-4, atol=1e-5), name
    return res


def make_test_images(dst: Path):
    dst.mkdir(exist_ok=True)
    rng = np.random.default_rng(123)
    for name, (w, h) in (('shapes_120x90.jpg', (120, 90)), ('shapes_80x128.jpg', (80, 128)),
                         ('shapes_100x64.jpg', (100, 64))):
        img, _ = draw_scene(rng, w, h, 3)
        cv2.imwrite(str(dst / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


# ---------------------------------------------------------------------------------------------
# Ultralytics YOLOv8
# ---------------------------------------------------------------------------------------------
def make_ultralytics_v8(dst: Path):
    """Tiny YOLOv8 (ultralytics' own DetectionModel) saved like BaseTrainer.save_model, then strip_optimizer."""
    import copy
    import ultralytics
    import ultralytics.utils.torch_utils as v8tu
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel as V8DetectionModel

    cfg = yaml.safe_load((Path(ultralytics.__file__).parent / 'cfg' / 'models' / 'v8' / 'yolov8.yaml').read_text())
    cfg['scales'] = {'t': [0.33, WIDTH, 1024]}  # yolov8n depth, 1/8 of its width
    cfg['scale'] = 't'
    cfg['nc'] = 3
    cfg['yaml_file'] = 'yolov8t.yaml'
    torch.manual_seed(0)
    model = V8DetectionModel(cfg, ch=3, nc=3, verbose=False)
    model.names = dict(enumerate(NAMES))
    args = get_cfg(overrides={'model': 'yolov8t.yaml', 'data': 'data.yaml', 'epochs': 1, 'imgsz': 64, 'batch': 8})
    model.args = args  # BaseTrainer attaches its args (IterableSimpleNamespace) to the model
    ema = v8tu.ModelEMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001)
    scaler = torch.amp.GradScaler('cuda', enabled=False)
    ckpt = {  # the keys of ultralytics.engine.trainer.BaseTrainer.save_model (8.4.x)
        'epoch': 0,
        'best_fitness': 0.0,
        'stopper': {'best_fitness': 0.0, 'best_epoch': 0},
        'model': None,  # resume and final checkpoints derive from EMA
        'ema': copy.deepcopy(ema.ema).half(),
        'updates': ema.updates,
        'modelopt': None,
        'optimizer': v8tu.convert_optimizer_state_dict_to_fp16(copy.deepcopy(optimizer.state_dict())),
        'scaler': scaler.state_dict(),
        'train_args': vars(args),
        'train_metrics': {'fitness': 0.0},
        'train_results': {},
        'date': FIXED_DATE.isoformat(),
        'version': ultralytics.__version__,
        'git': {'root': None, 'branch': None, 'commit': None, 'message': None, 'origin': None},
        'license': 'AGPL-3.0 (https://ultralytics.com/license)',
        'docs': 'https://docs.ultralytics.com',
    }
    torch.save(ckpt, dst)
    v8tu.datetime = _FixedDatetime
    with contextlib.redirect_stdout(io.StringIO()):
        v8tu.strip_optimizer(str(dst))
    return dst


# ---------------------------------------------------------------------------------------------
# Reporting helpers
# ---------------------------------------------------------------------------------------------
def pickle_globals(path: Path):
    """GLOBAL / STACK_GLOBAL names referenced by a torch checkpoint (zip or legacy)."""
    data = path.read_bytes()
    names = set()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            blobs = [z.read(n) for n in z.namelist() if n.endswith('data.pkl')]
    else:  # legacy: magic, protocol, sys_info, then the main pickle, then storage keys
        f = io.BytesIO(data)
        import pickle
        for _ in range(3):
            pickle.load(f)
        blobs = [data[f.tell():]]
    for blob in blobs:
        strings = []
        for op, arg, _ in pickletools.genops(blob):
            if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE', 'SHORT_BINSTRING', 'BINSTRING'):
                strings.append(arg)
            elif op.name == 'STACK_GLOBAL':
                names.add(f'{strings[-2]}.{strings[-1]}')
            elif op.name == 'GLOBAL':
                names.add(arg.replace(' ', '.'))
            if op.name == 'STOP':
                break
    return sorted(names)


def main():
    out = HERE
    work = _WORK
    old_cwd = _OLD_CWD
    os.chdir(work)
    try:
        make_dataset(work)
        last_pt, best_pt = train_detection(work)
        shutil.copyfile(last_pt, out / 'tiny_last.pt')
        shutil.copyfile(best_pt, out / 'tiny_best.pt')
        x = torch.load(out / 'tiny_best.pt', map_location='cpu')
        torch.save(x, out / 'tiny_legacy.pt', _use_new_zipfile_serialization=False)

        seg_pt = train_segmentation(work)
        shutil.copyfile(seg_pt, out / 'tiny_seg.pt')
        cls_pt = train_classification(work, out / 'tiny_best.pt')
        shutil.copyfile(cls_pt, out / 'tiny_cls.pt')

        # reference outputs
        torch.manual_seed(0)
        xin = torch.rand(1, 3, 64, 96)
        ref = {'x': xin.numpy()}
        ref.update(reference_arrays(out / 'tiny_best.pt', xin))
        ref.update(reference_arrays(out / 'tiny_last.pt', xin, prefix='last_'))
        yaml_anchors = yaml.safe_load((work / 'tiny.yaml').read_text())['anchors']
        ref['yaml_anchors_pixels'] = np.array(yaml_anchors, np.float32).reshape(3, 3, 2)
        np.savez_compressed(out / 'tiny_reference.npz', **ref)

        make_test_images(out / 'images')
        det = detect_reference(out / 'tiny_best.pt', out / 'images', work)
        det['source'] = 'tests/models/yolov5_checkpoints/images'
        text = json.dumps(det, indent=1)
        text = re.sub(r'\[\s+([-0-9.e,\s]+?)\s+\]', lambda m: '[' + re.sub(r'\s+', ' ', m.group(1)) + ']', text)
        (out / 'tiny_detect.json').write_text(text + '\n')
        assert json.loads(text) == json.loads(json.dumps(det))

        try:
            make_ultralytics_v8(out / 'ultralytics_v8.pt')
        except Exception as e:  # optional fixture
            print(f'ultralytics_v8.pt skipped: {e!r}')

        # summary
        summary = {}
        for f in sorted(out.glob('*.pt')):
            summary[f.name] = {'bytes': f.stat().st_size, 'zip': zipfile.is_zipfile(f), 'globals': pickle_globals(f)}
        summary['anchors_pixels(tiny_best)'] = ref['anchors_pixels'].round(3).tolist()
        summary['yaml_anchors_pixels'] = ref['yaml_anchors_pixels'].tolist()
        summary['detections_per_image'] = {k: len(v['detections']) for k, v in det['images'].items()}
        print(json.dumps(summary, indent=1))
        (work / 'summary.json').write_text(json.dumps(summary, indent=1))
    finally:
        os.chdir(old_cwd)
        if not os.environ.get('Y5_KEEP_WORK'):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
