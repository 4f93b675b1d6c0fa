"""``shfcas score``: conflict scores of every completion in a table file.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--grouped" in CliRunner().invoke(app, ["score", "--help"]).output
True

```

A file larger than memory is streamed in one of two ways:

- By default (two passes, rows of a prompt anywhere in the file):

  1. Read only the prompt, log-prob and reward columns, batch by batch, reducing per-token log-prob
     lists to their sums as they arrive. Group rows by prompt over the whole file (so a prompt whose
     rows straddle batches, or are scattered through the file, is one group) and score.
  2. Stream the input again, decoding only the other columns, and write each batch with the scores
     appended, in the input's row order.

  Peak memory is a small multiple of the three scored columns; the other columns (the completion
  texts, usually most of the file) are only ever held one batch at a time.

- With ``--grouped`` (one pass, the rows of each prompt adjacent): read every column batch by batch,
  score the prompts a batch completes and write them at once; the rows of its last prompt, which the
  next batch may continue, are carried over. Memory is bounded by the batch size (and the largest
  prompt), plus one hash per prompt to catch a prompt that comes back after others.

Both write the same rows, in the same order, with the same scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer

from .. import io
from ..scoring import ConflictScores, score
from ._common import (
    InputArgument,
    NanPolicy,
    NanPolicyOption,
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    finite_rows,
    float_column,
    progress_bar,
    reports_errors,
    require_columns,
)
from ._groups import AdjacentGroups, Groups, group_rows
from .app import app

__all__ = ["PER_COMPLETION_FIELDS", "SCORE_FIELDS", "score_file"]

#: The columns ``shfcas score`` appends (an input that already has them gets them replaced).
SCORE_FIELDS = pa.schema(
    [
        ("z_logprob", pa.float64()),
        ("z_reward", pa.float64()),
        ("pacs", pa.float64()),
        ("group_conflict", pa.float64()),
        ("kendall_tau", pa.float64()),
        ("kendall_distance", pa.float64()),
        ("degenerate", pa.bool_()),
    ]
)
#: The score columns with one value per completion; the rest are per prompt, repeated on its rows.
PER_COMPLETION_FIELDS = ("z_logprob", "z_reward", "pacs")


@app.command("score")
@reports_errors
def score_command(
    input_path: InputArgument,
    output: OutputOption,
    prompt_column: PromptColumnOption = "prompt",
    logprob_column: Annotated[
        str,
        typer.Option(
            "--logprob-column",
            help="Column with each completion's log-probability under the policy, or a list column of "
            "its response tokens' log-probs (summed).",
        ),
    ] = "logprob",
    reward_column: Annotated[
        str, typer.Option("--reward-column", help="Column with the proxy reward (higher is better).")
    ] = "reward",
    nan_policy: NanPolicyOption = NanPolicy.RAISE,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Rows per batch when streaming Parquet.")
    ] = io.DEFAULT_BATCH_ROWS,
    grouped: Annotated[
        bool,
        typer.Option(
            "--grouped",
            help="Rows of each prompt are adjacent: stream the file in one pass with memory bounded by the "
            "batch size.",
        ),
    ] = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score every completion: per-prompt z-scores, PACS, conflict and Kendall tau-b.

    The output holds the input's columns plus z_logprob, z_reward, pacs and the prompt's
    group_conflict, kendall_tau, kendall_distance and degenerate flag, in the input's row order.
    """
    summary = score_file(
        input_path,
        output,
        prompt_column=prompt_column,
        logprob_column=logprob_column,
        reward_column=reward_column,
        nan_policy=nan_policy,
        batch_size=batch_size,
        grouped=grouped,
        overwrite=overwrite,
        quiet=quiet,
    )
    if not quiet:
        typer.echo(summary, err=True)


def score_file(
    input_path: Path,
    output: Path,
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    nan_policy: NanPolicy = NanPolicy.RAISE,
    batch_size: int = io.DEFAULT_BATCH_ROWS,
    grouped: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
) -> str:
    """Score ``input_path`` into ``output`` (see the module docstring); returns a one-line summary.

    ``grouped`` promises that the rows of each prompt are adjacent: one pass, memory bounded by
    ``batch_size``; a prompt that comes back after other prompts raises a ValueError.
    """
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(input_path)
    options = {prompt_column: "--prompt-column", logprob_column: "--logprob-column", reward_column: "--reward-column"}
    require_columns(schema, options, input_path)
    columns = _ScoredColumns(prompt_column, logprob_column, reward_column, nan_policy)
    total = io.count_rows(input_path)

    output_schema = _output_schema(schema)
    write_scores = _write_one_pass if grouped else _write_two_passes
    with io.open_writer(
        output, output_schema, overwrite=overwrite, dictionary_columns=_input_names(output_schema)
    ) as writer:
        tally = write_scores(input_path, writer, columns, batch_size, total, quiet)
    return (
        f"Scored {tally.rows:,} rows in {tally.prompts:,} prompts ({tally.degenerate:,} degenerate"
        + (f", {tally.omitted:,} rows with non-finite values omitted" if tally.omitted else "")
        + f") into {output}"
    )


