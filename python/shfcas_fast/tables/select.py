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
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import ShfcasTypeError, ShfcasValueError
from ..scoring import ConflictScores, PromptScores, Strategy, select
from ._progress import progress_bar
from .columns import PER_COMPLETION_FIELDS, SCORE_FIELDS, float_column, require_columns
from .grouping import Groups, group_hashed, group_rows, hash_prompts

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
# What a scored file's reader keeps of each batch's prompts (the column itself, or its hashes).
_Prompts = TypeVar("_Prompts")


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
        return _prompt_table(self.prompts.take(pa.array(self.groups.first_rows[selected])), self.groups, self.scores, selected)

    def row_ranks(self, selected: np.ndarray) -> np.ndarray:
        """int64 per row: the selection rank of the row's prompt, -1 where it was not selected."""
        return _row_ranks(self.groups, selected)


def _prompt_table(
    prompts: pa.Array | pa.ChunkedArray, groups: Groups, scores: PromptScores, selected: np.ndarray
) -> pa.Table:
    """The ``kind="prompts"`` table of the groups ``selected``, whose prompts (in that order) are ``prompts``."""
    columns = [
        prompts,
        pa.array(groups.sizes[selected], pa.int64()),
        *(pa.array(getattr(scores, name)[selected], pa.float64()) for name in _PER_PROMPT_FIELDS),
        pa.array(np.arange(selected.shape[0]), pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=prompt_schema(prompts.type))


def _row_ranks(groups: Groups, selected: np.ndarray) -> np.ndarray:
    """int64 per row: the selection rank of the row's group, -1 where it was not selected."""
    rank = np.full(groups.num_groups, -1, dtype=np.int64)
    rank[selected] = np.arange(selected.shape[0])
    return rank[groups.ids]


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
    per_prompt = _per_prompt_scores(groups, numbers, degenerate, source)
    if not per_completion:
        return ScoredPrompts(prompts=prompts, groups=groups, scores=PromptScores(**per_prompt))
    per_row = {name: groups.contiguous(numbers[name]) for name in PER_COMPLETION_FIELDS}
    return ScoredPrompts(prompts=prompts, groups=groups, scores=ConflictScores(**per_prompt, **per_row))


def _per_prompt_scores(
    groups: Groups, numbers: dict[str, np.ndarray], degenerate: np.ndarray, source: object
) -> dict[str, np.ndarray]:
    """The :class:`PromptScores` fields of grouped rows, checking that each group's rows agree (pops
    the per-prompt columns from ``numbers``)."""
    per_prompt = {name: _per_group(numbers.pop(name), groups, name, source) for name in _PER_PROMPT_FIELDS}
    per_prompt["degenerate"] = _per_group(degenerate, groups, "degenerate", source)
    per_prompt["group_sizes"] = groups.sizes
    return per_prompt


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
    prompt_chunks, numbers, flags = _read_scores(path, prompt_column, numeric, progress, lambda prompts, _: prompts)
    return _scored_prompts(pa.chunked_array(prompt_chunks), numbers, flags, prompt_column, path, per_completion)


def _load_hashed(path: Path, prompt_column: str, progress: bool) -> tuple[Groups, PromptScores] | None:
    """The grouping and per-prompt scores of a scored file, grouped by prompt hashes (no prompt text
    is held), or ``None`` when two distinct prompts share a 64-bit hash (see :func:`group_hashed`)."""
    _require_scores(io.read_schema(path), prompt_column, path)
    hashed, numbers, flags = _read_scores(
        path, prompt_column, _numeric_fields(per_completion=False), progress,
        lambda prompts, first_row: hash_prompts(prompts, prompt_column, first_row=first_row),
    )
    hashes, checks = (np.concatenate(parts) for parts in zip(*hashed))
    del hashed
    groups = group_hashed(hashes, checks)
    if groups is None:
        return None
    return groups, PromptScores(**_per_prompt_scores(groups, numbers, flags, path))


def _read_scores(
    path: str | os.PathLike[str],
    prompt_column: str,
    numeric: list[str],
    progress: bool,
    keep_prompts: Callable[[pa.Array, int], _Prompts],
) -> tuple[list[_Prompts], dict[str, np.ndarray], np.ndarray]:
    """Read a scored file's prompts (as ``keep_prompts(batch's prompts, its first row)`` per batch), its
    ``numeric`` columns and its degenerate flags; a file without rows raises."""
    prompt_parts, flag_chunks = [], []
    number_chunks: dict[str, list[np.ndarray]] = {name: [] for name in numeric}
    rows = 0
    with progress_bar(io.count_rows(path), "reading", enabled=progress) as bar:
        for batch in io.iter_batches(path, [prompt_column, "degenerate", *numeric]):
            prompt_parts.append(keep_prompts(batch.column(prompt_column), rows))
            flag_chunks.append(_flags(batch.column("degenerate"), path))
            for name in numeric:
                number_chunks[name].append(float_column(batch.column(name), name))
            rows += batch.num_rows
            bar.update(batch.num_rows)
    if not rows:
        raise ShfcasValueError(f"{path} has no rows")
    # One column at a time, so that each column's Arrow buffers go as soon as it is copied.
    numbers = {name: np.concatenate(number_chunks.pop(name)) for name in numeric}
    return prompt_parts, numbers, np.concatenate(flag_chunks)


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

    The scored file is read twice: once for the per-prompt scores and two 64-bit hashes of each
    prompt, by which rows are grouped (about 50 bytes per row, no prompt text), once streaming every
    column through to the output (``kind="prompts"``: the prompt column alone, for the prompts
    chosen). Should two distinct prompts share the first hash (told by the second), the rows are
    grouped by the prompts themselves, which holds the prompt column.
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
        groups, scores = _load_grouped(Path(scored_path), prompt_column, progress)
        selected = select(scores, budget=budget, threshold=threshold, strategy=strategy, seed=seed)
        summary = SelectSummary(
            selected_prompts=int(selected.shape[0]),
            prompts=groups.num_groups,
            selected_rows=int(groups.sizes[selected].sum()),
            strategy=strategy,
        )
        if kind == "prompts":
            prompts = _take_rows(Path(scored_path), prompt_column, groups.first_rows[selected])
            writer.write(_prompt_table(prompts, groups, scores, selected))
        else:
            ranks = _row_ranks(groups, selected)
            del groups, scores  # the whole file is streamed again next: free the grouping and scores first
            _write_selected_rows(Path(scored_path), writer, ranks, progress)
    return summary


def _load_grouped(scored_path: Path, prompt_column: str, progress: bool) -> tuple[Groups, PromptScores]:
    """The grouping and per-prompt scores of a scored file: by prompt hashes, or by the prompts
    themselves should two distinct prompts share a hash."""
    hashed = _load_hashed(scored_path, prompt_column, progress)
    if hashed is not None:
        return hashed
    exact = load_scored(scored_path, prompt_column, per_completion=False, progress=progress)
    return exact.groups, exact.scores


def _take_rows(path: Path, column: str, rows: np.ndarray) -> pa.ChunkedArray:
    """The values of ``column`` at ``rows`` (in that order), streaming the file's column once."""
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    parts = []
    start = 0
    for batch in io.iter_batches(path, [column]):
        low, high = np.searchsorted(sorted_rows, [start, start + batch.num_rows])
        parts.append(batch.column(0).take(pa.array(sorted_rows[low:high] - start)))
        start += batch.num_rows
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.shape[0])
    return pa.chunked_array(parts, io.read_schema(path).field(column).type).take(pa.array(inverse))


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
