"""Shared pytest setup: deterministic, single-purpose, small."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
