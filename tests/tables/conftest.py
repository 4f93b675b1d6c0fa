"""Fixtures for the tests of :mod:`shfcas_fast.tables`."""

from __future__ import annotations

import pyarrow as pa
import pytest
from table_cases import adjacent_completions


@pytest.fixture
def adjacent() -> pa.Table:
    return adjacent_completions(seed=11)
