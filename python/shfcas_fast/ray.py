"""Conflict scoring and selection on Ray Data, for data sets larger than one machine.

Example:
```python
>>> import numpy as np, pyarrow as pa, ray
>>> import shfcas_fast.ray as shfcas_ray
>>> _ = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
>>> rng = np.random.default_rng(0)
>>> table = pa.table({"prompt": [f"p{i % 50}" for i in range(400)],  # prompts scattered over the rows
...                   "logprob": rng.normal(size=400), "reward": rng.normal(size=400)})
>>> scored = shfcas_ray.score_dataset(ray.data.from_arrow(table)).to_pandas()
>>> len(scored), list(scored.columns[-3:])
(400, ['kendall_tau', 'kendall_distance', 'degenerate'])
>>> chosen = shfcas_ray.select_dataset(ray.data.from_arrow(table), strategy="pacs", budget=3).to_pandas()
>>> len(chosen), sorted(set(chosen["selection_rank"]))  # 3 prompts of 8 completions
(24, [0, 1, 2])
>>> ray.shutdown()

```

Results equal the single-process engine's exactly: a data set is scored as if its rows, in the data
set's order, were grouped by prompt in order of first appearance and scored with
:func:`shfcas_fast.score` (a prompt's completions keep their order, so every sum is taken in the same
order), and :func:`select_dataset` chooses what :func:`shfcas_fast.select` chooses for the ``pacs``
and ``kendall`` strategies, ties going to the prompt that appears first.

How it runs: only narrow columns travel. Each input block becomes rows of (64-bit hash of the
prompt, row number, log-prob, reward, and the prompt itself on the first row of each prompt in the
block), which are hash-partitioned by the prompt hash so that every prompt lands whole in one
partition; each partition is scored with one engine call. Different prompts with equal hashes are
detected there exactly (by the prompts carried on the first rows) and told apart. :func:`score_dataset`
sorts the scores by row number and attaches them to the input blocks; :func:`select_dataset` takes
each partition's best prompts, merges them on the driver and filters the input in one pass.

Log-probabilities themselves are computed on GPU actors with :class:`PolicyLogprobs`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.block import Block, BlockAccessor

from . import io
from .errors import ShfcasTypeError, ShfcasValueError
from .scoring import ConflictScores, PromptScores, Strategy, score, select
from .tables.columns import PER_COMPLETION_FIELDS, SCORE_FIELDS, float_column

__all__ = [
    "SELECTION_RANK",
    "EngineSummary",
    "PolicyLogprobs",
    "add_policy_logprobs",
    "connect",
    "read_dataset",
    "score_dataset",
    "score_file",
    "select_dataset",
    "select_file",
    "write_dataset",
]

PathLike = str | os.PathLike[str]

# Columns of the narrow rows that are shuffled.
_HASH = "key_hash"  # uint64 hash of the prompt
_ROW = "row"  # int64 row number in the input
_LOGPROB = "logprob"
_REWARD = "reward"
# The prompt, on the first row of each prompt in an input block (and on every row of prompts whose
# hash another prompt of the block shares); null elsewhere. In per-prompt tables: the prompt where
# its hash is shared, else null.
_KEY = "key"
# Completions per prompt, in per-prompt tables (selection leaves out prompts below min_group_size).
_SIZE = "num_completions"

#: The rank of a selected prompt (0 = chosen first), on every row :func:`select_dataset` returns.
SELECTION_RANK = pa.field("selection_rank", pa.int64())
# Per-prompt scores that select_dataset appends to the selected rows.
_PROMPT_FIELDS = [field for field in SCORE_FIELDS if field.name not in PER_COMPLETION_FIELDS]
# A partition of about this many rows is scored in well under a second and about 1 GB of memory.
_ROWS_PER_PARTITION = 4_000_000
# Keyed hash of the prompt: fixed, so that hashes agree across processes and runs.
_HASH_KEY = "shfcas-fast-key0"


@dataclasses.dataclass(frozen=True)
class _Columns:
    """The input columns that are scored, and how many bits of the prompt hash are kept."""

    prompt: str
    logprob: str
    reward: str
    hash_bits: int = 64  # fewer only to make hashes collide in tests

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([self.prompt, self.logprob, self.reward]))


def score_dataset(
    ds: ray.data.Dataset,
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    num_partitions: int | None = None,
) -> ray.data.Dataset:
    """Every completion of ``ds`` with its conflict scores, in ``ds``'s row order.

    Example:
    ```python
    >>> import inspect, shfcas_fast.ray as shfcas_ray  # run on a cluster in the module's example
    >>> list(inspect.signature(shfcas_ray.score_dataset).parameters)[:2]
    ['ds', 'prompt_column']

    ```

    The returned data set holds ``ds``'s columns plus ``z_logprob``, ``z_reward``, ``pacs`` (per
    completion) and the prompt's ``group_conflict``, ``kendall_tau``, ``kendall_distance`` and
    ``degenerate`` (an input column of one of these names is replaced): the same columns and values,
    in the same row order, as ``shfcas score``. It is computed when this is called and held in the
    object store (``ds`` is read once; Ray spills to disk what does not fit in memory).

    Args:
        ds: rows of completions, in any order (a prompt's rows may be spread over every block).
        prompt_column: the prompt (string or integer); rows with equal values form one group.
        logprob_column: the completion's log-probability under the policy, or a list column of its
            response tokens' log-probabilities (summed).
        reward_column: the proxy reward (higher is better).
        num_partitions: partitions of the shuffle; by default the cluster's CPU count, or more so
            that a partition holds at most about 4M rows. Each prompt must fit one worker.
    """
    return _scored(ds, _checked_columns(ds, prompt_column, logprob_column, reward_column), num_partitions)


def _scored(ds: ray.data.Dataset, columns: _Columns, num_partitions: int | None) -> ray.data.Dataset:
    replaced = [name for name in SCORE_FIELDS.names if name in ds.columns() and name not in columns.names]
    blocks = _Blocks.of(ds.drop_columns(replaced) if replaced else ds)
    scores = _prompts_shuffled(blocks, columns, num_partitions).map_batches(
        functools.partial(_score_partition, starts=blocks.starts, per_prompt=False),
        batch_format="pyarrow",
        batch_size=None,
    )
    # Rows are numbered 0..n-1, so the sorted scores' blocks hold consecutive row ranges.
    sorted_scores = _Blocks.of(scores.sort(_ROW))
    scored = []
    for block, start, stop in zip(blocks.refs, blocks.starts[:-1], blocks.starts[1:], strict=True):
        first = int(np.searchsorted(sorted_scores.starts, start, side="right")) - 1
        last = int(np.searchsorted(sorted_scores.starts, stop, side="left"))
        skip = int(start - sorted_scores.starts[first])
        scored.append(_with_scores.remote(block, skip, *sorted_scores.refs[first:last]))
    return ray.data.from_arrow_refs(scored)


@ray.remote
def _with_scores(block: Block, skip: int, *scores: pa.Table) -> pa.Table:
    """``block`` with the score columns of its rows, which start ``skip`` rows into ``scores``."""
    table = BlockAccessor.for_block(block).to_arrow()
    replaced = [name for name in SCORE_FIELDS.names if name in table.column_names]
    table = table.drop_columns(replaced)
    rows = pa.concat_tables(scores).slice(skip, table.num_rows)
    for field in SCORE_FIELDS:
        table = table.append_column(field, rows[field.name])
    return table


def select_dataset(
    ds: ray.data.Dataset,
    *,
    strategy: Strategy = "pacs",
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    num_partitions: int | None = None,
) -> ray.data.Dataset:
    """Every completion of the prompts chosen for feedback, in ``ds``'s row order.

    Example:
    ```python
    >>> import inspect, shfcas_fast.ray as shfcas_ray  # run on a cluster in the module's example
    >>> list(inspect.signature(shfcas_ray.select_dataset).parameters)[:3]
    ['ds', 'strategy', 'budget']

    ```

    ``ds`` is scored on the way (as by :func:`score_dataset`; a file written by ``shfcas score``
    still has its log-prob and reward columns and gets the same scores). The strategies are those of
    :func:`shfcas_fast.select`, with the same choice for ``pacs`` and ``kendall``:

    - ``"pacs"`` / ``"kendall"``: prompts whose mean |PACS| / Kendall distance is above
      ``threshold`` (1.0 / 0.5 when neither a budget nor a threshold is given), the ``budget``
      highest if a budget is given; ties go to the prompt that appears first in ``ds``.
    - ``"random"``: ``budget`` non-degenerate prompts drawn from ``seed``: those with the smallest
      seeded hash of the prompt. The draw depends only on the prompts and the seed, not on how the
      data set is split or ordered (so it differs from the single-process draw, which depends on
      the order of the prompts).

    Degenerate prompts are never chosen. The result holds ``ds``'s columns plus the prompt's
    ``group_conflict``, ``kendall_tau``, ``kendall_distance`` and ``selection_rank`` (0 = chosen
    first: the highest score; for ``random``, the prompt that appears first). The selection is made
    when this is called, reading only the scored columns; the rows are read again, and filtered,
    when the result is consumed (``ds`` must read the same rows again).
    """
    select(_NO_PROMPTS, budget=budget, threshold=threshold, strategy=strategy, seed=seed)  # argument errors now
    columns = _checked_columns(ds, prompt_column, logprob_column, reward_column)
    rule = _SelectionRule(strategy=strategy, budget=budget, threshold=threshold, seed=seed)
    return _selected(ds, columns, rule, num_partitions)


def _selected(
    ds: ray.data.Dataset, columns: _Columns, rule: _SelectionRule, num_partitions: int | None
) -> ray.data.Dataset:
    blocks = _Blocks.of(ds.select_columns(columns.names))
    candidates = (
        _prompts_shuffled(blocks, columns, num_partitions)
        .map_batches(
            functools.partial(_score_partition, starts=blocks.starts, per_prompt=True),
            batch_format="pyarrow",
            batch_size=None,
        )
        .map_batches(rule.choose, batch_format="pyarrow", batch_size=None)
    )
    # Per-partition top-k merged on the driver: the global top-k is among the partitions' top-k.
    # (Ray drops empty blocks: with nothing chosen anywhere, no table comes back.)
    tables = ray.get(candidates.to_arrow_refs()) or [_score_partition(_NO_ROWS, starts=blocks.starts, per_prompt=True)]
    chosen = rule.choose(pa.concat_tables(tables))
    del blocks  # frees the input's scored columns in the object store
    replaced = [name for name in [*(f.name for f in _PROMPT_FIELDS), SELECTION_RANK.name] if name in ds.columns()]
    rows = _ordered(ds.drop_columns(replaced) if replaced else ds)
    return rows.map_batches(functools.partial(_selected_rows, chosen=chosen, columns=columns), batch_format="pyarrow")


# ---------------------------------------------------------------------------------------------------
# Narrow rows


def read_dataset(source: PathLike) -> ray.data.Dataset:
    """A Ray data set of the rows of a file, folder or glob (any input :mod:`shfcas_fast.io` reads).

    Parquet shards are read by Ray's workers; other formats (JSONL, CSV, Arrow, compressed text) are
    decoded on the driver by :func:`shfcas_fast.io.iter_batches` and handed to Ray.
    """
    files = io.source_files(source)
    if io.input_format(source) == "parquet":
        return ray.data.read_parquet([str(file) for file in files])
    return ray.data.from_arrow([pa.Table.from_batches([batch]) for batch in io.iter_batches(source)])


def write_dataset(ds: ray.data.Dataset, output: PathLike, *, overwrite: bool = False) -> int:
    """Stream the rows of ``ds`` into one ``.parquet`` or ``.jsonl`` file, atomically; returns the rows."""
    batches = cast(Iterator[pa.Table], iter(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
    first = next(batches, None)
    schema = first.schema if first is not None else ds.schema().base_schema
    rows = 0
    with io.open_writer(output, schema, overwrite=overwrite) as writer:
        for batch in itertools.chain([] if first is None else [first], batches):
            writer.write(batch)
            rows += batch.num_rows
    return rows


def connect(address: str | None = None) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``; ``RAY_ADDRESS`` when
    None), or start a local Ray on this machine when none is given or set; no-op if already joined."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


@dataclasses.dataclass(frozen=True)
class EngineSummary:
    """What a command run on Ray wrote: ``rows`` rows of ``action`` (``"scored"`` or ``"selected"``)."""

    rows: int
    action: str

    def describe(self, destination: object) -> str:
        """A one-line summary naming where the rows went."""
        return f"{self.action.capitalize()} {self.rows:,} rows with Ray into {destination}"


def score_file(
    source: PathLike,
    output: PathLike,
    *,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    num_partitions: int | None = None,
    overwrite: bool = False,
) -> EngineSummary:
    """``shfcas score --engine ray``: :func:`score_dataset` from a data set on disk into one file.

    Ray must be initialised (``ray.init``); the output equals the single-process ``shfcas score``.
    """
    io.check_output(output, overwrite=overwrite)
    scored = score_dataset(
        read_dataset(source),
        prompt_column=prompt_column,
        logprob_column=logprob_column,
        reward_column=reward_column,
        num_partitions=num_partitions,
    )
    return EngineSummary(rows=write_dataset(scored, output, overwrite=overwrite), action="scored")


def select_file(
    source: PathLike,
    output: PathLike,
    *,
    strategy: Strategy = "pacs",
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    prompt_column: str = "prompt",
    logprob_column: str = "logprob",
    reward_column: str = "reward",
    num_partitions: int | None = None,
    overwrite: bool = False,
) -> EngineSummary:
    """``shfcas select --engine ray``: :func:`select_dataset` from a data set on disk into one file."""
    io.check_output(output, overwrite=overwrite)
    chosen = select_dataset(
        read_dataset(source),
        strategy=strategy,
        budget=budget,
        threshold=threshold,
        seed=seed,
        prompt_column=prompt_column,
        logprob_column=logprob_column,
        reward_column=reward_column,
        num_partitions=num_partitions,
    )
    return EngineSummary(rows=write_dataset(chosen, output, overwrite=overwrite), action="selected")


def _checked_columns(ds: ray.data.Dataset, prompt: str, logprob: str, reward: str) -> _Columns:
    names = ds.columns()
    for argument, name in (("prompt_column", prompt), ("logprob_column", logprob), ("reward_column", reward)):
        if name not in names:
            raise ShfcasValueError(f"{argument}: the data set has no column {name!r} (it has {names})")
    return _Columns(prompt, logprob, reward)


def _ordered(ds: ray.data.Dataset) -> ray.data.Dataset:
    """``ds`` executed in its row order (blocks otherwise come out in the order they finish)."""
    ordered = ds.select_columns(ds.columns())  # a new data set, whose context is its own copy
    ordered.context.execution_options.preserve_order = True
    return ordered


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """A data set's blocks in its row order, held in the object store, and the row each starts at."""

    refs: list[Any]  # ObjectRefs of the blocks
    starts: np.ndarray  # int64, one more than ``refs``: the last is the row count

    @classmethod
    def of(cls, ds: ray.data.Dataset) -> _Blocks:
        refs: list[Any] = []
        counts: list[int] = []
        for bundle in _ordered(ds).iter_internal_ref_bundles():
            # A bundle can stand for part of a block; a final projection gives whole new blocks.
            assert not any(getattr(bundle, "slices", None) or ()), "a partial block reached the driver"
            refs.extend(bundle.block_refs)
            counts.extend(metadata.num_rows for metadata in bundle.metadata)
        starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        if not starts[-1]:
            raise ShfcasValueError("ds has no rows")
        return cls(refs=refs, starts=starts)

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])


