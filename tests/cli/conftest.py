"""Generated completion tables and ways to run the ``shfcas`` command line for the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cli_tables import completions_table
from shfcas_fast.cli import app
from typer.testing import CliRunner


@pytest.fixture
def invoke():
    """Run ``shfcas ARGS...`` in-process through Typer's runner; stderr is kept apart from stdout."""
    runner = CliRunner()

    def run(*args: object):
        return runner.invoke(app, [str(arg) for arg in args])

    return run


@pytest.fixture
def completions_file(tmp_path: Path) -> Path:
    """400 prompts x 8 completions in random row order, as Parquet."""
    path = tmp_path / "completions.parquet"
    pq.write_table(completions_table(400, 8, seed=1), path)
    return path


@pytest.fixture
def scored_file(tmp_path: Path, completions_file: Path, invoke) -> Path:
    """``completions_file`` after ``shfcas score``."""
    path = tmp_path / "scored.parquet"
    result = invoke("score", completions_file, "-o", path, "--quiet")
    assert result.exit_code == 0, result.output
    return path
