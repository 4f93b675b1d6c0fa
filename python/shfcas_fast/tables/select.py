"""The high-conflict prompts of a scored table or file, with all their completions or one row each.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast.tables import score_table, select_table
>>> rows = pa.table({
...     "prompt": ["calm", "calm", "calm", "torn", "torn", "torn"],
...     "logprob": [-1.0, -2.0, -3.0, -1.0, -2.0, -3.0],
...     "reward": [3.0, 2.0, 1.0, 1.0, 2.0, 3.0],
... })
>>> selected = select_table(score_table(rows), budget=1, kind="prompts")
>>> selected.select(["prompt", "num_completions", "kendall_tau", "selection_rank"]).to_pylist()
[{'prompt': 'torn', 'num_completions': 3, 'kendall_tau': -1.0, 'selection_rank': 0}]

```

The input is the output of :func:`~shfcas_fast.tables.score_table` or ``score_file`` (every row
carries its prompt's scores). Prompts are chosen by :func:`shfcas_fast.select`: ``"pacs"`` ranks by
mean |PACS| (default threshold 1.0), ``"kendall"`` by the Kendall distance (default threshold 0.5),
``"random"`` draws ``budget`` prompts uniformly; degenerate prompts are never chosen. Given both a
budget and a threshold, the ``budget`` highest prompts above the threshold are chosen. Every output
row gets its prompt's ``selection_rank`` (0 = chosen first, i.e. highest conflict).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import ShfcasTypeError, ShfcasValueError
from ..scoring import ConflictScores, PromptScores, Strategy, select
from ._progress import progress_bar
from .columns import PER_COMPLETION_FIELDS, SCORE_FIELDS, float_column, require_columns
from .grouping import Groups, group_rows

__all__ = [
    "OutputKind",
    "SELECTION_RANK",
    "ScoredPrompts",
    "SelectSummary",
    "load_scored",
    "prompt_schema",
    "scored_prompts",
    "select_file",
    "select_table",
]

#: The shape of a selection: ``"rows"``, every completion of the selected prompts with all columns
#: (for annotation), in the input's row order; ``"prompts"``, one row per selected prompt in
#: selection order with ``prompt, num_completions, group_conflict, kendall_tau, kendall_distance``
#: (a TRL prompt-only data set).
OutputKind = Literal["rows", "prompts"]
#: The column holding each selected prompt's rank.
SELECTION_RANK = pa.field("selection_rank", pa.int64())
_PER_PROMPT_FIELDS = ("group_conflict", "kendall_tau", "kendall_distance")


@dataclasses.dataclass(frozen=True)
class ScoredPrompts:
    """A scored table's prompts: the prompt column, how rows group, and the scores in group order."""

    prompts: pa.ChunkedArray
    groups: Groups
    scores: PromptScores

    def select(
        self, strategy: Strategy = "pacs", budget: int | None = None, threshold: float | None = None, seed: int = 0
    ) -> np.ndarray:
        """Indices of the selected prompts (groups), in selection order (see :func:`shfcas_fast.select`)."""
        return select(self.scores, budget=budget, threshold=threshold, strategy=strategy, seed=seed)

    def prompt_table(self, selected: np.ndarray) -> pa.Table:
        """One row per prompt of ``selected`` (group indices), in that order: a TRL prompt-only data set."""
        columns = [
            self.prompts.take(pa.array(self.groups.first_rows[selected])),
            pa.array(self.groups.sizes[selected], pa.int64()),
            *(pa.array(getattr(self.scores, name)[selected], pa.float64()) for name in _PER_PROMPT_FIELDS),
            pa.array(np.arange(selected.shape[0]), pa.int64()),
        ]
        return pa.Table.from_arrays(columns, schema=prompt_schema(self.prompts.type))

    def row_ranks(self, selected: np.ndarray) -> np.ndarray:
        """int64 per row: the selection rank of the row's prompt, -1 where it was not selected."""
        rank = np.full(self.groups.num_groups, -1, dtype=np.int64)
        rank[selected] = np.arange(selected.shape[0])
        return rank[self.groups.ids]


@dataclasses.dataclass(frozen=True)
class SelectSummary:
    """How many prompts (and their rows) were selected, of how many, by which strategy."""

    selected_prompts: int
    prompts: int
    selected_rows: int
    strategy: str

    def describe(self, destination: object) -> str:
        """A one-line summary naming where the selection went."""
        return (
            f"Selected {self.selected_prompts:,} of {self.prompts:,} prompts ({self.selected_rows:,} rows) "
            f"by {self.strategy} into {destination}"
        )


def prompt_schema(prompt_type: pa.DataType) -> pa.Schema:
    """The columns of a ``kind="prompts"`` selection whose prompts have type ``prompt_type``."""
    fields = [("prompt", prompt_type), ("num_completions", pa.int64())]
    return pa.schema(fields + [(name, pa.float64()) for name in _PER_PROMPT_FIELDS] + [SELECTION_RANK])


