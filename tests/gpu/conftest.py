"""CUDA-only tests: every test under tests/gpu is skipped on a machine without a usable GPU."""

from __future__ import annotations

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _require_cuda() -> None:
    if not _cuda_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
