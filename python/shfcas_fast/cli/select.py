"""``shfcas select``: the high-conflict prompts of a scored file, with all their completions.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--budget" in CliRunner().invoke(app, ["select", "--help"]).output
True

```
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import typer

from .. import io
from ..scoring import ConflictScores, PromptScores, select
from ._common import (
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    float_column,
    progress_bar,
    reports_errors,
    require_columns,
)
from ._groups import Groups, group_rows
from .app import app
from .score import PER_COMPLETION_FIELDS, SCORE_FIELDS

__all__ = [
    "Strategy",
    "ScoredArgument",
    "ScoredPrompts",
    "load_scored",
    "StrategyOption",
    "BudgetOption",
    "ThresholdOption",
    "SeedOption",
]


class Strategy(str, enum.Enum):
    """Which prompts to send for feedback (see :func:`shfcas_fast.select`)."""

    PACS = "pacs"
    KENDALL = "kendall"
    RANDOM = "random"


class OutputKind(str, enum.Enum):
    """The shape of ``shfcas select``'s output."""

    ROWS = "rows"
    PROMPTS = "prompts"


ScoredArgument = Annotated[
    Path,
    typer.Argument(metavar="SCORED", help="Output of `shfcas score` (.parquet, .jsonl or .csv).", show_default=False),
]
StrategyOption = Annotated[
    Strategy,
    typer.Option(
        "--strategy",
        help="pacs: highest mean |PACS|; kendall: highest Kendall distance; random: uniform (needs --budget).",
        case_sensitive=False,
    ),
]
BudgetOption = Annotated[
    int | None,
    typer.Option("--budget", min=0, help="Select at most this many prompts, highest first.", show_default=False),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Select prompts scoring above this (default without --budget: 1.0 for pacs, 0.5 for kendall).",
        show_default=False,
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed of --strategy random.")]


@dataclasses.dataclass(frozen=True)
class ScoredPrompts:
    """A scored file's prompts: the prompt column, how rows group, and the scores in group order."""

    prompts: pa.ChunkedArray
    groups: Groups
    scores: PromptScores

    def select(self, strategy: Strategy, budget: int | None, threshold: float | None, seed: int) -> np.ndarray:
        """Indices of the selected prompts (groups), in selection order."""
        return select(self.scores, budget=budget, threshold=threshold, strategy=strategy.value, seed=seed)


def load_scored(path: Path, prompt_column: str, *, quiet: bool, per_completion: bool = True) -> ScoredPrompts:
    """Read the prompt and score columns of a file written by ``shfcas score``.

    With ``per_completion=False`` only the per-prompt columns are read (all that selection needs) and
    ``scores`` is a :class:`~shfcas_fast.scoring.PromptScores`; otherwise a full ``ConflictScores``.
    """
    schema = io.read_schema(path)
    require_columns(schema, {prompt_column: "--prompt-column"}, path)
    missing = [name for name in SCORE_FIELDS.names if name not in schema.names]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}; run `shfcas score` on it first")
    numeric = [
        field.name
        for field in SCORE_FIELDS
        if pa.types.is_floating(field.type) and (per_completion or field.name not in PER_COMPLETION_FIELDS)
    ]
    prompt_chunks, flag_chunks = [], []
    number_chunks: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
    with progress_bar(io.count_rows(path), "reading", quiet=quiet) as bar:
        for batch in io.iter_batches(path, [prompt_column, "degenerate", *numeric]):
            prompt_chunks.append(batch.column(prompt_column))
            flag_chunks.append(_flags(batch.column("degenerate"), path))
            for name in numeric:
                number_chunks[name].append(float_column(batch.column(name), name))
            bar.update(batch.num_rows)
    if not sum(len(chunk) for chunk in prompt_chunks):
        raise ValueError(f"{path} has no rows")
    prompts = pa.chunked_array(prompt_chunks)
    groups = group_rows(prompts, prompt_column)
    # One column at a time, so that each column's Arrow buffers go as soon as it is copied.
    numbers = {name: np.concatenate(number_chunks.pop(name)) for name in numeric}
    per_prompt = {
        name: _per_group(numbers.pop(name), groups, name, path)
        for name in ("group_conflict", "kendall_tau", "kendall_distance")
    }
    per_prompt["degenerate"] = _per_group(np.concatenate(flag_chunks), groups, "degenerate", path)
    if not per_completion:
        return ScoredPrompts(prompts=prompts, groups=groups, scores=PromptScores(**per_prompt))
    scores = ConflictScores(**per_prompt, **{name: groups.contiguous(numbers[name]) for name in PER_COMPLETION_FIELDS})
    return ScoredPrompts(prompts=prompts, groups=groups, scores=scores)


