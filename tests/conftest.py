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


@pytest.fixture(autouse=True)
def _fresh_logging():
    """Each test starts as a fresh process would: the efyolo logger unconfigured (an entry point
    called by an earlier test must not make a later test's library calls print)."""
    from efyolo.utils.log import reset_logging

    reset_logging()
    yield
    reset_logging()
