"""The safe reader refuses files that try to run code, and runs none of it.

Each crafted file carries a payload that would create a marker file if anything called it; the
test checks the error names the offending global and that the marker does not exist.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from efyolo import EfyoloError
from efyolo.models.checkpoint import load_checkpoint
from efyolo.models.safe_pickle import (
    Policy,
    UnsafePickleError,
    module_tree_state,
    read_torch_file,
)
from efyolo.models.yolov5_import import read_yolov5, yolov5_policy


class _Payload:
    """Pickles as ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "posix.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "shutil.rmtree": _Payload(shutil.rmtree, str(marker.parent / "keep")),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
                                  "shutil.rmtree"])
def test_code_running_globals_are_refused_and_never_run(tmp_path: Path, name: str, legacy: bool) -> None:
    marker = tmp_path / "PWNED"
    (tmp_path / "keep").mkdir()
    path = tmp_path / "evil.pt"
    payload = {"epoch": -1, "model": _payloads(marker)[name], "optimizer": None}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    before = path.read_bytes()
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        read_torch_file(path, yolov5_policy())
    with pytest.raises(EfyoloError, match=name.replace(".", r"\.")):
        load_checkpoint(path)  # the path every --weights takes
    assert not marker.exists() and (tmp_path / "keep").is_dir()
    assert path.read_bytes() == before  # the user's file is untouched


def test_payload_inside_a_module_tree_is_refused(tmp_path: Path) -> None:
    """The payload hidden deep in a module's attributes, next to real tensors."""
    marker = tmp_path / "PWNED"
    conv = nn.Conv2d(3, 4, 1)
    conv.hook = _Payload(os.system, f"touch {marker}")
    path = tmp_path / "evil.pt"
    torch.save({"model": nn.Sequential(conv)}, path)
    with pytest.raises(EfyoloError, match=r"posix\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_plain_pickle_file_with_a_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(EfyoloError, match=r"posix\.system"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.fixture
def fake_yolov5_module(monkeypatch: pytest.MonkeyPatch):
    """A module named ``models.common`` with a class ``Conv``, so pickle can name it."""
    models = types.ModuleType("models")
    common = types.ModuleType("models.common")

    class Conv(nn.Module):
        pass

    Conv.__module__, Conv.__qualname__ = "models.common", "Conv"
    common.Conv = Conv
    models.common = common
    monkeypatch.setitem(sys.modules, "models", models)
    monkeypatch.setitem(sys.modules, "models.common", common)
    return Conv


def test_calling_an_allowed_class_is_refused(tmp_path: Path, fake_yolov5_module) -> None:
    """REDUCE on a placeholder class (instead of building it with NEWOBJ) names the class."""
    path = tmp_path / "reduce.pt"
    torch.save({"model": _Payload(fake_yolov5_module, "x")}, path)
    with pytest.raises(UnsafePickleError, match=r"calls models\.common\.Conv"):
        read_torch_file(path, yolov5_policy())


def test_placeholders_hold_data_and_state_dict_matches_torch(tmp_path: Path, fake_yolov5_module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU())
    model.register_buffer("scratch", torch.ones(2), persistent=False)
    block = fake_yolov5_module()
    block.inner = model
    path = tmp_path / "tree.pt"
    torch.save({"model": block}, path)
    tree = read_torch_file(path, yolov5_policy())
    state = module_tree_state(tree["model"])
    reference = block.state_dict()
    assert sorted(state) == sorted(reference)  # no non-persistent buffer
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_unknown_storage_and_persistent_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pid.pt"
    with zipfile.ZipFile(path, "w") as archive:
        # PERSID-free pickle with BINPERSID of a non-storage tuple: ('evil', 1)
        archive.writestr("archive/data.pkl", b"\x80\x02X\x04\x00\x00\x00evilK\x01\x86Q.")
    with pytest.raises(UnsafePickleError, match="persistent id"):
        read_torch_file(path, Policy())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_files_get_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": nn.Conv2d(3, 4, 1)}, path)
    data = path.read_bytes()
    garbage = random.Random(0).randbytes(2000)
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": garbage, "empty": b""}[damage])
    with pytest.raises(EfyoloError, match=str(path)):
        read_yolov5(path)
    with pytest.raises(EfyoloError, match=str(path)):
        load_checkpoint(path)


def _damaged_variants(original: bytes, count: int) -> list[bytes]:
    """Random bytes, random bytes behind a pickle header, and the original with bytes overwritten,
    each from a fixed seed: torch's own unpickler fails on these with KeyError, TypeError, struct.error..."""
    variants = []
    for seed in range(count):
        rng = random.Random(seed)
        noise = rng.randbytes(rng.randrange(1, 3000))
        flipped = bytearray(original)
        for _ in range(rng.randrange(1, 40)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        variants += [noise, b"\x80\x02" + noise, bytes(flipped)]
    return variants


def test_random_damage_always_gives_an_efyolo_error(tmp_path: Path) -> None:
    """Whatever a damaged file makes the unpicklers raise, the user sees one EfyoloError naming it
    (CI once met a KeyError from random bytes)."""
    path = tmp_path / "model.pt"
    torch.save({"model": nn.Conv2d(3, 4, 1)}, path)
    original = path.read_bytes()
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": nn.Conv2d(3, 4, 1).state_dict()}, legacy, _use_new_zipfile_serialization=False)
    for data in _damaged_variants(original, 60) + _damaged_variants(legacy.read_bytes(), 60):
        path.write_bytes(data)
        for reader in (read_yolov5, load_checkpoint):
            try:
                reader(path)
            except EfyoloError as err:
                assert str(path) in str(err)
            # a flip inside tensor data can leave a readable file: that is not an error