def _prompts_shuffled(blocks: _Blocks, columns: _Columns, num_partitions: int | None) -> ray.data.Dataset:
    """The narrow rows of ``blocks``, hash-partitioned by prompt: each partition is one block of whole prompts."""
    partitions = _num_partitions(num_partitions, blocks.num_rows)
    return _narrow_rows(blocks, columns).repartition(partitions, keys=[_HASH])


def _narrow_rows(blocks: _Blocks, columns: _Columns) -> ray.data.Dataset:
    """The narrow rows of ``blocks``, block by block (computed as soon as this is called)."""
    narrow: list[Any] = [
        _narrow_block.remote(block, int(start), columns)
        for block, start in zip(blocks.refs, blocks.starts[:-1], strict=True)
    ]
    return ray.data.from_arrow_refs(narrow)


def _num_partitions(requested: int | None, num_rows: int) -> int:
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ShfcasValueError(f"num_partitions must be a positive integer, got {requested!r}")
        return requested
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus, math.ceil(num_rows / _ROWS_PER_PARTITION))


@ray.remote
def _narrow_block(block: Block, start: int, columns: _Columns) -> pa.Table:
    """The narrow rows of one input block, whose first row is row ``start``."""
    table = BlockAccessor.for_block(block).to_arrow()
    prompts = _PromptHashes.of(table.column(columns.prompt), columns)
    logprob = float_column(table.column(columns.logprob), columns.logprob, allow_lists=True)
    reward = float_column(table.column(columns.reward), columns.reward)
    for name, values in ((columns.logprob, logprob), (columns.reward, reward)):
        finite = np.isfinite(values)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ShfcasValueError(f"row {row} (0-based): column {name!r} is missing or not finite")
    return pa.table(
        {
            _HASH: prompts.row_hashes(),
            _ROW: np.arange(start, start + table.num_rows, dtype=np.int64),
            _LOGPROB: logprob,
            _REWARD: reward,
            _KEY: prompts.carried_keys(),
        }
    )


