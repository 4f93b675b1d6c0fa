"""``shfcas score``: conflict scores of every completion in a table file.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--logprob-column" in CliRunner().invoke(app, ["score", "--help"]).output
True

```

How a file larger than memory is handled (two passes over the input):

1. Read only the prompt, log-prob and reward columns, batch by batch, reducing per-token log-prob
   lists to their sums as they arrive. Group rows by prompt over the whole file (so a prompt whose
   rows straddle batches, or are scattered through the file, is one group) and score.
2. Stream the input again, decoding only the other columns, and write each batch with the scores
   appended, in the input's row order.

Peak memory is therefore a small multiple of the three scored columns; the other columns (the
completion texts, usually most of the file) are only ever held one batch at a time.
"""

from __future__ import annotations

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
from ._groups import Groups, group_rows
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
    overwrite: bool = False,
    quiet: bool = True,
) -> str:
    """Score ``input_path`` into ``output`` (see the module docstring); returns a one-line summary."""
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(input_path)
    options = {prompt_column: "--prompt-column", logprob_column: "--logprob-column", reward_column: "--reward-column"}
    require_columns(schema, options, input_path)
    scored_columns = list(options)  # a dict: one name used for two roles is read once
    total = io.count_rows(input_path)

    output_schema = _output_schema(schema)
    # Dictionary-encode the input's columns as a Parquet writer would; the scores are distinct floats.
    input_columns = [name for name in output_schema.names if name not in SCORE_FIELDS.names]
    with io.open_writer(output, output_schema, overwrite=overwrite, dictionary_columns=input_columns) as writer:
        scored_table, logprob, reward, drop = _read_scored_columns(
            input_path, scored_columns, logprob_column, reward_column, nan_policy, batch_size, total, quiet
        )
        prompts = scored_table[prompt_column]
        groups = group_rows(prompts if drop is None else prompts.filter(pa.array(~drop)), prompt_column)
        # Rebinding frees the file-order arrays before the scores are allocated.
        logprob, reward = groups.contiguous(logprob), groups.contiguous(reward)
        scores = score(logprob, reward, groups.sizes)
        del logprob, reward  # pass 2 needs the memory more
        with progress_bar(total, "writing", quiet=quiet) as bar:
            for batch in _scored_batches(input_path, writer.schema, scored_table, drop, groups, scores, batch_size):
                writer.write(batch)
                bar.update(batch.num_rows)
    omitted = 0 if drop is None else int(np.count_nonzero(drop))
    return (
        f"Scored {groups.ids.shape[0]:,} rows in {groups.num_groups:,} prompts "
        f"({int(np.count_nonzero(scores.degenerate)):,} degenerate"
        + (f", {omitted:,} rows with non-finite values omitted" if omitted else "")
        + f") into {output}"
    )


def _output_schema(schema: pa.Schema) -> pa.Schema:
    kept = [field for field in schema if field.name not in SCORE_FIELDS.names]
    return pa.schema(kept + list(SCORE_FIELDS))


def _read_scored_columns(
    input_path: Path,
    columns: list[str],
    logprob_column: str,
    reward_column: str,
    nan_policy: NanPolicy,
    batch_size: int,
    total: int | None,
    quiet: bool,
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray | None]:
    """Pass 1: the scored columns, the log-probs and rewards of kept rows, and the dropped-row mask.

    The returned table holds every row (the writer needs the raw columns); the arrays only kept ones.
    """
    batches, logprobs, rewards = [], [], []
    with progress_bar(total, "reading", quiet=quiet) as bar:
        for batch in io.iter_batches(input_path, columns, batch_size=batch_size):
            batches.append(batch)
            logprobs.append(float_column(batch.column(logprob_column), logprob_column, allow_lists=True))
            rewards.append(float_column(batch.column(reward_column), reward_column))
            bar.update(batch.num_rows)
    if not batches or not sum(batch.num_rows for batch in batches):
        raise ValueError(f"{input_path} has no rows")
    table = pa.Table.from_batches(batches)
    logprob, reward = np.concatenate(logprobs), np.concatenate(rewards)
    keep = finite_rows({logprob_column: logprob, reward_column: reward}, nan_policy)
    if keep is None:
        return table, logprob, reward, None
    if not keep.any():
        raise ValueError(f"{input_path}: every row has a non-finite {logprob_column} or {reward_column}")
    return table, logprob[keep], reward[keep], ~keep


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
    input_names = [name for name in schema.names if name not in SCORE_FIELDS.names]
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
        prompts = groups.ids[kept]
        for field in SCORE_FIELDS:
            values = getattr(scores, field.name)[rows if field.name in PER_COMPLETION_FIELDS else prompts]
            table = table.append_column(field, pa.array(values, type=field.type))
        yield table
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
