"""Fixtures shared by the test modules."""

from __future__ import annotations

import numpy as np
import pytest

import shfcas_fast
from shfcas_fast import baseline


@pytest.fixture(scope="session", params=[shfcas_fast, baseline], ids=["engine", "baseline"])
def impl(request):
    """The engine or its pure-PyTorch baseline; both expose the same scoring functions."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20251209)
