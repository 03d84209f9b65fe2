"""The torch ``Dataset`` for training and validation, and its seeded ``DataLoader``.

Training samples follow YOLOv5's pipeline (:func:`efyolo.data.augment.train_sample`: mosaic,
mixup, random perspective, HSV, flips). Validation uses rectangular batches: images sorted by
aspect ratio, each batch letterboxed to the smallest stride-multiple shape that holds it.

Randomness is drawn from ``np.random.default_rng([seed, epoch, index])``, so a sample depends on
the seed, the epoch and its index only, never on the worker that produced it: runs are
reproducible and a resumed run sees the same data as an uninterrupted one.

A sample is ``(image, labels, path, shapes)``:
  * ``image``: ``uint8 Tensor[3, H, W]`` RGB.
  * ``labels``: ``float32 Tensor[n, 6]`` ``(0, class, xc, yc, w, h)`` normalised to ``H x W``; the
    collate function writes the batch index into column 0.
  * ``shapes``: ``((h0, w0), (gain, (pad_w, pad_h)))`` to map boxes back to the original image.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from efyolo.data.augment import letterbox, letterbox_labels, resize_long_side, train_sample
from efyolo.data.split import SplitIndex
from efyolo.ops.boxes import xywhn2xyxy, xyxy2xywhn
from efyolo.utils.log import LOGGER



def rect_batch_shapes(shapes_hw: np.ndarray, batch_size: int, imgsz: int, stride: int, pad: float = 0.5):
    """YOLOv5's rectangular batches.

    Args:
        shapes_hw: ``[N, 2]`` original ``(h, w)``.

    Returns:
        ``(order, batch_shapes)``: the image order (sorted by aspect ratio h/w) and, per image in
        that order, the ``(h, w)`` network input of its batch (multiples of ``stride``).
    """
    ar = shapes_hw[:, 0] / shapes_hw[:, 1]
    order = np.argsort(ar, kind="stable")
    ar = ar[order]
    n = len(order)
    batch_index = np.arange(n) // batch_size
    shapes = np.ones((batch_index[-1] + 1 if n else 0, 2))
    for b in range(len(shapes)):
        ari = ar[batch_index == b]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            shapes[b] = [hi, 1]
        elif lo > 1:
            shapes[b] = [1, 1 / lo]
    batch_shapes = np.ceil(shapes * imgsz / stride + pad).astype(int) * stride
    return order, batch_shapes[batch_index]


class DetectionDataset(Dataset):
    """Images and labels of a scanned split, augmented for training or letterboxed for validation.

    Args:
        index: the scanned split (:func:`efyolo.data.scan.scan_split`).
        imgsz: training size / long side of validation inputs.
        augment: apply YOLOv5's training augmentations.
        hyp: augmentation hyperparameters (YOLOv5 keys).
        rect: rectangular (aspect-ratio sorted) batches; used for validation.
        batch_size: only used with ``rect``.
        stride: the model's maximum stride.
        seed: base seed of the per-sample generators.
        cache_images: decode and resize every image once, up front, into RAM.
        eval_shape: ``(h, w)`` every validation input is letterboxed to (an exported model with a
            fixed, possibly non-square input); default ``(imgsz, imgsz)``. Without ``rect`` only.
        rect_pad: extra padding of rectangular batches in strides (YOLOv5's 0.5; ``efyolo val --rect``
            uses 0, so that square images get exactly ``imgsz``). With ``rect`` only.
    """

    def __init__(
        self,
        index: SplitIndex,
        imgsz: int = 640,
        augment: bool = False,
        hyp: Mapping[str, float] | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        seed: int = 0,
        cache_images: bool = False,
        eval_shape: tuple[int, int] | None = None,
        rect_pad: float = 0.5,
    ) -> None:
        self.index = index
        self.eval_shape = tuple(eval_shape) if eval_shape is not None else (imgsz, imgsz)
        self.records = list(index.images)
        self.imgsz, self.augment, self.hyp = imgsz, augment, dict(hyp or {})
        self.rect, self.stride, self.seed = rect, stride, seed
        self.epoch = 0
        self.mosaic = augment and not rect and self.hyp.get("mosaic", 0) > 0
        self.bad_files: set[str] = set()
        self.batch_shapes = None
        if rect:
            order, self.batch_shapes = rect_batch_shapes(index.shapes, batch_size, imgsz, stride, rect_pad)
            self.records = [self.records[i] for i in order]
        self._cache: list[tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None] = [None] * len(self.records)
        if cache_images:
            self.cache_images()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Seed the next epoch's augmentation (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def close_mosaic(self) -> None:
        """Stop using mosaic (YOLOv5's ``close_mosaic`` for the last epochs)."""
        self.mosaic = False

    # ---- loading ------------------------------------------------------------------------------
    def cache_images(self, threads: int = 4) -> None:
        def one(i: int) -> None:
            self._cache[i] = self._read_resized(i)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(self.records))))
        nbytes = sum(c[0].nbytes for c in self._cache if c is not None)
        LOGGER.info(f"cached {len(self.records)} images ({nbytes / 2**20:.0f} MiB)")

    def _read_resized(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None:
        path = self.records[i].im_file
        img = cv2.imread(path)  # BGR, EXIF orientation applied by OpenCV
        if img is None:
            return None
        return resize_long_side(img, self.imgsz, self.augment)

    def load_image(self, i: int) -> tuple[int, np.ndarray, tuple[int, int], tuple[int, int]]:
        """Record ``j`` (``i``, or its substitute) and its image resized so that its long side is
        ``imgsz``, with original and new ``(h, w)``: ``(j, img, (h0, w0), (h, w))``.

        An image that became unreadable after the scan is replaced by the next readable record,
        counted in :attr:`bad_files` and logged once; training never stops for it. The caller
        must take labels, path and shape from record ``j``, never from ``i``: the image of one
        record with the labels of another would be trained on and scored as a wrong pair.
        """
        n = len(self.records)
        unreadable = []
        for step in range(n):
            j = (i + step) % n
            loaded = self._cache[j] or self._read_resized(j)
            if loaded is not None:
                self._warn_unreadable(unreadable, self.records[j].im_file)
                return (j, *loaded)
            unreadable.append(self.records[j].im_file)
        raise RuntimeError("no readable image left in the dataset")

    def _warn_unreadable(self, paths: list[str], substitute: str) -> None:
        """Count ``paths`` in :attr:`bad_files` and log each one the first time it is found."""
        for path in paths:
            if path not in self.bad_files:
                self.bad_files.add(path)
                LOGGER.warning(
                    f"{path}: image unreadable since the scan, replaced by {substitute} with its own "
                    f"labels ({len(self.bad_files)} unreadable so far)"
                )

    def _pixel_labels(self, i: int, h: int, w: int) -> np.ndarray:
        labels = self.records[i].labels
        out = np.zeros((len(labels), 5), dtype=np.float32)
        if len(labels):
            out[:, 0] = labels[:, 0]
            out[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h)
        return out

    def _load_for_mosaic(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        """``(j, img, labels)``: the record loaded for ``i`` (see :meth:`load_image`), its resized
        image and its pixel ``xyxy`` labels in that image."""
        j, img, _, (h, w) = self.load_image(i)
        return j, img, self._pixel_labels(j, h, w)

    # ---- samples ------------------------------------------------------------------------------
    def __getitem__(self, i: int):
        """Sample ``i``; the path returned is that of the record whose image and labels were used
        (a substitute when image ``i`` became unreadable, see :meth:`load_image`), so that the
        validator, which looks ground truth up by path, scores the pair that was predicted on."""
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            hyp = self.hyp if self.mosaic else {**self.hyp, "mosaic": 0.0}
            used: dict[int, int] = {}  # dataset index -> record loaded for it

            def load(k: int) -> tuple[np.ndarray, np.ndarray]:
                j, img, labels = self._load_for_mosaic(k)
                used.setdefault(k, j)
                return img, labels

            img, labels = train_sample(i, len(self), load, self.imgsz, rng, hyp)
            record = self.records[used.get(i, i)]
            shapes = (record.shape, (1.0, (0.0, 0.0)))
        else:
            j, img, (h0, w0), (h, w) = self.load_image(i)
            record = self.records[j]
            # the batch's shape (rect batches), not the substitute's: a batch is one tensor
            shape = tuple(self.batch_shapes[i]) if self.batch_shapes is not None else self.eval_shape
            img, gain, pad = letterbox(img, shape, auto=False, scaleup=False)
            labels = letterbox_labels(self._pixel_labels(j, h, w), gain, pad)
            # network-input boxes -> original pixels: undo letterbox, then the resize to (h, w)
            shapes = ((h0, w0), (gain * h / h0, pad))
        return self._to_tensors(img, labels, record.im_file, shapes)

    @staticmethod
    def _to_tensors(img: np.ndarray, labels: np.ndarray, path: str, shapes: Any):
        h, w = img.shape[:2]
        out = torch.zeros((len(labels), 6))
        if len(labels):
            out[:, 1] = torch.from_numpy(labels[:, 0])
            out[:, 2:] = torch.from_numpy(xyxy2xywhn(labels[:, 1:5], w, h, clip=True))
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), out, path, shapes

    @staticmethod
    def collate(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        imgs, labels, paths, shapes = zip(*batch)
        for k, lb in enumerate(labels):
            lb[:, 0] = k  # image index within the batch, for build_targets
        return torch.stack(imgs, 0), torch.cat(labels, 0), paths, shapes


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    cv2.setNumThreads(0)  # one OpenCV thread per worker: the workers are the parallelism


def build_dataloader(
    dataset: DetectionDataset,
    batch_size: int,
    workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = -1,
    world_size: int = 1,
) -> DataLoader:
    """A seeded DataLoader; a ``DistributedSampler`` when ``rank >= 0``.

    Workers are not persistent so that :meth:`DetectionDataset.set_epoch` and
    :meth:`DetectionDataset.close_mosaic` reach them at the next epoch.
    """
    sampler = None
    if rank >= 0:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        num_workers=workers,
        sampler=sampler,
        pin_memory=torch.cuda.is_available(),
        collate_fn=DetectionDataset.collate,
        worker_init_fn=_seed_worker,
        generator=generator,
        drop_last=False,
    )
