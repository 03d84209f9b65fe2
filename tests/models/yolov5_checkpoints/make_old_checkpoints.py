"""Make tiny checkpoints with the code of older YOLOv5 releases (v4.0, v5.0, v6.0, v6.1), as fixtures.

Run (a reference venv with torch, numpy, opencv-python-headless, pyyaml, tqdm, matplotlib, pandas,
seaborn, scipy, requests; never the project venv), from the repository root:

    pip download --no-deps -d /tmp/y5dl yolov5==4.0.14 yolov5==5.0.10 yolov5==6.0.7 yolov5==6.1.9
    nice /work/y5old/bin/python tests/models/yolov5_checkpoints/make_old_checkpoints.py /tmp/y5dl

    # a wider check, not fixtures: every config a release ships (v7.0 needs `ultralytics --no-deps`)
    nice /work/y5old/bin/python tests/models/yolov5_checkpoints/make_old_checkpoints.py /tmp/y5dl \
        --all-configs 7.0.14 --out /tmp/y5all --shape 256 256
    python benchmarks/check_yolov5_releases.py /tmp/y5all

What it does, per release (each in its own process: every release is imported as the top-level
``models`` / ``utils`` packages, like a clone of github.com/ultralytics/yolov5 at that tag):

* unpacks the PyPI wheel (the ``yolov5`` package packages the upstream tag) to a temporary folder
  with the ``yolov5.`` import prefix removed (and v6.0's font download at import disabled), so the pickles name ``models.yolo.Model``,
  ``models.common.Focus``, ... as checkpoints from a clone do;
* builds ``models.yolo.Model`` from that release's own YAML (made tiny: ``width_multiple`` 0.03125,
  ``depth_multiple`` 0.33, ``nc`` 3; written to a file of the same name and passed as a path, as
  ``train.py --cfg`` does), gives every BatchNorm seeded running statistics and affine
  weights (so a wrong activation or a skipped layer shows), and moves the anchors the way that
  release's AutoAnchor (``utils.autoanchor.check_anchors`` / ``utils.general.check_anchors``) writes
  new ones: ``anchors`` in grid units and, before v6.0, the ``anchor_grid`` buffer in pixels;
* saves the dict that release's ``train.py`` saves (``model`` and ``ema`` as half-precision copies,
  the optimizer's state dict, ``epoch``...) and runs that release's own ``strip_optimizer`` on it:
  the released form (``model`` = the EMA in float16, ``optimizer``/``ema`` None, ``epoch`` -1);
* records the release's model outputs in eval mode (``attempt_load``-style: the stripped file's
  model in float32, ``fuse`` off) on ``torch.manual_seed(0); torch.rand(1, 3, 128, 192)`` in
  ``old_reference.npz`` under ``<file stem>/decoded``.

The v5.0 ``yolov5-panet`` config uses ``BottleneckCSP``, whose inner activation before v6.2 is
``LeakyReLU(0.1)`` (v6.2 changed it to SiLU): the fixture that checks efyolo follows the file's
activations rather than its own.
"""

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDTH = 0.03125
# (release, YAML inside the package, fixture name)
FIXTURES = [
    ("4.0.14", "models/yolov5s.yaml", "tiny_v4.0_yolov5s"),
    ("5.0.10", "models/hub/yolov5s6.yaml", "tiny_v5.0_yolov5s6"),
    ("5.0.10", "models/hub/yolov5-panet.yaml", "tiny_v5.0_panet"),
    ("6.0.7", "models/yolov5n.yaml", "tiny_v6.0_yolov5n"),
    ("6.1.9", "models/yolov5s.yaml", "tiny_v6.1_yolov5s"),
]