@dataclasses.dataclass(frozen=True)
class _PromptHashes:
    """The distinct prompts of a column, their 64-bit hashes, and each row's prompt."""

    values: pa.Array  # distinct prompts
    hashes: np.ndarray  # uint64, one per distinct prompt
    indices: np.ndarray  # each row's position in ``values``

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array, columns: _Columns) -> _PromptHashes:
        name = columns.prompt
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        kind = column.type
        if pa.types.is_integer(kind):
            column = column.cast(pa.int64())
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = column.cast(pa.string())
        else:
            raise ShfcasTypeError(f"prompt column {name!r} has type {kind}; it must hold strings or integers")
        if column.null_count:
            raise ShfcasValueError(f"prompt column {name!r} has a missing value; every row needs one")
        encoded = pc.dictionary_encode(column)
        values = encoded.dictionary
        # SipHash of the UTF-8 bytes (or of the integer), with a fixed key: equal in every process.
        hashes = pd.util.hash_array(values.to_numpy(zero_copy_only=False), hash_key=_HASH_KEY, categorize=False)
        hashes = hashes.astype(np.uint64, copy=False) & np.uint64((1 << columns.hash_bits) - 1)
        return cls(values=values, hashes=hashes, indices=encoded.indices.to_numpy(zero_copy_only=False))

    def row_hashes(self) -> np.ndarray:
        return self.hashes[self.indices]

    def carried_keys(self) -> pa.Array:
        """Each prompt on its first row (on all its rows if another prompt here has its hash), else null."""
        carried = np.zeros(self.indices.shape[0], dtype=bool)
        _, first_rows = np.unique(self.indices, return_index=True)
        carried[first_rows] = True
        _, first, counts = np.unique(self.hashes, return_index=True, return_counts=True)
        if (counts > 1).any():
            shared = np.isin(self.hashes, self.hashes[first[counts > 1]])
            carried |= shared[self.indices]
        keys = self.values.take(pa.array(self.indices))
        return pc.if_else(pa.array(carried), keys, pa.nulls(len(keys), keys.type))


