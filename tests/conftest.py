"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels are tested in its interpreter, which must be chosen before triton is
# first imported (it is read at import time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import shfcas_fast  # noqa: E402
from shfcas_fast import baseline  # noqa: E402


@pytest.fixture(scope="session", params=[shfcas_fast, baseline], ids=["engine", "baseline"])
def impl(request):
    """The engine or its pure-PyTorch baseline; both expose the same scoring functions."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251209)