WORKER = r'''
import copy, json, os, sys, warnings
import numpy as np
import torch, yaml
warnings.filterwarnings("ignore")
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
src, cfg_rel, out, width = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
height, breadth = int(sys.argv[5]), int(sys.argv[6])
sys.path.insert(0, src)
os.chdir(src)
torch.set_num_threads(1)
import models.yolo
from utils.general import strip_optimizer

cfg = yaml.safe_load(open(cfg_rel))
cfg.update(nc=3, depth_multiple=0.33, width_multiple=width)
# a YAML file of the same name, as train.py --cfg passes it (Model then records yaml_file)
tiny_yaml = os.path.join(os.path.dirname(out), os.path.basename(cfg_rel))
with open(tiny_yaml, "w") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
torch.manual_seed(1)
model = models.yolo.Model(tiny_yaml, ch=3, nc=3)
os.remove(tiny_yaml)
g = torch.Generator().manual_seed(2)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
# AutoAnchor's write-back: new anchors (pixels) -> anchors (grid units) and, before v6.0, anchor_grid (pixels)
detect = model.model[-1]
new = detect.anchors.clone() * detect.stride.view(-1, 1, 1) * torch.tensor([1.13, 0.91])
if isinstance(getattr(detect, "anchor_grid", None), torch.Tensor):
    detect.anchor_grid[:] = new.clone().view_as(detect.anchor_grid)
detect.anchors[:] = new.clone().view_as(detect.anchors) / detect.stride.view(-1, 1, 1)
model.names = ["circle", "square", "triangle"]
ema = copy.deepcopy(model)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
ckpt = {"epoch": 2, "best_fitness": 0.1, "training_results": "", "model": copy.deepcopy(model).half(),
        "ema": copy.deepcopy(ema).half(), "updates": 10, "optimizer": opt.state_dict(), "wandb_id": None}
torch.save(ckpt, out)
strip_optimizer(out)
# the release's own outputs from the stripped file, as its attempt_load (fuse=False) would run it
m = torch.load(out, map_location="cpu")["model"].float().eval()
torch.manual_seed(0)
x = torch.rand(1, 3, height, breadth)
with torch.no_grad():
    decoded = m(x)[0]
np.save(out + ".decoded.npy", decoded.numpy())
print(json.dumps({"out": out, "params": sum(p.numel() for p in m.parameters()), "shape": list(decoded.shape)}))
'''


def prepare(wheel: Path, dst: Path) -> Path:
    """Unpack a yolov5 wheel to dst/yolov5 with upstream (unprefixed) imports."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dst)
    root = dst / "yolov5"
    version = wheel.name.split("-")[1]
    for f in root.rglob("*.py"):
        t = f.read_text()
        t2 = re.sub(r"^(\s*)from yolov5 import __version__\s*$", rf"\1__version__ = '{version}'", t, flags=re.M)
        t2 = re.sub(r"\bfrom yolov5\.", "from ", t2)
        t2 = re.sub(r"\bimport yolov5\.", "import ", t2)
        # v6.0's utils/plots.py downloads Arial.ttf when imported (for plot labels; nothing here plots)
        t2 = t2.replace("        check_font()  # download TTF if necessary", "        pass  # efyolo fixtures: no font download")
        if t2 != t:
            f.write_text(t2)
    return root


def all_configs(wheels: Path, release: str) -> list[tuple[str, str, str]]:
    """Every detection YAML a release ships (models/*.yaml, models/hub/*.yaml), for a wider check."""
    wheel = next(wheels.glob(f"yolov5-{release}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n.removeprefix("yolov5/") for n in z.namelist()
                       if re.fullmatch(r"yolov5/models/(hub/)?[^/]+\.yaml", n) and not n.endswith("anchors.yaml"))
    return [(release, n, f"v{release}_{Path(n).stem}") for n in names]


def main(wheels: Path, fixtures: list[tuple[str, str, str]], out_dir: Path, shape: tuple[int, int]) -> None:
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="efyolo_old_yolov5_"))
    arrays, info = {}, {}
    for release, cfg_rel, name in fixtures:
        wheel = next(wheels.glob(f"yolov5-{release}-*.whl"))
        src = work / release
        root = src / "yolov5" if src.exists() else prepare(wheel, src)
        out = out_dir / f"{name}.pt"
        proc = subprocess.run([sys.executable, "-c", WORKER, str(root), cfg_rel, str(out), str(WIDTH), *map(str, shape)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            print(f"{release} {cfg_rel}: YOLOv5 itself failed: {proc.stderr.strip().splitlines()[-1][:300]}")
            continue
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        arrays[f"{name}/decoded"] = np.load(f"{out}.decoded.npy")
        os.remove(f"{out}.decoded.npy")
        info[name] = {"release": release, "config": cfg_rel, "parameters": line["params"],
                      "input": [1, 3, *shape], "bytes": out.stat().st_size}
        print(name, info[name])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (out_dir / "old_reference.npz").write_bytes(buf.getvalue())
    (out_dir / "old_fixtures.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheels", type=Path, nargs="?", default=Path("/tmp/y5dl"), help="folder of yolov5-*.whl")
    ap.add_argument("--all-configs", metavar="RELEASE",
                    help="instead of the fixtures: every config of this release (e.g. 7.0.14), to --out")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--shape", type=int, nargs=2, default=(128, 192), metavar=("H", "W"))
    args = ap.parse_args()
    chosen = all_configs(args.wheels, args.all_configs) if args.all_configs else FIXTURES
    main(args.wheels, chosen, args.out, tuple(args.shape))