def _flags(column: pa.Array, path: Path) -> np.ndarray:
    if column.null_count or not pa.types.is_boolean(column.type):
        raise TypeError(f"{path}: column 'degenerate' must be true/false on every row; run `shfcas score` again")
    return column.to_numpy(zero_copy_only=False)


def _per_group(values: np.ndarray, groups: Groups, name: str, path: Path) -> np.ndarray:
    """One value per group, checking that all rows of a group agree on it."""
    first = values[groups.first_rows]
    disagree = ~((first[groups.ids] == values) | (np.isnan(values) if values.dtype.kind == "f" else False))
    if disagree.any():
        row = int(np.argmax(disagree))
        raise ValueError(
            f"{path}: row {row} (0-based) has a different {name} than earlier rows of its prompt; "
            "score the combined file again with `shfcas score`"
        )
    return first


@app.command("select")
@reports_errors
def select_command(
    scored_path: ScoredArgument,
    output: OutputOption,
    strategy: StrategyOption = Strategy.PACS,
    budget: BudgetOption = None,
    threshold: ThresholdOption = None,
    seed: SeedOption = 0,
    kind: Annotated[
        OutputKind,
        typer.Option(
            "--as",
            help="rows: every completion of the selected prompts, all columns (for annotation); "
            "prompts: one row per selected prompt (a TRL prompt-only data set).",
            case_sensitive=False,
        ),
    ] = OutputKind.ROWS,
    prompt_column: PromptColumnOption = "prompt",
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Select the highest-conflict prompts, with all their completions.

    Given both --budget and --threshold, the --budget highest prompts above the threshold. Every
    output row has its prompt's selection_rank (0 = selected first, i.e. highest conflict); rows
    keep the scored file's order.
    """
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(scored_path)
    require_columns(schema, {prompt_column: "--prompt-column"}, scored_path)
    if kind is OutputKind.PROMPTS:
        output_schema = _prompt_schema(schema.field(prompt_column).type)
    else:
        output_schema = pa.schema([field for field in schema if field.name != _RANK.name] + [_RANK])
    with io.open_writer(output, output_schema, overwrite=overwrite) as writer:
        scored = load_scored(scored_path, prompt_column, quiet=quiet, per_completion=False)
        groups, selected = scored.groups, scored.select(strategy, budget, threshold, seed)
        if kind is OutputKind.PROMPTS:
            writer.write(_prompt_table(scored, selected, output_schema))
        else:
            del scored  # the whole file is streamed again next: free the prompts and scores first
            _write_selected_rows(scored_path, writer, groups, selected, quiet=quiet)
    if not quiet:
        rows = int(groups.sizes[selected].sum())
        typer.echo(
            f"Selected {selected.shape[0]:,} of {groups.num_groups:,} prompts ({rows:,} rows) "
            f"by {strategy.value} into {output}",
            err=True,
        )


_RANK = pa.field("selection_rank", pa.int64())


def _prompt_schema(prompt_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("prompt", prompt_type),
            ("num_completions", pa.int64()),
            ("group_conflict", pa.float64()),
            ("kendall_tau", pa.float64()),
            ("kendall_distance", pa.float64()),
            _RANK,
        ]
    )


def _prompt_table(scored: ScoredPrompts, selected: np.ndarray, schema: pa.Schema) -> pa.Table:
    """A TRL prompt-only data set: one row per selected prompt, in selection order."""
    scores = scored.scores
    columns = [
        scored.prompts.take(pa.array(scored.groups.first_rows[selected])),
        scored.groups.sizes[selected],
        scores.group_conflict[selected],
        scores.kendall_tau[selected],
        scores.kendall_distance[selected],
        np.arange(selected.shape[0], dtype=np.int64),
    ]
    return pa.Table.from_arrays(
        [pa.array(column) if isinstance(column, np.ndarray) else column for column in columns], schema=schema
    )


def _write_selected_rows(
    scored_path: Path, writer: io.BatchWriter, groups: Groups, selected: np.ndarray, *, quiet: bool
) -> None:
    """Stream the scored file again and write the rows of selected prompts, with their rank."""
    rank = np.full(groups.num_groups, -1, dtype=np.int64)
    rank[selected] = np.arange(selected.shape[0])
    names = [name for name in writer.schema.names if name != _RANK.name]
    start = 0
    with progress_bar(groups.ids.shape[0], "writing", quiet=quiet) as bar:
        for batch in io.iter_batches(scored_path, names):
            row_rank = rank[groups.ids[start : start + batch.num_rows]]
            chosen = row_rank >= 0
            table = pa.Table.from_batches([batch]).filter(pa.array(chosen))
            writer.write(table.append_column(_RANK, pa.array(row_rank[chosen])))
            start += batch.num_rows
            bar.update(batch.num_rows)
