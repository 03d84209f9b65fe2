"""Training throughput (images/s) of the real training loop on the built-in synthetic dataset.

Runs the Trainer's own epoch loop (data loading with workers, mosaic augmentation, loss, backward,
optimizer step, EMA) for a fixed number of iterations after one warm-up pass, per model.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train.py --models yolov5n,yolov5s,yolov5s-efficientformer-l1 \
        --imgsz 320 --batch 16 --iters 10

(`efyolo train` sets OMP_WAIT_POLICY=PASSIVE itself; a plain `python` needs it in the environment.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time

import torch

from efyolo.data.synth import default_dataset
from efyolo.training.config import TrainConfig
from efyolo.engine.trainer import Trainer


class _FirstBatches:
    """The first ``n`` batches of a DataLoader, keeping the attributes the trainer touches."""

    def __init__(self, loader, n: int) -> None:
        self.loader, self.n = loader, n
        self.dataset, self.generator, self.sampler = loader.dataset, loader.generator, loader.sampler

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __len__(self) -> int:
        return self.n


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def images_per_second(model: str, imgsz: int, batch: int, iters: int, workers: int, device: str = "cpu") -> float:
    data = default_dataset()
    with tempfile.TemporaryDirectory() as project:
        cfg = TrainConfig(data=str(data), model=model, imgsz=imgsz, epochs=1, batch=batch, workers=workers,
                          project=project, cache=True, val=False, device=device, close_mosaic=0)
        trainer = Trainer(cfg)
        trainer.setup()
        trainer.train_loader = _FirstBatches(trainer.train_loader, iters)
        trainer.nb = iters
        trainer.train_epoch(0)  # warm-up: worker start, allocator, oneDNN primitives
        sync()
        t0 = time.perf_counter()
        trainer.train_epoch(0)
        sync()
        return iters * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov5n,yolov5s,yolov5s-efficientformer-l1")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or a CUDA index (AMP on CUDA, as in training)")
    args = parser.parse_args()
    rows = []
    for model in args.models.split(","):
        ips = images_per_second(model, args.imgsz, args.batch, args.iters, args.workers, args.device)
        rows.append({"model": model, "imgsz": args.imgsz, "batch": args.batch, "images_per_s": round(ips, 1),
                     "threads": torch.get_num_threads(), "device": args.device, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")})
        print(f"{model:<32} {ips:6.1f} images/s (imgsz {args.imgsz}, batch {args.batch})", flush=True)
    if args.device == "cpu":
        from efyolo.engine.benchmark import matmul_gflops

        print(f"machine speed: {matmul_gflops():.0f} GFLOP/s (torch float32 2048x2048 matmul, "
              f"{torch.get_num_threads()} threads; the reference measurements' day: 158)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
