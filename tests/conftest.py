"""Shared pytest setup: deterministic and small.

The suite runs with one torch thread: on the 2-core CI machine, tiny tensors run faster without
inter-thread synchronisation, and subprocess tests (resume, DDP) get a core of their own.
"""

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