def _scored_prompts(
    prompts: pa.ChunkedArray,
    numbers: dict[str, np.ndarray],
    degenerate: np.ndarray,
    prompt_column: str,
    source: object,
    per_completion: bool,
) -> ScoredPrompts:
    """Group the rows of a scored table and take each prompt's scores (consumes ``numbers``)."""
    groups = group_rows(prompts, prompt_column)
    per_prompt = {name: _per_group(numbers.pop(name), groups, name, source) for name in _PER_PROMPT_FIELDS}
    per_prompt["degenerate"] = _per_group(degenerate, groups, "degenerate", source)
    per_prompt["group_sizes"] = groups.sizes
    if not per_completion:
        return ScoredPrompts(prompts=prompts, groups=groups, scores=PromptScores(**per_prompt))
    per_row = {name: groups.contiguous(numbers[name]) for name in PER_COMPLETION_FIELDS}
    return ScoredPrompts(prompts=prompts, groups=groups, scores=ConflictScores(**per_prompt, **per_row))


def _require_scores(schema: pa.Schema, prompt_column: str, source: object) -> None:
    require_columns(schema, {prompt_column: "prompt_column"}, source)
    missing = [name for name in SCORE_FIELDS.names if name not in schema.names]
    if missing:
        raise ShfcasValueError(
            f"{source} has no column {missing[0]!r}; score it first (score_table, or run `shfcas score`)"
        )


def _numeric_fields(per_completion: bool) -> list[str]:
    return [
        field.name
        for field in SCORE_FIELDS
        if pa.types.is_floating(field.type) and (per_completion or field.name not in PER_COMPLETION_FIELDS)
    ]


def scored_prompts(table: pa.Table, prompt_column: str = "prompt", *, per_completion: bool = True) -> ScoredPrompts:
    """The prompts of a scored table in memory (see :func:`load_scored`)."""
    _require_scores(table.schema, prompt_column, "table")
    if not table.num_rows:
        raise ShfcasValueError("table has no rows")
    numbers = {name: float_column(table[name], name) for name in _numeric_fields(per_completion)}
    flags = _flags(table["degenerate"], "table")
    return _scored_prompts(table[prompt_column], numbers, flags, prompt_column, "table", per_completion)


def load_scored(
    path: str | os.PathLike[str], prompt_column: str = "prompt", *, per_completion: bool = True, progress: bool = False
) -> ScoredPrompts:
    """Read the prompt and score columns of a scored file.

    With ``per_completion=False`` only the per-prompt columns are read (all that selection needs) and
    ``scores`` is a :class:`~shfcas_fast.scoring.PromptScores`; otherwise a full ``ConflictScores``.
    A prompt whose rows disagree on a per-prompt score raises a ShfcasValueError.
    """
    schema = io.read_schema(path)
    _require_scores(schema, prompt_column, path)
    numeric = _numeric_fields(per_completion)
    prompt_chunks, flag_chunks = [], []
    number_chunks: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
    with progress_bar(io.count_rows(path), "reading", enabled=progress) as bar:
        for batch in io.iter_batches(path, [prompt_column, "degenerate", *numeric]):
            prompt_chunks.append(batch.column(prompt_column))
            flag_chunks.append(_flags(batch.column("degenerate"), path))
            for name in numeric:
                number_chunks[name].append(float_column(batch.column(name), name))
            bar.update(batch.num_rows)
    if not sum(len(chunk) for chunk in prompt_chunks):
        raise ShfcasValueError(f"{path} has no rows")
    # One column at a time, so that each column's Arrow buffers go as soon as it is copied.
    numbers = {name: np.concatenate(number_chunks.pop(name)) for name in numeric}
    flags = np.concatenate(flag_chunks)
    return _scored_prompts(pa.chunked_array(prompt_chunks), numbers, flags, prompt_column, path, per_completion)


def _flags(column: pa.Array | pa.ChunkedArray, source: object) -> np.ndarray:
    if column.null_count or not pa.types.is_boolean(column.type):
        raise ShfcasTypeError(f"{source}: column 'degenerate' must be true/false on every row; score it again")
    return column.to_numpy(zero_copy_only=False)


def _per_group(values: np.ndarray, groups: Groups, name: str, source: object) -> np.ndarray:
    """One value per group, checking that all rows of a group agree on it."""
    first = values[groups.first_rows]
    disagree = ~((first[groups.ids] == values) | (np.isnan(values) if values.dtype.kind == "f" else False))
    if disagree.any():
        row = int(np.argmax(disagree))
        raise ShfcasValueError(
            f"{source}: row {row} (0-based) has a different {name} than earlier rows of its prompt; "
            "score the combined rows again"
        )
    return first


def _check_kind(kind: str) -> None:
    if kind not in ("rows", "prompts"):
        raise ShfcasValueError(f"kind must be 'rows' or 'prompts', got {kind!r}")