@dataclasses.dataclass(frozen=True)
class _ScoredColumns:
    """The columns that are scored, and what to do with their non-finite values."""

    prompt: str
    logprob: str
    reward: str
    nan_policy: NanPolicy

    @property
    def names(self) -> list[str]:
        """The distinct column names (one name may serve two roles, and is read once)."""
        return list(dict.fromkeys([self.prompt, self.logprob, self.reward]))

    def values(
        self, rows: pa.RecordBatch | pa.Table, first_row: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """float64 log-probs (per-token lists summed) and rewards of ``rows``, and the mask of rows to keep
        (``None``: all); under ``NanPolicy.RAISE`` a non-finite value raises, naming its file row
        (``first_row`` is the file row of ``rows[0]``).
        """
        logprob = float_column(rows.column(self.logprob), self.logprob, allow_lists=True)
        reward = float_column(rows.column(self.reward), self.reward)
        keep = finite_rows({self.logprob: logprob, self.reward: reward}, self.nan_policy, first_row=first_row)
        return logprob, reward, keep

    def require_rows(self, source: Path, kept: int, omitted: int) -> None:
        """Raise a ValueError unless some row of ``source`` is left to score."""
        if kept:
            return
        if omitted:
            raise ValueError(f"{source}: every row has a non-finite {self.logprob} or {self.reward}")
        raise ValueError(f"{source} has no rows")


@dataclasses.dataclass
class _Tally:
    """What has been scored, for the summary line."""

    rows: int = 0
    prompts: int = 0
    degenerate: int = 0
    omitted: int = 0

    def add(self, scores: ConflictScores, omitted: int) -> None:
        self.rows += scores.pacs.shape[0]
        self.prompts += scores.group_conflict.shape[0]
        self.degenerate += int(np.count_nonzero(scores.degenerate))
        self.omitted += omitted


def _output_schema(schema: pa.Schema) -> pa.Schema:
    kept = [field for field in schema if field.name not in SCORE_FIELDS.names]
    return pa.schema(kept + list(SCORE_FIELDS))


def _input_names(output_schema: pa.Schema) -> list[str]:
    """The output's columns that come from the input (the Parquet writer dictionary-encodes these;
    the scores are distinct floats)."""
    return [name for name in output_schema.names if name not in SCORE_FIELDS.names]


def _with_scores(
    table: pa.Table, scores: ConflictScores, rows: np.ndarray | slice, prompts: np.ndarray
) -> pa.Table:
    """``table`` with the score columns appended: row ``i`` gets the scores of completion ``rows[i]``
    and of prompt ``prompts[i]``."""
    for field in SCORE_FIELDS:
        values = getattr(scores, field.name)[rows if field.name in PER_COMPLETION_FIELDS else prompts]
        table = table.append_column(field, pa.array(values, type=field.type))
    return table


def _write_two_passes(
    input_path: Path,
    writer: io.BatchWriter,
    columns: _ScoredColumns,
    batch_size: int,
    total: int | None,
    quiet: bool,
) -> _Tally:
    """Score a file whose rows of a prompt may be anywhere (two passes, see the module docstring)."""
    scored_table, logprob, reward, drop = _read_scored_columns(input_path, columns, batch_size, total, quiet)
    prompts = scored_table[columns.prompt]
    groups = group_rows(prompts if drop is None else prompts.filter(pa.array(~drop)), columns.prompt)
    # Rebinding frees the file-order arrays before the scores are allocated.
    logprob, reward = groups.contiguous(logprob), groups.contiguous(reward)
    scores = score(logprob, reward, groups.sizes)
    del logprob, reward  # pass 2 needs the memory more
    with progress_bar(total, "writing", quiet=quiet) as bar:
        for batch in _scored_batches(input_path, writer.schema, scored_table, drop, groups, scores, batch_size):
            writer.write(batch)
            bar.update(batch.num_rows)
    tally = _Tally()
    tally.add(scores, omitted=0 if drop is None else int(np.count_nonzero(drop)))
    return tally


def _read_scored_columns(
    input_path: Path, columns: _ScoredColumns, batch_size: int, total: int | None, quiet: bool
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray | None]:
    """Pass 1: the scored columns, the log-probs and rewards of kept rows, and the dropped-row mask.

    The returned table holds every row (the writer needs the raw columns); the arrays only kept ones.
    """
    batches, logprobs, rewards, keeps = [], [], [], []
    rows = 0
    with progress_bar(total, "reading", quiet=quiet) as bar:
        for batch in io.iter_batches(input_path, columns.names, batch_size=batch_size):
            logprob, reward, keep = columns.values(batch, first_row=rows)
            batches.append(batch)
            logprobs.append(logprob)
            rewards.append(reward)
            keeps.append(keep)
            rows += batch.num_rows
            bar.update(batch.num_rows)
    if all(keep is None for keep in keeps):
        columns.require_rows(input_path, kept=rows, omitted=0)
        return pa.Table.from_batches(batches), np.concatenate(logprobs), np.concatenate(rewards), None
    keep = np.concatenate(
        [np.ones(batch.num_rows, dtype=bool) if keep is None else keep for batch, keep in zip(batches, keeps)]
    )
    kept = int(np.count_nonzero(keep))
    columns.require_rows(input_path, kept=kept, omitted=rows - kept)
    return pa.Table.from_batches(batches), np.concatenate(logprobs)[keep], np.concatenate(rewards)[keep], ~keep


def _scored_batches(
    input_path: Path,
    schema: pa.Schema,
    scored_table: pa.Table,
    drop: np.ndarray | None,
    groups: Groups,
    scores: ConflictScores,
    batch_size: int,
) -> Iterator[pa.Table]:
    """Pass 2: the input's batches, without dropped rows, with the score columns appended."""
    input_names = _input_names(schema)
    positions = groups.positions()
    kept_start = 0
    for start, other in _input_slices(input_path, input_names, scored_table, batch_size):
        columns = [
            other[name] if name in other.column_names else scored_table[name].slice(start, other.num_rows)
            for name in input_names
        ]
        table = pa.Table.from_arrays(columns, names=input_names)
        if drop is not None:
            table = table.filter(pa.array(~drop[start : start + other.num_rows]))
        kept = slice(kept_start, kept_start + table.num_rows)
        rows = kept if positions is None else positions[kept]  # where these rows are in ``scores``
        yield _with_scores(table, scores, rows, groups.ids[kept])
        kept_start = kept.stop


def _input_slices(
    input_path: Path, input_names: list[str], scored_table: pa.Table, batch_size: int
) -> Iterator[tuple[int, pa.Table]]:
    """``(first row, batch of the input columns not read in pass 1)`` over the input, in order."""
    other = [name for name in input_names if name not in scored_table.column_names]
    if not other:  # nothing left to read: walk pass 1's rows
        for start in range(0, scored_table.num_rows, batch_size):
            yield start, scored_table.slice(start, batch_size).select([])
        return
    start = 0
    for batch in io.iter_batches(input_path, other, batch_size=batch_size):
        yield start, pa.Table.from_batches([batch])
        start += batch.num_rows


def _write_one_pass(
    input_path: Path,
    writer: io.BatchWriter,
    columns: _ScoredColumns,
    batch_size: int,
    total: int | None,
    quiet: bool,
) -> _Tally:
    """Score a file whose rows of each prompt are adjacent, writing each batch's complete prompts at once."""
    input_names = _input_names(writer.schema)
    tally = _Tally()
    with progress_bar(total, "scoring", quiet=quiet) as bar:
        for first_row, table, sizes in _complete_prompts(input_path, input_names, columns, batch_size):
            bar.update(table.num_rows)
            logprob, reward, keep = columns.values(table, first_row)
            omitted = 0
            if keep is not None:
                omitted = keep.shape[0] - int(np.count_nonzero(keep))
                kept_per_prompt = np.add.reduceat(keep.astype(np.int64), np.cumsum(sizes) - sizes)
                sizes = kept_per_prompt[kept_per_prompt > 0]  # a prompt with no row left is gone
                table, logprob, reward = table.filter(pa.array(keep)), logprob[keep], reward[keep]
            if table.num_rows:
                scores = score(logprob, reward, sizes)
                prompts = np.repeat(np.arange(sizes.shape[0]), sizes)
                writer.write(_with_scores(table.select(input_names), scores, slice(None), prompts))
                tally.add(scores, omitted)
            else:
                tally.omitted += omitted
    columns.require_rows(input_path, kept=tally.rows, omitted=tally.omitted)
    return tally


def _complete_prompts(
    input_path: Path, input_names: list[str], columns: _ScoredColumns, batch_size: int
) -> Iterator[tuple[int, pa.Table, np.ndarray]]:
    """``(file row of the first row, rows, rows per prompt)`` of whole prompts, in file order.

    Each batch's last prompt may go on in the next batch, so its rows are carried over until the
    prompt ends; a prompt larger than a batch is carried through as many batches as it spans.
    """
    groups = AdjacentGroups(columns.prompt)
    carry: list[pa.RecordBatch] = []
    first_row = 0
    # Every column is read: the scored ones too, should one be among the replaced score columns.
    names = list(dict.fromkeys([*input_names, *columns.names]))
    for batch in io.iter_batches(input_path, names, batch_size=batch_size):
        sizes = groups.add(batch.column(columns.prompt))
        complete = int(sizes.sum())
        if complete:
            # Zero-copy: a table over the carried batches and this one, sliced at the last prompt.
            rows = pa.Table.from_batches([*carry, batch])
            yield first_row, rows.slice(0, complete), sizes
            carry, first_row = rows.slice(complete).to_batches(), first_row + complete
        else:
            carry.append(batch)
    sizes = groups.finish()
    if sizes.shape[0]:
        yield first_row, pa.Table.from_batches(carry), sizes
