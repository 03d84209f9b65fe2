"""The README's Python snippets run as written, in the state a user has after its first command.

That state is prepared cheaply: a small synthetic dataset where the demo's cache would be
(``~/.cache/efyolo``, with ``HOME`` pointed at a temporary folder) and an untrained checkpoint
where ``efyolo train`` writes ``best.pt``. Each ``python`` block is then executed unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import efyolo
from efyolo.data.synth import generate_dataset
from efyolo.models.checkpoint import save_checkpoint

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_snippets() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_snippet_runs(index: int, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EFYOLO_CACHE", raising=False)
    generate_dataset(tmp_path / "home" / ".cache" / "efyolo" / "demo", n_train=1, n_val=3, imgsz=64, seed=0)
    monkeypatch.chdir(tmp_path)
    model = efyolo.build_model("yolov5n", nc=6)
    save_checkpoint({"model_config": model.yaml, "state_dict": model.state_dict(),
                     "names": [f"c{i}" for i in range(6)], "imgsz": 64},
                    Path("runs/train/exp/weights/best.pt"))
    torch.manual_seed(0)
    exec(compile(python_blocks()[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    if "r.save(" in python_blocks()[index]:
        assert len(list(Path("annotated").glob("*.jpg"))) == 3  # distinct output names
