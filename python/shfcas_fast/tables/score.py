"""Conflict scores of every completion of a table, of a stream of batches, or of a file.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast.tables import score_table
>>> rows = pa.table({
...     "prompt": ["p", "q", "p", "q", "p"],
...     "logprob": [-3.0, -1.0, -2.0, -4.0, -1.0],
...     "reward": [0.0, 0.0, 1.0, 1.0, 2.0],
... })
>>> scored = score_table(rows)
>>> scored.column_names
['prompt', 'logprob', 'reward', 'z_logprob', 'z_reward', 'pacs', 'group_conflict', 'kendall_tau', 'kendall_distance', 'degenerate']
>>> scored["kendall_tau"].to_pylist()
[1.0, -1.0, 1.0, -1.0, 1.0]

```

Every function appends the columns of :data:`~shfcas_fast.tables.columns.SCORE_FIELDS` to the input's
columns (replacing score columns the input already has) and keeps the input's row order. The rows
with equal prompts form a group: z-scores are taken within the group (population standard
deviation), ``pacs = z_reward - z_logprob`` per completion, and per prompt the mean |PACS|
(``group_conflict``), Kendall's tau-b between log-probs and rewards and ``(1 - tau_b) / 2``. A
log-prob column may instead hold per-token log-probs, which are summed per row.

- :func:`score_table` scores a table in memory; the rows of a prompt may be anywhere.
- :class:`StreamingScorer` scores a stream of batches whose prompts' rows are adjacent, carrying
  the last prompt of a batch into the next; it serves ``datasets.Dataset.map``, record-batch
  loops, and :func:`score_file` with ``grouped=True``.
- :func:`score_file` scores a Parquet, JSONL or CSV file larger than memory into a Parquet or JSONL
  file, in one of two ways:

  - By default (two passes, rows of a prompt anywhere in the file): read only the prompt, log-prob
    and reward columns, batch by batch, reducing per-token log-prob lists to their sums and each
    prompt to two independent 64-bit hashes as they arrive; group rows by the first hash over the
    whole file and score; then stream the input again and write each batch with the scores
    appended. Pass 1 keeps 32 bytes per row (no prompt text), and the scores add about 32 more.
    Should two distinct prompts share the first hash (told by the second), the file is scored
    again grouping by the prompts themselves, which holds the prompt column in memory.
  - With ``grouped=True`` (one pass, the rows of each prompt adjacent): a :class:`StreamingScorer`
    over the file's batches. Memory is bounded by the batch size (and the largest prompt), plus 8
    bytes per prompt to catch a prompt that comes back after others, which raises.

  Both write the same rows, in the same order, with the same scores.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import ShfcasTypeError, ShfcasValueError
from ..scoring import ConflictScores, score
from ._progress import progress_bar
from .columns import (
    PER_COMPLETION_FIELDS,
    SCORE_FIELDS,
    NanPolicy,
    check_nan_policy,
    finite_rows,
    float_column,
    require_columns,
)
from .grouping import AdjacentGroups, hash_prompts, score_hashed, score_rows

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "ScoreSummary",
    "StreamingScorer",
    "default_batch_rows",
    "score_dataset",
    "score_file",
    "score_table",
    "scored_schema",
]

#: Decoded bytes per batch when streaming a Parquet file without a given batch size: a file of wide
#: rows (long completions) gets fewer rows per batch, so memory stays bounded by bytes, not rows.
DEFAULT_BATCH_BYTES = 64 << 20
# Rows read to estimate the decoded bytes per row.
_SAMPLE_ROWS = 4096


@dataclasses.dataclass
class ScoreSummary:
    """What has been scored: rows, prompts, degenerate prompts and rows omitted for non-finite values.

    Example:
    ```python
    >>> ScoreSummary(rows=8, prompts=2, degenerate=1).describe("scored.parquet")
    'Scored 8 rows in 2 prompts (1 degenerate) into scored.parquet'

    ```
    """

    rows: int = 0
    prompts: int = 0
    degenerate: int = 0
    omitted: int = 0

    def add(self, scores: ConflictScores, omitted: int) -> None:
        """Count the completions and prompts of ``scores`` and ``omitted`` dropped rows."""
        self.rows += scores.pacs.shape[0]
        self.prompts += scores.group_conflict.shape[0]
        self.degenerate += int(np.count_nonzero(scores.degenerate))
        self.omitted += omitted

    def describe(self, destination: object) -> str:
        """A one-line summary naming where the scores went."""
        omitted = f", {self.omitted:,} rows with non-finite values omitted" if self.omitted else ""
        return (
            f"Scored {self.rows:,} rows in {self.prompts:,} prompts ({self.degenerate:,} degenerate{omitted}) "
            f"into {destination}"
        )


def scored_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of the scores of a table of ``schema``: its columns, then the score columns.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> scored_schema(pa.schema([("prompt", pa.string()), ("pacs", pa.float32())])).names[:3]
    ['prompt', 'z_logprob', 'z_reward']

    ```
    """
    kept = [field for field in schema if field.name not in SCORE_FIELDS.names]
    return pa.schema(kept + list(SCORE_FIELDS))


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

    def require(self, schema: pa.Schema, source: object) -> None:
        """Raise unless ``schema`` (of ``source``) has the three columns."""
        keywords = {self.prompt: "prompt_column", self.logprob: "logprob_column", self.reward: "reward_column"}
        require_columns(schema, keywords, source)

    def values(
        self, rows: pa.RecordBatch | pa.Table, first_row: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """float64 log-probs (per-token lists summed) and rewards of ``rows``, and the mask of rows to keep
        (``None``: all); under ``nan_policy="raise"`` a non-finite value raises, naming its row
        (``first_row`` is the row number of ``rows[0]``).
        """
        logprob = float_column(rows.column(self.logprob), self.logprob, allow_lists=True)
        reward = float_column(rows.column(self.reward), self.reward)
        keep = finite_rows({self.logprob: logprob, self.reward: reward}, self.nan_policy, first_row=first_row)
        return logprob, reward, keep

    def require_rows(self, source: object, summary: ScoreSummary) -> None:
        """Raise a ShfcasValueError unless some row of ``source`` was scored."""
        if summary.rows:
            return
        if summary.omitted:
            raise ShfcasValueError(f"{source}: every row has a non-finite {self.logprob} or {self.reward}")
        raise ShfcasValueError(f"{source} has no rows")


def _with_scores(table: pa.Table, scores: ConflictScores, rows: slice, prompts: np.ndarray) -> pa.Table:
    """``table`` with the score columns appended: row ``i`` gets the scores of completion ``rows[i]``
    and of prompt ``prompts[i]``."""
    for field in SCORE_FIELDS:
        values = getattr(scores, field.name)[rows if field.name in PER_COMPLETION_FIELDS else prompts]
        table = table.append_column(field, pa.array(values, type=field.type))
    return table


def _as_column(values: Any, name: str, what: str) -> pa.Array | pa.ChunkedArray:
    """An Arrow array of a column given as an Arrow array, a sequence, or an array (numpy, torch on the CPU)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    try:
        if hasattr(values, "__array__") and not isinstance(values, np.ndarray):
            values = np.asarray(values)
        return pa.array(values)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise ShfcasTypeError(f"{what}: column {name!r} is not a 1-D column of values: {err}") from err


def _as_table(rows: Any, what: str) -> pa.Table:
    """An Arrow table of ``rows``: a table, a record batch, a DataFrame, or a mapping of column names to columns."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, Mapping):  # e.g. the batches of datasets.Dataset.map
        return pa.table({name: _as_column(rows[name], name, what) for name in rows.keys()})
    if not isinstance(rows, (list, tuple)):
        try:
            return pa.table(rows)  # pandas, and anything with the Arrow stream interface (polars)
        except TypeError:
            pass
    raise ShfcasTypeError(
        f"{what} must be a pyarrow Table or RecordBatch, a DataFrame, or a mapping of column names to "
        f"columns, got {type(rows).__name__}"
    )


def score_table(
    table: Any,
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    nan_policy: NanPolicy = "raise",
) -> pa.Table:
    """Score every completion of ``table``; the rows of a prompt may be anywhere in it.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> rows = pa.table({"prompt": ["a", "b", "a", "b"], "logprob": [-1.0, -2.0, -2.0, -1.0],
    ...                  "reward": [1.0, 1.0, 0.0, float("nan")]})
    >>> scored = score_table(rows, nan_policy="omit")
    >>> scored["pacs"].to_pylist(), scored["degenerate"].to_pylist()
    ([0.0, 0.0, 0.0], [False, True, False])

    ```

    Args:
        table: a pyarrow Table or RecordBatch, a pandas/polars DataFrame, or a mapping of column
            names to columns.
        prompt_column: rows with equal values here form a group (any order).
        logprob_column: each completion's log-probability under the policy, or a list of its
            response tokens' log-probs (summed).
        reward_column: the proxy reward (higher is better).
        nan_policy: ``"raise"`` (a ShfcasValueError naming the first row with a NaN, infinite or
            missing number) or ``"omit"`` (drop such rows).

    Returns:
        The input's columns (without score columns it already had) and the score columns, in the
        input's row order, without omitted rows.
    """
    table = _as_table(table, "table")
    columns = _ScoredColumns(prompt_column, logprob_column, reward_column, check_nan_policy(nan_policy))
    columns.require(table.schema, "table")
    input_names = [name for name in scored_schema(table.schema).names if name not in SCORE_FIELDS.names]
    logprob, reward, keep = columns.values(table, first_row=0)
    if keep is not None:
        table, logprob, reward = table.filter(pa.array(keep)), logprob[keep], reward[keep]
    if not table.num_rows:
        return scored_schema(table.schema).empty_table()
    scores, prompt_ids = score_rows(table[prompt_column], logprob, reward, prompt_column)
    return _with_scores(table.select(input_names), scores, slice(None), prompt_ids)


def score_dataset(
    dataset: Any,
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    nan_policy: NanPolicy = "raise",
) -> Any:
    """:func:`score_table` of a ``datasets.Dataset``, as a new ``Dataset`` (its features kept).

    Example:
    ```python
    >>> import datasets
    >>> rows = datasets.Dataset.from_dict({"prompt": ["a", "b", "a", "b"], "logprob": [-1.0, -1.0, -2.0, -3.0],
    ...                                    "reward": [0.0, 1.0, 1.0, 0.0]})
    >>> scored = score_dataset(rows.shuffle(seed=0))
    >>> sorted(zip(scored["prompt"], scored["kendall_tau"]))
    [('a', -1.0), ('a', -1.0), ('b', 1.0), ('b', 1.0)]

    ```

    The rows are scored in the data set's current order (after ``shuffle``, ``select`` or
    ``filter``); a prompt's rows may be anywhere. The result is held in memory.
    """
    from datasets import Dataset
    from datasets.table import InMemoryTable

    if not isinstance(dataset, Dataset):
        raise ShfcasTypeError(
            f"dataset must be a datasets.Dataset, got {type(dataset).__name__} (stream an IterableDataset "
            "through StreamingScorer.scored_batches)"
        )
    table = score_table(
        dataset.with_format("arrow")[:],
        prompt_column=prompt_column,
        logprob_column=logprob_column,
        reward_column=reward_column,
        nan_policy=nan_policy,
    )
    return Dataset(InMemoryTable(table))


class StreamingScorer:
    """Score a stream of batches whose prompts' rows are adjacent, as if the whole table were scored at once.

    Example (a record-batch loop; a prompt straddles the two batches):
    ```python
    >>> import pyarrow as pa
    >>> from shfcas_fast.tables import StreamingScorer
    >>> scorer = StreamingScorer()
    >>> first = pa.table({"prompt": ["a", "a", "b"], "logprob": [-1.0, -2.0, -1.0], "reward": [0.0, 1.0, 1.0]})
    >>> second = pa.table({"prompt": ["b", "c"], "logprob": [-3.0, -1.0], "reward": [0.0, 5.0]})
    >>> scorer.push(first)["prompt"].to_pylist()  # prompt "b" may go on in the next batch
    ['a', 'a']
    >>> scorer.push(second)["prompt"].to_pylist(), scorer.finish()["prompt"].to_pylist()
    (['b', 'b'], ['c'])
    >>> scorer.summary.describe("memory")
    'Scored 5 rows in 3 prompts (1 degenerate) into memory'

    ```

    Each :meth:`push` takes the next rows (a pyarrow Table or RecordBatch, a DataFrame, or a mapping
    of column names to columns, holding the prompt, log-prob and reward columns and any others) and
    returns the scored rows of every prompt those rows complete: the input's columns and the score
    columns of :func:`score_table`, in stream order. The last prompt of a batch stays open, since
    the next batch may continue it; :meth:`finish` scores it at the end. A prompt that comes back
    after other prompts raises a ShfcasValueError naming it and its row (rows are numbered from the
    stream's first row), as does a non-finite value under ``nan_policy="raise"``. Memory holds the
    open prompt's rows and 8 bytes per prompt seen.

    With ``datasets``, map the batches of an Arrow-formatted data set and append the last prompt;
    ``remove_columns`` lets ``map`` return fewer rows than it gets (the open prompt's rows come
    later), and ``load_from_cache_file=False`` makes sure every batch reaches the scorer, in order
    (no ``num_proc``):
    ```python
    >>> import datasets
    >>> from datasets.table import InMemoryTable
    >>> rows = datasets.Dataset.from_dict({"prompt": ["a", "a", "b", "b", "c"], "logprob": [-1.0, -2.0, -3.0, -1.0, -1.0],
    ...                                    "reward": [0.0, 1.0, 1.0, 0.0, 5.0]})
    >>> scorer = StreamingScorer()
    >>> scored = rows.with_format("arrow").map(scorer.push, batched=True, batch_size=3,
    ...     remove_columns=rows.column_names, load_from_cache_file=False)
    >>> scored = datasets.concatenate_datasets([scored.with_format(None), datasets.Dataset(InMemoryTable(scorer.finish()))])
    >>> [round(value, 6) for value in scored["pacs"]]
    [-2.0, 2.0, 2.0, -2.0, 0.0]

    ```

    :meth:`scored_batches` is the same as an iterator: ``for scored in scorer.scored_batches(reader)``
    over a ``pyarrow.RecordBatchReader``, or over the batches of a streamed data set,
    ``iterable_dataset.with_format("arrow").iter(batch_size=1024)``.
    """

    def __init__(
        self,
        *,
        prompt_column: str = "prompt",
        logprob_column: str = "logprob",
        reward_column: str = "reward",
        nan_policy: NanPolicy = "raise",
    ) -> None:
        self.columns = _ScoredColumns(prompt_column, logprob_column, reward_column, check_nan_policy(nan_policy))
        #: What has been scored so far.
        self.summary = ScoreSummary()
        self._groups = AdjacentGroups(prompt_column)
        self._input_schema: pa.Schema | None = None  # of the first batch: later ones must match it
        self._open: pa.Table | None = None  # rows of the open prompt, carried into the next batch
        self._open_first_row = 0  # stream row of the open prompt's first row

    def push(self, rows: Any) -> pa.Table:
        """Add the next ``rows``; returns the scored rows of the prompts they complete (possibly none)."""
        table = self._conform(_as_table(rows, "rows"))
        sizes = self._groups.add(table[self.columns.prompt])
        rows_so_far = table if self._open is None else pa.concat_tables([self._open, table])
        complete = int(sizes.sum())
        first_row = self._open_first_row
        self._open, self._open_first_row = rows_so_far.slice(complete), first_row + complete
        return self._score(rows_so_far.slice(0, complete), sizes, first_row)

    def finish(self) -> pa.Table:
        """Score the last prompt (the stream has ended); an empty table if there is none.

        Rows pushed afterwards start a new stream's prompts, still refusing the prompts seen before.
        """
        sizes = self._groups.finish()
        if self._open is None:
            return pa.table({}) if self._input_schema is None else scored_schema(self._input_schema).empty_table()
        rows, self._open = self._open, None
        first_row = self._open_first_row
        self._open_first_row += rows.num_rows
        return self._score(rows, sizes, first_row)

    def scored_batches(self, batches: Iterable[Any]) -> Iterator[pa.Table]:
        """Push every batch and finish: the scored rows, in order, as non-empty tables."""
        for rows in batches:
            scored = self.push(rows)
            if scored.num_rows:
                yield scored
        scored = self.finish()
        if scored.num_rows:
            yield scored

    def _conform(self, table: pa.Table) -> pa.Table:
        """``table`` with the first batch's columns and types; the first batch is checked and kept."""
        if self._input_schema is None:
            self.columns.require(table.schema, "the first batch")
            self._input_schema = table.schema
            return table
        if table.schema.equals(self._input_schema):
            return table
        expected = self._input_schema
        if sorted(table.schema.names) != sorted(expected.names):
            raise ShfcasValueError(
                f"a batch has the columns {table.schema.names}, the first batch {expected.names}; "
                "every batch needs the same columns"
            )
        try:
            return table.select(expected.names).cast(expected)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ShfcasTypeError(f"a batch's column types differ from the first batch's: {err}") from err

    def _score(self, table: pa.Table, sizes: np.ndarray, first_row: int) -> pa.Table:
        """Score ``table``, whole prompts of ``sizes`` rows whose first row is stream row ``first_row``."""
        assert self._input_schema is not None
        output_schema = scored_schema(self._input_schema)
        logprob, reward, keep = self.columns.values(table, first_row)
        omitted = 0
        if keep is not None:
            omitted = keep.shape[0] - int(np.count_nonzero(keep))
            kept_per_prompt = np.add.reduceat(keep.astype(np.int64), np.cumsum(sizes) - sizes)
            sizes = kept_per_prompt[kept_per_prompt > 0]  # a prompt with no row left is gone
            table, logprob, reward = table.filter(pa.array(keep)), logprob[keep], reward[keep]
        if not table.num_rows:
            self.summary.omitted += omitted
            return output_schema.empty_table()
        scores = score(logprob, reward, sizes)
        self.summary.add(scores, omitted)
        prompts = np.repeat(np.arange(sizes.shape[0]), sizes)
        input_names = output_schema.names[: -len(SCORE_FIELDS)]
        return _with_scores(table.select(input_names), scores, slice(None), prompts)


def default_batch_rows(path: str | os.PathLike[str], columns: list[str] | None = None) -> int:
    """Rows per batch so that a batch of ``columns`` of a Parquet file decodes to about
    :data:`DEFAULT_BATCH_BYTES` (between 1 and ``io.DEFAULT_BATCH_ROWS`` rows), estimated from its first rows.

    Other formats are read in blocks of bytes anyway: they get ``io.DEFAULT_BATCH_ROWS``.
    """
    if io.input_format(path) != "parquet":
        return io.DEFAULT_BATCH_ROWS
    batches = io.iter_batches(path, columns, batch_size=_SAMPLE_ROWS)
    sample = next(iter(batches), None)
    del batches  # closes the reader
    if sample is None or not sample.num_rows:
        return io.DEFAULT_BATCH_ROWS
    bytes_per_row = max(1.0, sample.nbytes / sample.num_rows)
    return int(min(io.DEFAULT_BATCH_ROWS, max(1, DEFAULT_BATCH_BYTES // bytes_per_row)))


def score_file(
    input_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    nan_policy: NanPolicy = "raise",
    batch_size: int | None = None,
    grouped: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ScoreSummary:
    """Score the completions of a Parquet, JSONL or CSV file into a Parquet or JSONL file.

    Example:
    ```python
    >>> import pathlib, tempfile
    >>> import pyarrow as pa
    >>> from shfcas_fast import io
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> rows = pa.table({"prompt": ["a", "a", "b", "b"], "logprob": [-1.0, -2.0, -1.0, -3.0],
    ...                  "reward": [0.0, 1.0, 0.0, 1.0]})
    >>> io.write_table(folder / "rows.parquet", rows)
    >>> score_file(folder / "rows.parquet", folder / "scored.parquet").describe("scored.parquet")
    'Scored 4 rows in 2 prompts (0 degenerate) into scored.parquet'
    >>> [round(value, 6) for value in io.read_table(folder / "scored.parquet", ["pacs"])["pacs"].to_pylist()]
    [-2.0, 2.0, -2.0, 2.0]

    ```

    The output holds the rows of :func:`score_table` (see the module docstring for the two ways the
    file is streamed); it is written to a temporary file renamed into place at the end, and an
    existing ``output`` is only replaced with ``overwrite``. ``grouped`` promises that the rows of
    each prompt are adjacent: one pass, memory bounded by the batch size; a prompt that comes back
    after other prompts raises a ShfcasValueError and nothing is written. ``batch_size`` is in rows
    (Parquet; default: :func:`default_batch_rows`). ``progress`` shows a row counter on stderr.
    Returns what was scored.
    """
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(input_path)
    columns = _ScoredColumns(prompt_column, logprob_column, reward_column, check_nan_policy(nan_policy))
    columns.require(schema, input_path)
    total = io.count_rows(input_path)
    output_schema = scored_schema(schema)
    input_names = output_schema.names[: -len(SCORE_FIELDS)]
    with io.open_writer(output, output_schema, overwrite=overwrite, dictionary_columns=input_names) as writer:
        if grouped:
            summary = _write_one_pass(Path(input_path), writer, columns, batch_size, total, progress)
        else:
            summary = _write_two_passes(Path(input_path), writer, columns, batch_size, total, progress)
    return summary


def _write_two_passes(
    input_path: Path,
    writer: io.BatchWriter,
    columns: _ScoredColumns,
    batch_size: int | None,
    total: int | None,
    progress: bool,
) -> ScoreSummary:
    """Score a file whose rows of a prompt may be anywhere (two passes, see the module docstring)."""
    hashes, checks, logprob, reward, drop = _read_hashed_columns(input_path, columns, batch_size, total, progress)
    scored = score_hashed(hashes, checks, logprob, reward)
    del hashes, checks, logprob, reward  # pass 2 needs the memory more
    if scored is None:  # two distinct prompts share a 64-bit hash: group by the prompts themselves
        return _write_two_passes_holding_prompts(input_path, writer, columns, batch_size, total, progress)
    scores, prompt_ids = scored
    everything_from_input = pa.table({})  # pass 2 reads every column again: none is held
    return _write_pass_2(
        input_path, writer, everything_from_input, drop, prompt_ids, scores, batch_size, total, progress
    )


def _write_two_passes_holding_prompts(
    input_path: Path,
    writer: io.BatchWriter,
    columns: _ScoredColumns,
    batch_size: int | None,
    total: int | None,
    progress: bool,
) -> ScoreSummary:
    """Score a file whose rows of a prompt may be anywhere, grouping by the prompts themselves."""
    scored_table, logprob, reward, drop = _read_scored_columns(input_path, columns, batch_size, total, progress)
    prompts = scored_table[columns.prompt]
    scores, prompt_ids = score_rows(
        prompts if drop is None else prompts.filter(pa.array(~drop)), logprob, reward, columns.prompt
    )
    del logprob, reward  # pass 2 needs the memory more
    return _write_pass_2(input_path, writer, scored_table, drop, prompt_ids, scores, batch_size, total, progress)


def _write_pass_2(
    input_path: Path,
    writer: io.BatchWriter,
    scored_table: pa.Table,
    drop: np.ndarray | None,
    prompt_ids: np.ndarray,
    scores: ConflictScores,
    batch_size: int | None,
    total: int | None,
    progress: bool,
) -> ScoreSummary:
    """Pass 2: write :func:`_scored_batches` and return what was scored."""
    with progress_bar(total, "writing", enabled=progress) as bar:
        for batch in _scored_batches(input_path, writer.schema, scored_table, drop, prompt_ids, scores, batch_size):
            writer.write(batch)
            bar.update(batch.num_rows)
    summary = ScoreSummary()
    summary.add(scores, omitted=0 if drop is None else int(np.count_nonzero(drop)))
    return summary


def _read_hashed_columns(
    input_path: Path, columns: _ScoredColumns, batch_size: int | None, total: int | None, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Pass 1, narrow: the two prompt hashes (:func:`hash_prompts`), log-prob and reward of each kept
    row, and the dropped-row mask (``None``: none dropped)."""
    parts: dict[str, list[np.ndarray]] = {"hashes": [], "checks": [], "logprob": [], "reward": []}
    keeps = []
    rows = 0
    batch_size = batch_size or default_batch_rows(input_path, columns.names)
    with progress_bar(total, "reading", enabled=progress) as bar:
        for batch in io.iter_batches(input_path, columns.names, batch_size=batch_size):
            logprob, reward, keep = columns.values(batch, first_row=rows)
            prompts = batch.column(columns.prompt)
            if keep is not None:
                prompts, logprob, reward = prompts.filter(pa.array(keep)), logprob[keep], reward[keep]
            hashes, checks = hash_prompts(prompts, columns.prompt, first_row=rows)
            for name, values in zip(parts, (hashes, checks, logprob, reward), strict=True):
                parts[name].append(values)
            keeps.append(np.ones(batch.num_rows, dtype=bool) if keep is None else keep)
            rows += batch.num_rows
            bar.update(batch.num_rows)
    kept = sum(values.shape[0] for values in parts["logprob"])
    columns.require_rows(input_path, ScoreSummary(rows=kept, omitted=rows - kept))
    drop = None if kept == rows else ~np.concatenate(keeps)
    del keeps
    # One array at a time, so that each one's batches go as soon as it is joined.
    hashes, checks, logprob, reward = (np.concatenate(parts.pop(name)) for name in list(parts))
    return hashes, checks, logprob, reward, drop


def _read_scored_columns(
    input_path: Path, columns: _ScoredColumns, batch_size: int | None, total: int | None, progress: bool
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray | None]:
    """Pass 1: the scored columns, the log-probs and rewards of kept rows, and the dropped-row mask.

    The returned table holds every row (the writer needs the raw columns); the arrays only kept ones.
    """
    batches, logprobs, rewards, keeps = [], [], [], []
    rows = 0
    batch_size = batch_size or default_batch_rows(input_path, columns.names)
    with progress_bar(total, "reading", enabled=progress) as bar:
        for batch in io.iter_batches(input_path, columns.names, batch_size=batch_size):
            logprob, reward, keep = columns.values(batch, first_row=rows)
            batches.append(batch)
            logprobs.append(logprob)
            rewards.append(reward)
            keeps.append(keep)
            rows += batch.num_rows
            bar.update(batch.num_rows)
    keep = None
    if any(keep is not None for keep in keeps):
        keep = np.concatenate(
            [np.ones(batch.num_rows, dtype=bool) if keep is None else keep for batch, keep in zip(batches, keeps)]
        )
    kept = rows if keep is None else int(np.count_nonzero(keep))
    columns.require_rows(input_path, ScoreSummary(rows=kept, omitted=rows - kept))
    logprob, reward = np.concatenate(logprobs), np.concatenate(rewards)
    if keep is None:
        return pa.Table.from_batches(batches), logprob, reward, None
    return pa.Table.from_batches(batches), logprob[keep], reward[keep], ~keep


def _scored_batches(
    input_path: Path,
    schema: pa.Schema,
    scored_table: pa.Table,
    drop: np.ndarray | None,
    prompt_ids: np.ndarray,
    scores: ConflictScores,
    batch_size: int | None,
) -> Iterator[pa.Table]:
    """Pass 2: the input's batches, without dropped rows, with the score columns appended (the
    scores of kept rows in row order, ``prompt_ids`` the prompt of each)."""
    input_names = schema.names[: -len(SCORE_FIELDS)]
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
        yield _with_scores(table, scores, kept, prompt_ids[kept])
        kept_start = kept.stop


def _input_slices(
    input_path: Path, input_names: list[str], scored_table: pa.Table, batch_size: int | None
) -> Iterator[tuple[int, pa.Table]]:
    """``(first row, batch of the input columns not read in pass 1)`` over the input, in order."""
    other = [name for name in input_names if name not in scored_table.column_names]
    if not other:  # nothing left to read: walk pass 1's rows
        step = batch_size or io.DEFAULT_BATCH_ROWS
        for start in range(0, scored_table.num_rows, step):
            yield start, scored_table.slice(start, step).select([])
        return
    start = 0
    batch_size = batch_size or default_batch_rows(input_path, other)
    for batch in io.iter_batches(input_path, other, batch_size=batch_size):
        yield start, pa.Table.from_batches([batch])
        start += batch.num_rows


def _write_one_pass(
    input_path: Path,
    writer: io.BatchWriter,
    columns: _ScoredColumns,
    batch_size: int | None,
    total: int | None,
    progress: bool,
) -> ScoreSummary:
    """Score a file whose rows of each prompt are adjacent with a :class:`StreamingScorer`."""
    scorer = StreamingScorer(
        prompt_column=columns.prompt,
        logprob_column=columns.logprob,
        reward_column=columns.reward,
        nan_policy=columns.nan_policy,
    )
    # Every column is read: the scored ones too, should one be among the replaced score columns.
    names = list(dict.fromkeys([*writer.schema.names[: -len(SCORE_FIELDS)], *columns.names]))
    batch_size = batch_size or default_batch_rows(input_path, names)
    with progress_bar(total, "scoring", enabled=progress) as bar:
        for batch in io.iter_batches(input_path, names, batch_size=batch_size):
            scored = scorer.push(batch)
            if scored.num_rows:
                writer.write(scored)
            bar.update(batch.num_rows)
        scored = scorer.finish()
        if scored.num_rows:
            writer.write(scored)
    columns.require_rows(input_path, scorer.summary)
    return scorer.summary
