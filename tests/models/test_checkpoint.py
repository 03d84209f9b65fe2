"""Checkpoints: plain data, weights_only-safe, clear errors for wrong files and shapes."""

from __future__ import annotations
import pytest
import torch
from efyolo import EfyoloError, build_model
from efyolo.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


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