# ---------------------------------------------------------------------------------------------------
# Scoring a partition


def _score_groups(logprob: np.ndarray, reward: np.ndarray, sizes: np.ndarray) -> ConflictScores:
    """The engine call on rows already contiguous by prompt (the one place the engine is called)."""
    return score(logprob, reward, sizes)


def _score_partition(table: pa.Table, *, starts: np.ndarray, per_prompt: bool) -> pa.Table:
    """Scores of every prompt of a partition (``per_prompt``), or of every row with its row number.

    ``starts`` are the input blocks' first rows, which tell the block a row comes from.
    """
    rows = table[_ROW].to_numpy()
    hashes = table[_HASH].to_numpy()
    ranks = _collision_ranks(table, starts)
    # Group by prompt; rows of a prompt in input order, so that sums run in the single-process order.
    order = np.lexsort((rows, hashes) if ranks is None else (rows, ranks, hashes))
    rows, hashes = rows[order], hashes[order]
    boundary = hashes[1:] != hashes[:-1]
    if ranks is not None:
        ranks = ranks[order]
        boundary |= ranks[1:] != ranks[:-1]
    group_starts = np.flatnonzero(np.concatenate([[True], boundary])) if rows.shape[0] else np.zeros(0, np.int64)
    sizes = np.diff(np.append(group_starts, rows.shape[0]))
    if rows.shape[0]:
        scores = _score_groups(table[_LOGPROB].to_numpy()[order], table[_REWARD].to_numpy()[order], sizes)
    else:  # an empty partition (fewer prompts than partitions)
        empty = np.zeros(0)
        scores = ConflictScores(empty, empty, empty, np.zeros(0, dtype=bool), empty, empty, empty)
    if per_prompt:
        prompts = {_HASH: pa.array(hashes[group_starts]), _ROW: pa.array(rows[group_starts])}
        key_type = table.schema.field(_KEY).type
        if ranks is None:
            prompts[_KEY] = pa.nulls(group_starts.shape[0], key_type)
        else:  # the prompt itself where a hash is shared, to find its rows again
            shared = np.isin(hashes[group_starts], hashes[group_starts][ranks[group_starts] > 0])
            keys = _row_keys(table, starts).take(pa.array(order[group_starts]))
            prompts[_KEY] = pc.if_else(pa.array(shared), keys, pa.nulls(len(keys), key_type))
        prompts[_SIZE] = pa.array(sizes, pa.int64())
        for field in _PROMPT_FIELDS:
            prompts[field.name] = pa.array(getattr(scores, field.name), field.type)
        return pa.table(prompts)
    prompt_of_row = np.repeat(np.arange(sizes.shape[0]), sizes)
    scored = {_ROW: pa.array(rows)}
    for field in SCORE_FIELDS:
        values = getattr(scores, field.name)
        per_row = values if field.name in PER_COMPLETION_FIELDS else values[prompt_of_row]
        scored[field.name] = pa.array(per_row, field.type)
    return pa.table(scored)


