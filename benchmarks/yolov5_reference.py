"""Reference YOLOv5 v7.0 checkpoints + outputs for full-size configs, made with YOLOv5's own code.

Run with the reference venv (torch + ``pip install --no-deps yolov5==7.0.14``, see
tests/models/yolov5_checkpoints/make_checkpoints.py), never the project venv:

    nice /work/y5env/bin/python benchmarks/yolov5_reference.py --out /tmp/y5ref \
        --cfg yolov5n yolov5s yolov5n6 yolov5s-ghost yolov5s-transformer --nc 80

For each ``--cfg NAME`` (YAML: tests/models/yolov5_v7_configs/NAME.yaml, YOLOv5 v7.0's verbatim) it
writes to ``--out``:

* ``NAME_last.pt``: a training checkpoint with the keys and values train.py v7.0 saves
  (epoch, best_fitness = ``utils.metrics.fitness`` array, model = deepcopy(de_parallel(model)).half(),
  ema = deepcopy(ema.ema).half(), updates, optimizer = state_dict of ``smart_optimizer``, opt =
  vars(train.parse_opt), git, date).  The model is ``models.yolo.DetectionModel(cfg, ch=3, nc)``
  after ``init_seeds(1)`` (train.py's seed + 1), ``model.half().float()`` as train.py does after
  AutoAnchor, then one SGD step with YOLOv5's ``ComputeLoss`` on a fixed random batch (so the
  optimizer has momentum buffers and ``ModelEMA`` one update).  train.py itself is not run.
* ``NAME.pt``: ``NAME_last.pt`` after YOLOv5's own ``utils.general.strip_optimizer`` (the
  released form: EMA as model, half, epoch -1, optimizer/ema/updates/best_fitness None).
* ``NAME_reference.npz``: like tests/models/yolov5_checkpoints/tiny_reference.npz, from
  ``models.experimental.attempt_load(w, device='cpu', inplace=True, fuse=False/True)`` of ``NAME.pt``
  (and ``last_*`` of ``NAME_last.pt``), input ``torch.manual_seed(0); torch.rand(1, 3, 128, 160)``
  (``(1, 3, 128, 192)`` for yolov5n6: P6 models need multiples of 64):
  ``x``, ``decoded`` = model(x)[0] [1, N, 5+nc], ``raw{i}`` [1, na, H, W, 5+nc] (Detect in training
  mode, rest eval), ``train_raw{i}`` (whole model .train(), BatchNorm batch statistics, unfused
  only), ``anchors`` (grid units [nl, na, 2]), ``anchors_pixels``, ``stride``, the same with the
  ``fused_`` prefix (no ``fused_train_raw``), and the same for the last checkpoint with ``last_``.
"""

import argparse
import copy
import importlib.util
import math
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'tests' / 'models' / 'yolov5_v7_configs'
CHOICES = ('yolov5n', 'yolov5s', 'yolov5n6', 'yolov5s-ghost', 'yolov5s-transformer')


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cfg', nargs='+', default=list(CHOICES), choices=CHOICES)
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--nc', type=int, default=80)
    return ap.parse_args()


def load_helper():
    """make_checkpoints.py sets up YOLOv5's unprefixed sources, offline patches and reference helpers."""
    path = REPO / 'tests' / 'models' / 'yolov5_checkpoints' / 'make_checkpoints.py'
    spec = importlib.util.spec_from_file_location('yolov5_fixture_helper', path)
    mc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mc)  # imports YOLOv5 as top-level models/utils; chdirs to its work folder
    return mc


