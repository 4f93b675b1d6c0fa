"""Bad input ends with one line saying what to fix and exit code 1; failures leave no output behind."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_tables import completions_table
from shfcas_fast import io


def assert_fails_cleanly(result, *phrases: str) -> None:
    """Exit code 1, nothing on stdout, one ``Error:`` line on stderr holding ``phrases``, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def output(tmp_path):
    return tmp_path / "out" / "scored.parquet"


@pytest.fixture(autouse=True)
def output_folder(output):
    output.parent.mkdir()


def test_missing_column_names_the_option(completions_file, output, invoke):
    result = invoke("score", completions_file, "-o", output, "--reward-column", "gold")
    assert_fails_cleanly(result, "has no column 'gold'", "prompt, completion, logprob, reward", "--reward-column")
    assert not output.exists()


def test_wrong_type(tmp_path, output, invoke):
    source = write_parquet(tmp_path / "in.parquet", prompt=["a", "a"], logprob=[-1.0, -2.0], reward=["good", "bad"])
    assert_fails_cleanly(invoke("score", source, "-o", output), "column 'reward' has type string", "numbers")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_empty_file(tmp_path, output, invoke, suffix):
    source = tmp_path / f"empty{suffix}"
    source.write_bytes(b"")
    assert_fails_cleanly(invoke("score", source, "-o", output), "is empty")


def test_file_without_rows(tmp_path, output, invoke):
    source = tmp_path / "no-rows.parquet"
    pq.write_table(completions_table(1, 1).slice(0, 0), source)
    assert_fails_cleanly(invoke("score", source, "-o", output), "has no rows")


def test_unreadable_and_missing_files(tmp_path, output, invoke):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all")
    assert_fails_cleanly(invoke("score", garbage, "-o", output), "Parquet")
    assert_fails_cleanly(invoke("score", tmp_path / "absent.parquet", "-o", output), "does not exist")
    assert_fails_cleanly(invoke("score", tmp_path / "garbage.txt", "-o", output), "unknown file type '.txt'")
    assert_fails_cleanly(invoke("score", garbage, "-o", tmp_path / "out.csv"), "name the output .parquet or .jsonl")
    assert_fails_cleanly(invoke("score", garbage, "-o", tmp_path / "nowhere" / "out.parquet"), "does not exist")


def test_malformed_jsonl(tmp_path, output, invoke):
    source = tmp_path / "broken.jsonl"
    source.write_text('{"prompt": "a", "logprob": -1.0, "reward": 1.0}\n{"prompt": "a", "logprob": \n')
    assert_fails_cleanly(invoke("score", source, "-o", output), "JSON")


@pytest.mark.parametrize(
    ("column", "value", "shown"), [("logprob", np.nan, "missing or nan"), ("reward", -np.inf, "-inf")]
)
def test_non_finite_values_name_the_first_bad_row(tmp_path, output, invoke, column, value, shown):
    table = completions_table(10, 4, seed=7)
    values = table[column].to_numpy().copy()
    values[[17, 30]] = value
    source = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values)), source)
    result = invoke("score", source, "-o", output)
    assert_fails_cleanly(result, f"row 17 (0-based): column '{column}' is {shown}", "--nan-policy omit")
    assert not output.exists()


def test_null_values_and_prompts(tmp_path, output, invoke):
    source = write_parquet(tmp_path / "nulls.parquet", prompt=["a", "a"], logprob=[-1.0, None], reward=[0.0, 1.0])
    assert_fails_cleanly(invoke("score", source, "-o", output), "row 1 (0-based): column 'logprob' is missing")
    source = write_parquet(tmp_path / "no-prompt.parquet", prompt=["a", None], logprob=[-1.0, -2.0], reward=[0.0, 1.0])
    assert_fails_cleanly(invoke("score", source, "-o", output), "row 1 (0-based): column 'prompt' is missing")


def test_existing_output_needs_overwrite(completions_file, output, invoke):
    output.write_bytes(b"precious")
    assert_fails_cleanly(invoke("score", completions_file, "-o", output), "already exists", "--overwrite")
    assert output.read_bytes() == b"precious"
    assert invoke("score", completions_file, "-o", output, "--overwrite", "-q").exit_code == 0
    assert pq.read_table(output).num_rows == 3200


def test_select_and_report_need_a_scored_file(tmp_path, completions_file, invoke):
    assert_fails_cleanly(invoke("select", completions_file, "-o", tmp_path / "s.parquet"), "run `shfcas score`")
    assert_fails_cleanly(invoke("report", completions_file, "-o", tmp_path / "report"), "run `shfcas score`")
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "report").exists()


def test_random_selection_needs_a_budget(tmp_path, scored_file, invoke):
    result = invoke("select", scored_file, "-o", tmp_path / "s.parquet", "--strategy", "random")
    assert_fails_cleanly(result, 'strategy="random" needs a budget')


class FailingWriter(io.BatchWriter):
    """Writes its first batch, then fails the way a full disk or Ctrl-C would."""

    error: BaseException = KeyboardInterrupt()

    def write(self, data):
        if getattr(self, "_wrote", False):
            raise self.error
        super().write(data)
        self._wrote = True


# 130 = 128 + SIGINT, the shell's convention for an interrupted command.
@pytest.mark.parametrize(
    ("error", "exit_code"), [(KeyboardInterrupt(), 130), (OSError(28, "No space left on device"), 1)]
)
def test_interrupted_write_leaves_nothing_behind(completions_file, output, invoke, monkeypatch, error, exit_code):
    monkeypatch.setattr(FailingWriter, "error", error)
    monkeypatch.setattr(io, "BatchWriter", FailingWriter)
    result = invoke("score", completions_file, "-o", output, "--batch-size", "100")
    assert result.exit_code == exit_code
    if isinstance(error, OSError):
        assert_fails_cleanly(result, "No space left on device")
    assert list(output.parent.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_output(completions_file, output, invoke, monkeypatch):
    output.write_bytes(b"previous result")
    monkeypatch.setattr(io, "BatchWriter", FailingWriter)
    result = invoke("score", completions_file, "-o", output, "--batch-size", "100", "--overwrite")
    assert result.exit_code == 130
    assert [path.name for path in output.parent.iterdir()] == [output.name]
    assert output.read_bytes() == b"previous result"


def test_interrupted_report_leaves_no_folder(tmp_path, scored_file, invoke, monkeypatch):
    from shfcas_fast.cli import report as report_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_command, "write_report", interrupted)
    assert invoke("report", scored_file, "-o", tmp_path / "out" / "report").exit_code == 130
    assert list((tmp_path / "out").iterdir()) == []


def test_demo_refuses_a_file_as_its_report_directory(tmp_path, invoke):
    existing = tmp_path / "report"
    existing.write_text("not a directory")
    result = invoke("demo", "-o", existing, "--fast")
    assert_fails_cleanly(result, f"Error: {existing} is a file; -o/--output names the")
    assert existing.read_text() == "not a directory"
