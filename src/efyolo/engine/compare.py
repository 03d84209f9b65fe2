"""``efyolo compare``: the backbone study a user runs before choosing a model.

Every model of the list is trained with the same recipe, data and budget (equal epochs, or equal
wall-clock time, the fair budget on a CPU), its ``best.pt`` is scored with the COCO-exact
evaluator (what ``efyolo val`` prints), exported to each requested format, and every
(model, format) pair is timed at batch 1 in interleaved passes: the machine's speed drifts, and
interleaving spreads the drift over all of them, so their ratios stay fair.

One folder holds the study (``runs/compare/expN``)::

    compare_args.json      the study's options (what --resume continues with)
    runs/<model>/          one ordinary ``efyolo train`` run per model (resumable on its own)
        compare_model.json the model's training and evaluation record, written when it is done
    compare.csv / .json    one row per model and format (:class:`CompareRow`)
    pareto.png             mAP50-95 against latency, the Pareto front drawn and labelled
    report.html            a self-contained page: sortable table, the plot, machine and commands

A killed study, run again with ``--resume`` (or the same ``--name`` and ``--exist-ok``), skips
every model with a ``compare_model.json``, resumes the model whose ``last.pt`` is unfinished and
starts the others. ``--from-runs DIR...`` builds the same report from existing training runs.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from efyolo.errors import EfyoloError
from efyolo.utils.log import LOGGER

ARGS_FILE = "compare_args.json"
MODEL_FILE = "compare_model.json"
CLOCK_FILE = "compare_clock.json"
DEFAULT_FORMATS = ("pytorch", "onnx")


@dataclass
class CompareRow:
    """One model in one format. ``None`` where a value does not apply or could not be measured."""

    model: str
    format: str
    params: int
    gflops: float  # 2 x MACs at the latency size (unfused, as `efyolo profile`)
    size_mb: float | None
    map50: float | None  # best.pt on the val split (the PyTorch checkpoint's score for every format)
    map: float | None  # mAP50-95
    latency_ms: float | None  # median, batch 1
    latency_p10_ms: float | None  # spread: 10th and 90th percentiles of the timed runs
    latency_p90_ms: float | None
    train_images_per_s: float | None
    train_minutes: float | None  # wall-clock time of the training run (epochs and validation)
    epochs: int | None
    run: str
    pareto: bool = False  # on the front of (latency, mAP50-95) over every row
    status: str = "ok"


@dataclass
class ModelRecord:
    """What one finished model contributes before timing (``runs/<model>/compare_model.json``)."""

    model: str
    run: str
    best: str
    params: int
    gflops: float
    epochs: int | None
    train_seconds: float | None
    train_images_per_s: float | None
    map50: float
    map: float
    exports: dict[str, str] = field(default_factory=dict)  # format -> file
    export_errors: dict[str, str] = field(default_factory=dict)  # format -> reason


# ---------------------------------------------------------------------------- options


def parse_list(items: Sequence[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]`` (comma lists and repeats)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    return [x.strip() for item in items for x in str(item).split(",") if x.strip()]


def check_models(models: Sequence[str]) -> list[str]:
    """Every name resolves to a model config (unknown names fail here, before any training)."""
    from efyolo.models.config import load_model_config

    names = parse_list(models)
    if not names:
        raise EfyoloError("compare: --models needs at least one model name")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EfyoloError(f"compare: --models lists {', '.join(repeated)} more than once")
    for name in names:
        try:
            cfg = load_model_config(name)
            backbone = cfg.get("backbone_model")
            if isinstance(backbone, str):
                from efyolo.models.registry import BACKBONES

                BACKBONES.get(backbone)  # a timm: name is checked (and timm's presence) here
        except EfyoloError as err:
            raise EfyoloError(f"compare: model {name!r}: {err}") from None
    return names


def check_formats(formats: Sequence[str] | str | None) -> list[str]:
    """Format names: ``pytorch`` or an export format (unknown names are an error)."""
    from efyolo.export.exporter import check_format

    names = [f.lower() for f in parse_list(formats)] or list(DEFAULT_FORMATS)
    return [f if f == "pytorch" else check_format(f) for f in dict.fromkeys(names)]


def run_folder_name(model: str) -> str:
    """A folder name for a model name (``yolov5n-timm:lcnet_100`` -> ``yolov5n-timm_lcnet_100``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def _make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".efyolo-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise EfyoloError(f"compare: cannot write to {path} ({err.strerror or err})") from None
    return path


# ---------------------------------------------------------------------------- training


class TrainingClock:
    """A training callback: training wall time and images per second of the training epochs.

    Totals are kept in ``<run>/compare_clock.json`` after every epoch, so a resumed run adds to
    what the killed one measured.
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.totals = {"wall_seconds": 0.0, "train_seconds": 0.0, "images": 0, "epochs": 0}
        self._start = self._mark = 0.0

    def on_train_start(self, trainer: Any) -> None:
        self.path = Path(trainer.save_dir) / CLOCK_FILE
        if self.path.is_file():
            self.totals.update(json.loads(self.path.read_text()))
        self._start = self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any) -> None:
        now = time.perf_counter()
        self.totals["train_seconds"] += now - self._mark
        self.totals["images"] += len(trainer.train_loader.dataset)
        self.totals["epochs"] += 1

    def on_fit_epoch_end(self, trainer: Any) -> None:
        now = time.perf_counter()
        self.totals["wall_seconds"] += now - self._start
        self._start = self._mark = now
        if self.path is not None:
            self.path.write_text(json.dumps(self.totals))


def _checkpoint_finished(last: Path) -> bool:
    from efyolo.models.checkpoint import load_checkpoint

    try:
        return bool(load_checkpoint(last).get("finished"))
    except EfyoloError:
        return False


def train_one(model: str, run_dir: Path, train_kwargs: dict[str, Any], callbacks: Sequence[Any] = ()) -> Path:
    """Train (or resume) one model's run in ``run_dir``; returns its ``best.pt``."""
    from efyolo.engine.trainer import train

    last = run_dir / "weights" / "last.pt"
    best = run_dir / "weights" / "best.pt"
    hooks = [TrainingClock(), *callbacks]
    if last.is_file() and not _checkpoint_finished(last):
        LOGGER.info(f"compare: resuming {model} from {last}")
        # the run's own options come from last.pt; where it runs (device, workers) from this call
        where = {k: train_kwargs[k] for k in ("device", "workers", "quiet") if k in train_kwargs}
        train(callbacks=hooks, resume=str(last), **where)
    elif not best.is_file():
        LOGGER.info(f"compare: training {model}")
        train(callbacks=hooks, model=model, project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
              **train_kwargs)
    if not best.is_file():
        raise EfyoloError(f"compare: training {model} left no {best}")
    return best


def training_stats(run_dir: Path) -> tuple[int | None, float | None, float | None]:
    """``(epochs, wall seconds, training images per second)`` of a run, from the compare clock or,
    for runs trained outside ``compare``, from ``results.csv`` (epochs and time; no images/s)."""
    clock = run_dir / CLOCK_FILE
    if clock.is_file():
        t = json.loads(clock.read_text())
        ips = t["images"] / t["train_seconds"] if t.get("train_seconds") else None
        return int(t["epochs"]), float(t["wall_seconds"]), ips
    results = run_dir / "results.csv"
    if results.is_file():
        import csv

        rows = list(csv.DictReader(results.read_text().splitlines()))
        if rows:
            last = {k.strip(): v for k, v in rows[-1].items()}
            seconds = float(last["time"]) if last.get("time") not in (None, "") else None
            return len(rows), seconds, None
    return None, None, None


# ---------------------------------------------------------------------------- one model's record


def model_profile(model_cfg: Any, size: tuple[int, int]) -> tuple[int, float]:
    """Parameters and GFLOPs (2 x MACs, unfused) of a model config at ``size``."""
    from efyolo.engine.profiler import count_gflops
    from efyolo.models import build_model

    model = build_model(model_cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    return params, round(count_gflops(model, torch.zeros(1, 3, *size)), 4)


def record_model(
    model: str, run_dir: Path, best: Path, data: str | Path, formats: Sequence[str], bench_size: tuple[int, int],
    device: str = "cpu", out_dir: Path | None = None,
) -> ModelRecord:
    """Score ``best.pt``, export it to every format and write ``compare_model.json``.

    Exports and the record go to ``out_dir`` (default ``run_dir``, the study's own run folder); for
    a run the study did not train, the caller passes a folder of the study, so nothing is written
    into, or replaced in, the user's run.
    """
    import tempfile

    from efyolo.engine.validator import validate_model
    from efyolo.export.exporter import export_model, export_path
    from efyolo.models.checkpoint import load_checkpoint
    from efyolo.utils.files import write_json_atomic

    out_dir = out_dir or run_dir
    ckpt = load_checkpoint(best)
    params, gflops = model_profile(ckpt["model_config"], bench_size)
    with tempfile.TemporaryDirectory(prefix="efyolo-compare-") as tmp:  # validation outputs are not kept
        # efyolo val's defaults (the weights' own size, conf 0.001, IoU 0.6): the numbers `efyolo val` prints
        metrics = validate_model(best, data, project=tmp, plots=False, quiet=True, device=device)
    epochs, seconds, ips = training_stats(run_dir)
    record = ModelRecord(model, str(run_dir), str(best), params, gflops, epochs, seconds, ips,
                         round(float(metrics["map50"]), 6), round(float(metrics["map"]), 6))
    for fmt in formats:
        if fmt == "pytorch":
            record.exports[fmt] = str(best)
            continue
        try:
            path = export_model(best, fmt, imgsz=bench_size, device=device, output=export_path(out_dir / best.name, fmt))
            record.exports[fmt] = str(path)
        except EfyoloError as err:
            record.export_errors[fmt] = str(err)
            LOGGER.warning(f"compare: {model}: {fmt} skipped: {err}")
    write_json_atomic(out_dir / MODEL_FILE, asdict(record))
    return record


def load_record(folder: Path) -> ModelRecord | None:
    """The record written by :func:`record_model` into ``folder``, if any."""
    path = folder / MODEL_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(ModelRecord)}
    return ModelRecord(**{k: v for k, v in raw.items() if k in known})


# ---------------------------------------------------------------------------- timing


def time_interleaved(
    backends: dict[tuple[str, str], Any], size: tuple[int, int], runs: int, warmup: int, passes: int
) -> dict[tuple[str, str], list[float]]:
    """Batch-1 latencies (ms) of every backend, timed in ``passes`` round-robin passes.

    Each pass runs every backend ``ceil(runs / passes)`` times in turn, so a slow spell of the
    machine lands on all of them instead of on whichever model was being timed.
    """
    x = torch.rand(1, 3, *size)
    for backend in backends.values():
        for _ in range(warmup):
            backend(x)
    per_pass = max(1, math.ceil(runs / max(1, passes)))
    times: dict[tuple[str, str], list[float]] = {key: [] for key in backends}
    for _ in range(max(1, passes)):
        for key, backend in backends.items():
            for _ in range(per_pass):
                t0 = time.perf_counter()
                backend(x)
                times[key].append((time.perf_counter() - t0) * 1e3)
    return times


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(latency, mAP)`` points no other point beats (lower or equal latency and higher or
    equal mAP, one of them strictly)."""
    flags = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def build_rows(
    records: Sequence[ModelRecord], formats: Sequence[str], bench_size: tuple[int, int], runs: int, warmup: int,
    passes: int, threads: int | None, device: str = "cpu",
) -> list[CompareRow]:
    """Time every (model, format) of the records in interleaved passes and make the rows."""
    from efyolo.engine.benchmark import file_size_mb, torch_threads
    from efyolo.runtime.autobackend import load_backend
    from efyolo.utils.devices import select_device

    dev = select_device(device)
    rows: dict[tuple[str, str], CompareRow] = {}
    backends: dict[tuple[str, str], Any] = {}
    with torch_threads(threads):
        for rec in records:
            for fmt in formats:
                row = CompareRow(
                    rec.model, fmt, rec.params, rec.gflops, None, rec.map50, rec.map, None, None, None,
                    rec.train_images_per_s and round(rec.train_images_per_s, 2),
                    rec.train_seconds and round(rec.train_seconds / 60, 2), rec.epochs, rec.run,
                )
                rows[(rec.model, fmt)] = row
                path = rec.exports.get(fmt)
                if path is None:
                    row.status = f"skipped: {rec.export_errors.get(fmt, 'not exported')}"
                    continue
                row.size_mb = file_size_mb(path)
                if fmt == "coreml":
                    row.status = "exported; CoreML runs on Apple devices only"
                    continue
                try:
                    backends[(rec.model, fmt)] = load_backend(path, dev)
                except EfyoloError as err:
                    row.status = f"skipped: {err}"
        if backends:
            LOGGER.info(f"compare: timing {len(backends)} model/format pairs at {bench_size[0]}x{bench_size[1]}, "
                        f"batch 1, {torch.get_num_threads()} threads, {passes} interleaved passes")
            for key, values in time_interleaved(backends, bench_size, runs, warmup, passes).items():
                row = rows[key]
                p10, median, p90 = np.percentile(values, [10, 50, 90])
                row.latency_ms, row.latency_p10_ms, row.latency_p90_ms = (round(float(v), 2) for v in (median, p10, p90))
    out = list(rows.values())
    timed = [r for r in out if r.latency_ms is not None and r.map is not None]
    for row, on_front in zip(timed, pareto_front([(r.latency_ms, r.map) for r in timed])):
        row.pareto = on_front
    return out


# ---------------------------------------------------------------------------- the study


@dataclass
class CompareResult:
    save_dir: Path
    rows: list[CompareRow]
    files: dict[str, Path]


def _resolve_data(data: str | Path | None, imgsz: int) -> tuple[str, dict[str, Any]]:
    """The dataset YAML every model trains on, and the recipe keys that go with it: without
    ``data``, the built-in synthetic dataset (rendered at ``imgsz``) with the demo's recipe."""
    if data is not None:
        if not Path(data).is_file():
            raise EfyoloError(f"compare: dataset {data} does not exist")
        return str(data), {}
    from efyolo.data.synth import default_dataset
    from efyolo.training.config import DEMO_DEFAULTS

    path = default_dataset(imgsz=imgsz)
    recipe = {k: v for k, v in DEMO_DEFAULTS.items() if k not in ("model", "imgsz", "epochs", "time", "batch", "synth")}
    return str(path), recipe


def _study_dir(project: str | Path, name: str, exist_ok: bool, resume: bool | str) -> tuple[Path, bool]:
    """The study folder and whether it continues an earlier study."""
    from efyolo.utils.runs import increment_path

    if isinstance(resume, (str, Path)) and str(resume) not in ("", "True", "true"):
        path = Path(resume)
        if not (path / ARGS_FILE).is_file():
            raise EfyoloError(f"compare --resume {path}: no {ARGS_FILE} there (not a compare folder)")
        return path, True
    if resume:
        found = sorted(Path(project).glob(f"*/{ARGS_FILE}"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise EfyoloError(f"compare --resume: no compare folder under {project}")
        return found[-1].parent, True
    path = Path(project) / name
    if exist_ok:
        return path, (path / ARGS_FILE).is_file()
    return Path(increment_path(path)), False


def compare(
    models: Sequence[str] | str | None = None,
    data: str | Path | None = None,
    imgsz: int = 320,
    epochs: int | None = None,
    time_each: float | None = None,
    batch: int = 16,
    formats: Sequence[str] | str | None = None,
    threads: int | None = None,
    seed: int = 0,
    project: str | Path = "runs/compare",
    name: str = "exp",
    exist_ok: bool = False,
    resume: bool | str = False,
    from_runs: Sequence[str | Path] | None = None,
    bench_imgsz: int | Sequence[int] | None = None,
    runs: int = 20,
    warmup: int = 3,
    passes: int = 5,
    workers: int | None = None,
    device: str = "cpu",
    quiet: bool = False,
    train_options: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> CompareResult:
    """Train, score, export and time several models the same way; write the study's report.

    Args:
        models: model names (comma lists allowed). Every name is checked before any training.
        data: dataset YAML (default: the built-in synthetic dataset at ``imgsz``, with the demo's recipe).
        imgsz: training size.
        epochs: equal epochs for every model (default 10 when ``time_each`` is not given).
        time_each: equal wall-clock hours per model instead (``--time``): the fair budget on a CPU.
        batch, seed, workers, device: training options shared by every model.
        formats: ``pytorch`` and export formats to time (default ``pytorch,onnx``).
        threads: CPU threads for every runtime while timing.
        project, name, exist_ok: the study folder (``project/name``, incremented unless ``exist_ok``).
        resume: continue the latest study under ``project`` (``True``) or the one in a folder.
        from_runs: build the report from existing training runs (folders holding ``weights/best.pt``,
            or a compare folder) instead of training.
        bench_imgsz: the size exports are made and timed at (default ``imgsz``).
        runs, warmup, passes: timed runs per (model, format), untimed ones, interleaved passes.
        train_options: further ``efyolo.train`` options shared by every model (``hyp``, ``patience``,
            ``cache``, ...); kept with the study, so a resumed study uses them too.
        callbacks: training callbacks given to every model's run (not kept for a resume).

    Returns:
        The study folder, the rows and the files written.
    """
    from efyolo.engine.compare_report import write_report
    from efyolo.utils.checks import check_imgsz, check_int
    from efyolo.utils.files import write_json_atomic
    from efyolo.utils.log import setup_logging

    setup_logging(quiet=quiet)  # an entry point, like efyolo.train

    for label, value in (("runs", runs), ("passes", passes), ("batch", batch)):
        check_int(label, value, 1)
    if warmup < 0:
        raise EfyoloError(f"compare: warmup must not be negative, got {warmup}")
    if epochs is not None and time_each is not None:
        raise EfyoloError("compare: give --epochs or --time, not both")
    save_dir, continuing = _study_dir(project, name, exist_ok, resume)
    if continuing:
        saved = json.loads((save_dir / ARGS_FILE).read_text())
        LOGGER.info(f"compare: continuing the study in {save_dir}")
        models, data, imgsz, epochs, time_each = (saved["models"], saved["data"], saved["imgsz"], saved["epochs"],
                                                  saved["time_each"])
        batch, formats, seed, bench_imgsz = saved["batch"], saved["formats"], saved["seed"], saved["bench_imgsz"]
        from_runs, train_options = saved.get("from_runs"), saved.get("train_options")
    fmt_list = check_formats(formats)
    size = check_imgsz(imgsz, 32)
    train_size = max(size)
    bench = check_imgsz(bench_imgsz if bench_imgsz is not None else train_size, 32)
    run_dirs = _expand_runs(from_runs) if from_runs else []
    names = check_models(models) if not run_dirs else []
    if not run_dirs and epochs is None and time_each is None:
        epochs = 10
    _make_dir(save_dir)
    data_path, recipe = (None, {}) if run_dirs and data is None else _resolve_data(data, train_size)
    args = {
        "models": names, "data": data_path, "imgsz": train_size, "epochs": epochs, "time_each": time_each,
        "batch": batch, "formats": fmt_list, "seed": seed, "bench_imgsz": list(bench),
        "from_runs": [str(p) for p in run_dirs] or None, "command": " ".join(shlex.quote(a) for a in sys.argv),
        "recipe": recipe, "train_options": dict(train_options or {}),
    }
    write_json_atomic(save_dir / ARGS_FILE, args)

    records: list[ModelRecord] = []
    if run_dirs:
        for i, run_dir in enumerate(run_dirs):
            out_dir = save_dir / "from_runs" / f"{i:02d}-{run_folder_name(run_dir.name)}"
            records.append(_record_existing_run(run_dir, out_dir, data_path, fmt_list, bench, device))
    else:
        reserved = {"model", "data", "imgsz", "epochs", "time", "batch", "seed", "project", "name", "exist_ok",
                    "resume"} & set(train_options or {})
        if reserved:
            raise EfyoloError(f"compare: train_options may not set {sorted(reserved)}: they are the study's own")
        train_kwargs: dict[str, Any] = {
            **recipe, **(train_options or {}),
            "data": data_path, "imgsz": train_size, "batch": batch, "seed": seed, "device": device, "quiet": quiet,
        }
        if workers is not None:
            train_kwargs["workers"] = workers
        if time_each is not None:
            # the first plan; the time budget re-plans it after every epoch (up or down) to fill the time
            train_kwargs.update(time=float(time_each), epochs=10)
        else:
            train_kwargs["epochs"] = int(epochs)
        for i, model in enumerate(names):
            run_dir = save_dir / "runs" / run_folder_name(model)
            record = load_record(run_dir)
            if record is not None:
                LOGGER.info(f"compare: {model} already done ({i + 1}/{len(names)}), not redone")
            else:
                best = train_one(model, run_dir, train_kwargs, callbacks)
                record = record_model(model, run_dir, best, data_path, fmt_list, bench, device)
            records.append(record)
    rows = build_rows(records, fmt_list, bench, runs, warmup, passes, threads, device)
    files = write_report(save_dir, rows, args, bench, threads)
    LOGGER.info(f"compare: report written to {files['report.html']}")
    return CompareResult(save_dir, rows, files)


def _expand_runs(items: Sequence[str | Path]) -> list[Path]:
    """Training-run folders from ``--from-runs`` items: a run (has ``weights/best.pt``) or a compare
    folder (its ``runs/*``) or a parent folder of runs."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if (path / "weights" / "best.pt").is_file():
            out.append(path)
            continue
        found = sorted(p.parent.parent for p in path.glob("**/weights/best.pt")) if path.is_dir() else []
        if not found:
            raise EfyoloError(f"compare --from-runs {path}: no training run there (no weights/best.pt)")
        out.extend(found)
    return list(dict.fromkeys(out))


def _record_existing_run(
    run_dir: Path, out_dir: Path, data: str | None, formats: Sequence[str], bench: tuple[int, int], device: str
) -> ModelRecord:
    """A record of a run trained outside this study (its own dataset unless ``data`` is given).

    A run of a compare study reuses that study's record; otherwise the exports and the record go to
    ``out_dir`` in this study's folder, and the run itself is only read.
    """
    from efyolo.models.checkpoint import load_checkpoint

    for folder in (run_dir, out_dir):
        record = load_record(folder)
        if record is not None and set(formats) <= set(record.exports) | set(record.export_errors):
            return record
    best = run_dir / "weights" / "best.pt"
    ckpt = load_checkpoint(best)
    model = str(ckpt["model_config"].get("name") or ckpt["model_config"].get("yaml_file") or run_dir.name)
    run_data = data or (ckpt.get("train_args") or {}).get("data")
    if not run_data:
        raise EfyoloError(f"compare --from-runs {run_dir}: its checkpoint names no dataset; pass --data")
    return record_model(model, run_dir, best, run_data, formats, bench, device, out_dir=out_dir)
