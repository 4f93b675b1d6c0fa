"""Start-up and environment: ``--version``, ``env``, missing extras, bad thread counts, Ctrl-C, and
which errors become one line (user errors) and which keep their traceback (bugs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shfcas_fast
from shfcas_fast import io
from shfcas_fast.cli import env as env_command
from shfcas_fast.tables import select as select_module


def run_cli(*arguments: str, code: str = "", **environment: str) -> subprocess.CompletedProcess:
    """``shfcas ARGUMENTS`` in a fresh interpreter, after running ``code`` there."""
    program = f"{code}\nimport sys\nsys.argv = ['shfcas', *sys.argv[1:]]\nfrom shfcas_fast.cli import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", program, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **environment},
        timeout=120,
    )


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"shfcas-fast {shfcas_fast.__version__}\n"


def test_env_names_optional_packages_that_are_not_installed(invoke, monkeypatch):
    real_version = env_command.metadata.version

    def version(package: str) -> str:
        if package == "ray":
            raise env_command.metadata.PackageNotFoundError(package)
        return real_version(package)

    monkeypatch.setattr(env_command.metadata, "version", version)
    found = json.loads(invoke("env", "--json").stdout)
    for package in ("trl", "transformers", "datasets"):
        assert found[package] == real_version(package)
    assert found["ray"] == "not installed"
    lines = invoke("env").stdout.splitlines()
    assert any(line.split() == ["ray", "not", "installed"] for line in lines)


@pytest.mark.parametrize(
    ("arguments", "missing", "extra"),
    [(["bench", "--size", "16"], "torch", "gpu"), (["demo", "--fast"], "datasets", "trl")],
)
def test_a_missing_extra_is_one_line_naming_it(invoke, monkeypatch, tmp_path, arguments, missing, extra):
    # A base install: the package cannot be imported (and nothing that imported it is cached).
    monkeypatch.setitem(sys.modules, missing, None)
    for name in ("shfcas_fast.baseline", "shfcas_fast.loop.demo"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        package, _, module = name.rpartition(".")
        if package in sys.modules:  # ``from package import module`` looks here first
            monkeypatch.delattr(sys.modules[package], module, raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke(*arguments)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"Error: this command needs the optional package {missing!r}, which is not installed: "
        f"pip install 'shfcas-fast[{extra}]'"
    ]


def test_bad_thread_count_is_one_line_for_every_engine_command(tmp_path):
    result = run_cli("bench", "--size", "16", SHFCAS_NUM_THREADS="zero")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        'Error: SHFCAS_NUM_THREADS="zero" is not a positive integer; set it to the number of worker threads, or unset it to use every core'
    ]
    result = run_cli("score", str(tmp_path / "absent.parquet"), "-o", str(tmp_path / "out.parquet"), SHFCAS_NUM_THREADS="-2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith('Error: SHFCAS_NUM_THREADS="-2"')


def test_ctrl_c_during_start_up_is_one_line():
    # Ctrl-C arrives while the commands are being imported.
    interrupt = (
        "import importlib.abc, sys\n"
        "class Interrupt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'shfcas_fast.cli.score':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
    )
    result = run_cli("--help", code=interrupt)
    assert result.returncode == 130
    assert result.stderr == "Interrupted\n"


@pytest.mark.parametrize("command", ["bench", "pairs"])
def test_out_of_memory_is_one_line(invoke, monkeypatch, tmp_path, command):
    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 37.3 GiB for an array with shape (5000000000,) and data type int64")

    if command == "bench":
        from shfcas_fast.cli import bench

        monkeypatch.setattr(bench, "time_engine_and_baseline", exhausted)
        result = invoke("bench", "--size", "16")
    else:
        from shfcas_fast.tables import pairs

        monkeypatch.setattr(pairs, "preference_pair_indices", exhausted)
        labelled = tmp_path / "labelled.parquet"
        pq.write_table(pa.table({"prompt": ["p", "p"], "completion": ["a", "b"], "score": [1.0, 0.0]}), labelled)
        result = invoke("pairs", labelled, "-o", tmp_path / "pairs.parquet")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: out of memory (Unable to allocate 37.3 GiB for an array with shape (5000000000,) and data type "
        "int64); use a smaller input or free memory"
    ]


def test_a_bug_keeps_its_traceback(invoke, monkeypatch, scored_file, tmp_path):
    def buggy(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(select_module, "select", buggy)
    result = invoke("select", scored_file, "-o", tmp_path / "selected.parquet")
    assert isinstance(result.exception, ValueError) and not isinstance(result.exception, SystemExit)
    assert "Error:" not in result.stderr


def test_selection_warning_is_one_stderr_line(invoke, scored_file, tmp_path):
    # A threshold this low selects nearly every prompt: the engine warns, the CLI prints one line.
    result = invoke("select", scored_file, "-o", tmp_path / "selected.parquet", "--threshold", "0.1", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("warning: the pacs threshold 0.1 selected ") and "more than half" in lines[0]


def test_a_stale_temporary_output_is_removed_with_one_warning_line(invoke, completions_file, tmp_path):
    output = tmp_path / "scored.parquet"
    # A process that no longer exists: the pid of a finished child.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".scored.parquet.{io._outputs._host()}.{finished.stdout.strip()}.{'0' * 16}.tmp"
    stale.write_bytes(b"half an output")
    result = invoke("score", completions_file, "-o", output, "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"warning: removed {stale}, left by process {finished.stdout.strip()} which ended before finishing it"]
    assert not stale.exists() and output.exists()