def select_table(
    scored: Any,
    *,
    strategy: Strategy = "pacs",
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    kind: OutputKind = "rows",
    prompt_column: str = "prompt",
) -> pa.Table:
    """The selected prompts of a scored table: their rows with a ``selection_rank``, or one row each.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> from shfcas_fast.tables import score_table
    >>> rows = pa.table({"prompt": ["a", "b"] * 3, "logprob": [-1.0, -1.0, -2.0, -2.0, -3.0, -3.0],
    ...                  "reward": [0.0, 2.0, 1.0, 1.0, 2.0, 0.0]})
    >>> select_table(score_table(rows), threshold=0.5, strategy="kendall")["prompt"].to_pylist()
    ['a', 'a', 'a']

    ```

    ``kind="rows"`` keeps the scored table's row order and columns (any earlier ``selection_rank``
    replaced); ``kind="prompts"`` is in selection order (see :data:`OutputKind`).
    """
    _check_kind(kind)
    if isinstance(scored, pa.RecordBatch):
        scored = pa.Table.from_batches([scored])
    if not isinstance(scored, pa.Table):
        raise ShfcasTypeError(f"scored must be a pyarrow Table, got {type(scored).__name__}")
    prompts = scored_prompts(scored, prompt_column, per_completion=False)
    selected = prompts.select(strategy, budget, threshold, seed)
    if kind == "prompts":
        return prompts.prompt_table(selected)
    ranks = prompts.row_ranks(selected)
    chosen = ranks >= 0
    table = scored.drop_columns([SELECTION_RANK.name]) if SELECTION_RANK.name in scored.column_names else scored
    return table.filter(pa.array(chosen)).append_column(SELECTION_RANK, pa.array(ranks[chosen]))


def select_file(
    scored_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    strategy: Strategy = "pacs",
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    kind: OutputKind = "rows",
    prompt_column: str = "prompt",
    overwrite: bool = False,
    progress: bool = False,
) -> SelectSummary:
    """Write the selection of :func:`select_table` on a scored file to ``output`` (Parquet or JSONL).

    Example:
    ```python
    >>> import pathlib, tempfile
    >>> import pyarrow as pa
    >>> from shfcas_fast import io
    >>> from shfcas_fast.tables import score_file
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> io.write_table(folder / "rows.parquet", pa.table({"prompt": ["a", "b"] * 3,
    ...     "logprob": [-1.0, -1.0, -2.0, -2.0, -3.0, -3.0], "reward": [0.0, 2.0, 1.0, 1.0, 2.0, 0.0]}))
    >>> _ = score_file(folder / "rows.parquet", folder / "scored.parquet")
    >>> select_file(folder / "scored.parquet", folder / "prompts.jsonl", budget=1, kind="prompts").describe("prompts.jsonl")
    'Selected 1 of 2 prompts (3 rows) by pacs into prompts.jsonl'

    ```

    The scored file is read twice for ``kind="rows"``: once for the prompts and their scores, once
    streaming every column through to the output, so memory holds the prompt column, not the rows.
    """
    _check_kind(kind)
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(scored_path)
    require_columns(schema, {prompt_column: "prompt_column"}, scored_path)
    if kind == "prompts":
        output_schema = prompt_schema(schema.field(prompt_column).type)
    else:
        output_schema = pa.schema([field for field in schema if field.name != SELECTION_RANK.name] + [SELECTION_RANK])
    with io.open_writer(output, output_schema, overwrite=overwrite) as writer:
        prompts = load_scored(scored_path, prompt_column, per_completion=False, progress=progress)
        selected = prompts.select(strategy, budget, threshold, seed)
        groups = prompts.groups
        if kind == "prompts":
            writer.write(prompts.prompt_table(selected))
        else:
            ranks = prompts.row_ranks(selected)
            del prompts  # the whole file is streamed again next: free the prompts and scores first
            _write_selected_rows(Path(scored_path), writer, ranks, progress)
    return SelectSummary(
        selected_prompts=int(selected.shape[0]),
        prompts=groups.num_groups,
        selected_rows=int(groups.sizes[selected].sum()),
        strategy=strategy,
    )


def _write_selected_rows(scored_path: Path, writer: io.BatchWriter, ranks: np.ndarray, progress: bool) -> None:
    """Stream the scored file again and write the rows of selected prompts (``ranks >= 0``), with their rank."""
    names = [name for name in writer.schema.names if name != SELECTION_RANK.name]
    start = 0
    with progress_bar(ranks.shape[0], "writing", enabled=progress) as bar:
        for batch in io.iter_batches(scored_path, names):
            row_rank = ranks[start : start + batch.num_rows]
            chosen = row_rank >= 0
            table = pa.Table.from_batches([batch]).filter(pa.array(chosen))
            writer.write(table.append_column(SELECTION_RANK, pa.array(row_rank[chosen])))
            start += batch.num_rows
            bar.update(batch.num_rows)