def _collision_ranks(table: pa.Table, starts: np.ndarray) -> np.ndarray | None:
    """Each row's rank among the different prompts of its hash (by prompt), or ``None`` when no hash is shared."""
    carried = table.filter(pc.is_valid(table[_KEY])).select([_HASH, _KEY])
    distinct = carried.group_by([_HASH, _KEY]).aggregate([])
    if distinct.num_rows == len(pc.unique(distinct[_HASH])):
        return None
    keys = _row_keys(table, starts)
    ranks = np.zeros(table.num_rows, dtype=np.uint32)
    hashes = table[_HASH].to_numpy()
    counts = distinct.group_by(_HASH).aggregate([([], "count_all")])
    for shared in counts.filter(pc.greater(counts["count_all"], 1))[_HASH].to_pylist():
        prompts = sorted(distinct.filter(pc.equal(distinct[_HASH], shared))[_KEY].to_pylist())
        rank_of = {prompt: rank for rank, prompt in enumerate(prompts)}
        for row in np.flatnonzero(hashes == shared):
            ranks[row] = rank_of[keys[int(row)].as_py()]
    return ranks


def _row_keys(table: pa.Table, starts: np.ndarray) -> pa.Array:
    """Every row's prompt where its hash is shared: a row without one takes that of the first row of
    its hash in the same input block (the narrow rows carry every prompt of a block whose hash is shared there)."""
    hashes = table[_HASH].to_numpy()
    blocks = np.searchsorted(starts, table[_ROW].to_numpy(), side="right") - 1
    keys = table[_KEY].combine_chunks() if isinstance(table[_KEY], pa.ChunkedArray) else table[_KEY]
    carried = np.flatnonzero(keys.is_valid().to_numpy(zero_copy_only=False))
    source = {(int(blocks[row]), int(hashes[row])): int(row) for row in carried[::-1]}
    take = np.array([source.get((int(block), int(key_hash)), -1) for block, key_hash in zip(blocks, hashes)])
    own = keys.is_valid().to_numpy(zero_copy_only=False)
    return keys.take(pa.array(np.where(own, np.arange(take.shape[0]), take)))