def make_one(mc, name, nc, out: Path):
    import numpy as np
    import torch
    import yaml
    from models.yolo import Model
    from utils.general import init_seeds, strip_optimizer
    from utils.loss import ComputeLoss
    from utils.metrics import fitness
    from utils.torch_utils import ModelEMA, de_parallel, smart_optimizer

    argv = sys.argv
    sys.argv = [argv[0]]
    try:
        import train
        mc._patch(train)
        opt = train.parse_opt(True)
    finally:
        sys.argv = argv
    cfg = CONFIGS / f'{name}.yaml'
    hyp = yaml.safe_load((mc.Y5 / 'data' / 'hyps' / 'hyp.scratch-low.yaml').read_text())
    opt.weights, opt.cfg, opt.data, opt.hyp = '', cfg.name, 'coco.yaml', hyp.copy()
    opt.epochs, opt.batch_size, opt.imgsz, opt.device = 1, 2, 160, 'cpu'
    opt.save_dir = f'runs/train/{name}'

    init_seeds(opt.seed + 1, deterministic=True)  # train.py: init_seeds(opt.seed + 1 + RANK)
    model = Model(str(cfg), ch=3, nc=nc, anchors=hyp.get('anchors'))
    model.yaml_file = cfg.name
    model.half().float()  # train.py: pre-reduce anchor precision
    nbs, batch = 64, opt.batch_size
    accumulate = max(round(nbs / batch), 1)
    hyp['weight_decay'] *= batch * accumulate / nbs
    optimizer = smart_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], hyp['weight_decay'])
    ema = ModelEMA(model)
    nl = model.model[-1].nl
    hyp['box'] *= 3 / nl
    hyp['cls'] *= nc / 80 * 3 / nl
    hyp['obj'] *= (opt.imgsz / 640) ** 2 * 3 / nl
    hyp['label_smoothing'] = opt.label_smoothing
    model.nc, model.hyp = nc, hyp
    model.class_weights = torch.ones(nc)  # train.py: labels_to_class_weights(labels, nc) * nc
    model.names = {i: f'class{i}' for i in range(nc)}

    # one optimizer step on a fixed random batch
    g = torch.Generator().manual_seed(0)
    gs = int(model.stride.max())
    h, w = (math.ceil(v / gs) * gs for v in (128, 160))  # 128x160, or 128x192 for the P6 (stride 64) models
    imgs = torch.rand(batch, 3, h, w, generator=g)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, min(1, nc - 1), 0.3, 0.6, 0.2, 0.2]])
    model.train()
    loss, _ = ComputeLoss(model)(model(imgs), targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    optimizer.step()
    optimizer.zero_grad()
    ema.update(model)
    ema.update_attr(model, include=['yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights'])

    ckpt = {  # train.py v7.0 save block
        'epoch': 0,
        'best_fitness': fitness(np.zeros((1, 7))),
        'model': copy.deepcopy(de_parallel(model)).half(),
        'ema': copy.deepcopy(ema.ema).half(),
        'updates': ema.updates,
        'optimizer': optimizer.state_dict(),
        'opt': vars(opt),
        'git': train.GIT_INFO,
        'date': mc.FIXED_DATE.isoformat()}
    last, released = out / f'{name}_last.pt', out / f'{name}.pt'
    torch.save(ckpt, last)
    strip_optimizer(last, str(released))

    torch.manual_seed(0)
    x = torch.rand(1, 3, h, w)
    ref = {'x': x.numpy()}
    ref.update(mc.reference_arrays(released, x))
    ref.update(mc.reference_arrays(last, x, prefix='last_'))
    np.savez_compressed(out / f'{name}_reference.npz', **ref)
    print(f'{name}: {released.stat().st_size / 1e6:.1f} MB released, {last.stat().st_size / 1e6:.1f} MB last, '
          f'decoded {ref["decoded"].shape}, globals: {", ".join(mc.pickle_globals(released))}')


def main():
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mc = load_helper()
    try:
        for name in args.cfg:
            make_one(mc, name, args.nc, out)
    finally:
        os.chdir(mc._OLD_CWD)
        if not os.environ.get('Y5_KEEP_WORK'):
            shutil.rmtree(mc._WORK, ignore_errors=True)


if __name__ == '__main__':
    main()
