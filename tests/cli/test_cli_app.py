"""The ``shfcas`` application as a whole: help, ``bench``, ``env``, and every command as a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from shfcas_fast import _core
from shfcas_fast.cli import app

COMMANDS = ["score", "select", "pairs", "report", "export", "bench", "env", "demo"]


def test_help_lists_every_command_and_every_option_has_help(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout
    group = typer.main.get_command(app)
    for name in COMMANDS:
        command = group.commands[name]
        assert command.help, name
        for parameter in command.params:
            if isinstance(parameter, click.Option):
                assert parameter.help, f"{name} {parameter.opts}"


def test_bench_prints_a_table_with_agreeing_results(invoke):
    result = invoke("bench", "--size", "4000", "--top", "10", "--repeats", "1")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["operation", "engine", "ms", "baseline", "ms", "speedup", "max", "|diff|"]
    assert [row.split()[0] for row in rows] == ["score", "kendall_tau", "kendall_tau", "top_k"]
    assert all(float(row.split()[-1]) < 1e-9 for row in rows)  # engine and baseline agree


def test_bench_rejects_a_group_size_that_does_not_divide(invoke):
    result = invoke("bench", "--size", "10", "--group-size", "3")
    assert result.exit_code == 1 and "does not divide" in result.stderr


def test_env_reports_versions_and_the_core(invoke):
    found = json.loads(invoke("env", "--json").stdout)
    assert found["core_build"] == _core.build_info()
    assert found["core_threads"] == _core.num_threads()
    assert found["numpy"] and found["pyarrow"] and isinstance(found["cuda_available"], bool)
    table = invoke("env").stdout
    assert "core_profile" in table and "cuda_available" in table


def run_all(commands: list[list[str]], cwd) -> list[subprocess.CompletedProcess]:
    """Run ``python -m shfcas_fast.cli`` commands at the same time (each spends seconds importing)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "shfcas_fast.cli", *map(str, command)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    results = []
    for process, command in zip(processes, commands, strict=True):
        stdout, stderr = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def test_every_command_as_a_subprocess(tmp_path, completions_file):
    labelled = tmp_path / "labelled.parquet"
    pq.write_table(
        pa.table({"prompt": ["p", "p", "q"], "completion": ["a", "b", "c"], "score": [1.0, 0.0, 1.0]}), labelled
    )
    first = run_all(
        [
            ["score", completions_file, "-o", "scored.parquet"],
            ["pairs", labelled, "-o", "pairs.jsonl"],
            ["bench", "--size", "800", "--top", "5", "--repeats", "1"],
            ["env"],
            ["demo", "--help"],
            ["score", tmp_path / "absent.parquet", "-o", "never.parquet"],
        ],
        tmp_path,
    )
    then = run_all(
        [
            ["select", "scored.parquet", "-o", "selected.parquet", "--budget", "3"],
            ["report", "scored.parquet", "-o", "report"],
            ["export", "scored.parquet", "-o", "tasks.jsonl"],
        ],
        tmp_path,
    )
    *succeeded, failed = first
    for result in [*succeeded, *then]:
        assert result.returncode == 0, (result.args, result.stderr)
    assert "Traceback" not in failed.stderr
    assert failed.returncode == 1 and failed.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'absent.parquet'} does not exist"
    ]
    assert pq.read_table(tmp_path / "scored.parquet").num_rows == 3200
    assert pq.read_table(tmp_path / "selected.parquet").num_rows == 24
    assert (tmp_path / "pairs.jsonl").read_text() == '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.0}\n'
    assert (tmp_path / "report" / "summary.json").exists()
    assert len((tmp_path / "tasks.jsonl").read_text().splitlines()) == 3200
    assert "engine ms" in first[2].stdout and "core_version" in first[3].stdout and "--seeds" in first[4].stdout