# ---------------------------------------------------------------------------------------------------
# Selection

_EMPTY = np.zeros(0)
_NO_PROMPTS = PromptScores(_EMPTY, _EMPTY, _EMPTY, np.zeros(0, dtype=bool), group_sizes=np.zeros(0, np.int64))
_NO_ROWS = pa.table(  # narrow rows of nothing
    {
        _HASH: pa.array([], pa.uint64()),
        _ROW: pa.array([], pa.int64()),
        _LOGPROB: _EMPTY,
        _REWARD: _EMPTY,
        _KEY: pa.array([], pa.string()),
    }
)


@dataclasses.dataclass(frozen=True)
class _SelectionRule:
    """A selection, applied to any table of per-prompt scores: each partition's, then their union's."""

    strategy: Strategy
    budget: int | None
    threshold: float | None
    seed: int

    def choose(self, prompts: pa.Table) -> pa.Table:
        """The chosen rows of ``prompts`` (one row per prompt), in selection order."""
        prompts = prompts.sort_by(_ROW)  # first appearance order: ties go to the earlier prompt
        if self.strategy == "random":
            eligible = np.flatnonzero(~prompts["degenerate"].to_numpy(zero_copy_only=False))
            draws = _mix(prompts[_HASH].to_numpy() ^ _mix(np.array([self.seed], dtype=np.uint64)))[eligible]
            chosen = np.sort(eligible[np.argsort(draws, kind="stable")[: self.budget]])
        else:
            scores = PromptScores(
                group_conflict=prompts["group_conflict"].to_numpy(),
                kendall_tau=prompts["kendall_tau"].to_numpy(),
                kendall_distance=prompts["kendall_distance"].to_numpy(),
                degenerate=prompts["degenerate"].to_numpy(zero_copy_only=False),
                group_sizes=prompts[_SIZE].to_numpy(),
            )
            chosen = select(scores, budget=self.budget, threshold=self.threshold, strategy=self.strategy)
        return prompts.take(pa.array(chosen, pa.int64()))


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a uniform-looking uint64 from each uint64."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _selected_rows(table: pa.Table, *, chosen: pa.Table, columns: _Columns) -> pa.Table:
    """The rows of ``table`` whose prompt was chosen, with its scores and selection rank."""
    prompts = _PromptHashes.of(table.column(columns.prompt), columns)
    chosen_hashes = chosen[_HASH].to_numpy()
    chosen_keys = chosen[_KEY].to_pylist()
    # The chosen prompt of each distinct prompt here (-1: none), by hash, and by the prompt itself
    # where different prompts share a hash.
    by_hash = {int(h): position for position, h in enumerate(chosen_hashes) if chosen_keys[position] is None}
    by_key = {key: position for position, key in enumerate(chosen_keys) if key is not None}
    position_of = np.array(
        [
            by_key.get(value, by_hash.get(int(key_hash), -1))
            for value, key_hash in zip(prompts.values.to_pylist(), prompts.hashes, strict=True)
        ],
        dtype=np.int64,
    )
    position = position_of[prompts.indices]
    keep = position >= 0
    rows = table.filter(pa.array(keep))
    picked = pa.array(position[keep], pa.int64())
    for field in _PROMPT_FIELDS:
        if field.name != "degenerate":  # always false on selected rows
            rows = rows.append_column(field, chosen[field.name].take(picked))
    return rows.append_column(SELECTION_RANK, picked)


# ---------------------------------------------------------------------------------------------------
# Log-probabilities on actors


class PolicyLogprobs:
    """For ``Dataset.map_batches``: each row's sequence log-probability under a causal LM.

    Example:
    ```python
    >>> import pyarrow as pa, torch, transformers
    >>> from shfcas_fast.ray import PolicyLogprobs
    >>> config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    >>> _ = torch.manual_seed(0)
    >>> logprobs = PolicyLogprobs(lambda: transformers.GPT2LMHeadModel(config))  # on an actor: a model path
    >>> batch = pa.table({"prompt_ids": [[1, 2], [3]], "completion_ids": [[4, 5, 6], [7]]})
    >>> logprobs(batch).column_names
    ['prompt_ids', 'completion_ids', 'logprob']

    ```

    Rows hold token ids: the prompt's and the completion's (as TRL tokenizes them). The
    log-probability is the sum over the completion's tokens of log pi(token | prompt, earlier tokens),
    computed by :func:`shfcas_fast.policy_logprobs` without materialising the logits. Ray constructs
    one instance per actor, so the model loads once per actor; give the actor a GPU with
    :func:`add_policy_logprobs` (or ``map_batches(..., num_gpus=1)``).

    Args:
        model: a model name or local path for ``transformers.AutoModelForCausalLM.from_pretrained``, or
            a function that returns the model (it must pickle, to reach the actors).
        prompt_ids_column, completion_ids_column: list columns of token ids.
        output_column: the float64 column appended (replaced if present).
        device: where the model runs; by default CUDA when the actor has a GPU, else the CPU.
        dtype: the weights' dtype when loading by name (e.g. ``torch.bfloat16``); log-probs
            accumulate in float32 regardless.
        micro_batch_size: sequences per forward pass.
        pad_token_id: the id put in padding positions (they are masked out).
    """

    def __init__(
        self,
        model: str | Callable[[], Any],
        *,
        prompt_ids_column: str = "prompt_ids",
        completion_ids_column: str = "completion_ids",
        output_column: str = "logprob",
        device: str | None = None,
        dtype: Any = None,
        micro_batch_size: int = 8,
        pad_token_id: int = 0,
    ) -> None:
        import torch
        import transformers

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded: Any  # a transformers model (its ``to`` is typed too narrowly for a device string)
        if isinstance(model, str):
            loaded = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        else:
            loaded = model()
        # Ray's contract for callable classes: the constructor prepares the actor's state.
        self.model = loaded.to(self.device).eval()
        self.prompt_ids_column = prompt_ids_column
        self.completion_ids_column = completion_ids_column
        self.output_column = output_column
        self.micro_batch_size = micro_batch_size
        self.pad_token_id = pad_token_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from .logprobs import policy_logprobs

        prompts = batch.column(self.prompt_ids_column).to_pylist()
        completions = batch.column(self.completion_ids_column).to_pylist()
        input_ids, attention_mask, response_mask = _padded(prompts, completions, self.pad_token_id)
        with torch.inference_mode():
            values = policy_logprobs(
                self.model,
                input_ids.to(self.device),
                attention_mask.to(self.device),
                response_mask.to(self.device),
                batch_size=self.micro_batch_size,
            )
        if self.output_column in batch.column_names:
            batch = batch.drop_columns([self.output_column])
        return batch.append_column(self.output_column, pa.array(values.double().cpu().numpy()))


def _padded(prompts: Iterable[list[int]], completions: Iterable[list[int]], pad_token_id: int) -> tuple[Any, ...]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` of prompt + completion."""
    import torch

    sequences = [(list(p or []), list(c or [])) for p, c in zip(prompts, completions, strict=True)]
    width = max((len(prompt) + len(completion) for prompt, completion in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(sequences):
        length = len(prompt) + len(completion)
        input_ids[row, :length] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, :length] = 1
        response_mask[row, len(prompt) : length] = 1
    return input_ids, attention_mask, response_mask


def add_policy_logprobs(
    ds: ray.data.Dataset,
    model: str | Callable[[], Any],
    *,
    num_gpus: float = 1.0,
    concurrency: int = 1,
    batch_size: int = 64,
    **options: Any,
) -> ray.data.Dataset:
    """``ds`` with each row's policy log-probability appended, computed on ``concurrency`` actors.

    Example:
    ```python
    >>> import inspect, shfcas_fast.ray as shfcas_ray  # runs on actors: see PolicyLogprobs
    >>> inspect.signature(shfcas_ray.add_policy_logprobs).parameters["num_gpus"].default
    1.0

    ```

    Each actor holds the model on ``num_gpus`` GPUs (0: on one CPU) and scores ``batch_size`` rows
    per call; ``options`` go to :class:`PolicyLogprobs` (column names, ``dtype``, ...).
    """
    resources = {"num_gpus": num_gpus} if num_gpus else {"num_cpus": 1}
    return ds.map_batches(
        PolicyLogprobs,
        fn_constructor_args=(model,),
        fn_constructor_kwargs=options,
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=concurrency,
        **resources,
    )
