"""Group the rows of a table by a key column (the prompt), wherever its rows are, or as a stream.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast.tables.grouping import group_rows
>>> groups = group_rows(pa.array(["b", "b", "a", "b"]), "prompt")
>>> groups.sizes.tolist(), groups.contiguous(pa.array([10, 11, 12, 13]).to_numpy()).tolist()
([3, 1], [10, 11, 13, 12])

```

The engine scores contiguous groups. A table's rows of one prompt are usually adjacent but need not
be, so :func:`group_rows` numbers rows by group (in order of first appearance) and, only when some
group is split, stably reorders them to make every group contiguous; results are then gathered back
in table order. :class:`AdjacentGroups` instead cuts a stream of batches whose groups are already
adjacent, holding 8 bytes per group to refuse a key that comes back.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _core, io
from ..errors import ShfcasTypeError, ShfcasValueError
from ..grouping import KeyGroups, core_keys, group_keys
from ..scoring import ConflictScores, core_score_fields, score

__all__ = ["AdjacentGroups", "Groups", "group_hashed", "group_rows", "hash_prompts", "score_hashed", "score_rows"]

# Below this many rows per run of adjacent equal keys on average, hashing every key beats taking
# the run keys first (which copies them).
_MIN_MEAN_RUN = 4
# Every bit of the prompt hash is used; tests narrow it to force distinct prompts onto one hash.
_HASH_MASK = (1 << 64) - 1
# Rows scored by one core call in score_hashed: larger inputs are scored in buckets of about this
# many rows (by hash), so that the core's working memory (about 110 bytes per row) stays bounded.
_BUCKET_ROWS = 1 << 24
# Rows per step of the whole-array passes of score_hashed, so that their temporaries stay small.
_STEP_ROWS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Groups:
    """How ``n`` rows fall into ``g`` groups numbered by first appearance.

    Attributes:
        ids: int64 ``[n]``, the group of each row.
        sizes: int64 ``[g]``, rows per group.
        first_rows: int64 ``[g]``, the row where each group first appears.
        order: int64 ``[n]`` stable permutation that makes groups contiguous (group 0's rows first,
            in table order), or ``None`` when they already are.
    """

    ids: np.ndarray
    sizes: np.ndarray
    first_rows: np.ndarray
    order: np.ndarray | None

    @property
    def num_groups(self) -> int:
        return int(self.sizes.shape[0])

    def contiguous(self, values: np.ndarray) -> np.ndarray:
        """Per-row ``values`` reordered so that each group's rows are adjacent."""
        return values if self.order is None else values[self.order]


def group_rows(keys: pa.Array | pa.ChunkedArray, name: str) -> Groups:
    """Group rows with equal ``keys``; a null key raises a ShfcasValueError naming column ``name``.

    This module is the one place where tables are grouped by key: every function of this package
    calls this or :func:`score_rows`.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> groups = group_rows(pa.array(["b", "b", "a", "b"]), "prompt")
    >>> groups.ids.tolist(), groups.sizes.tolist(), groups.order.tolist()
    ([0, 0, 1, 0], [3, 1], [0, 1, 3, 2])

    ```

    A conversational prompt column (TRL's lists of ``role``/``content`` messages) is keyed by
    :func:`shfcas_fast.io.prompt_keys`: rows with equal messages form a group.
    """
    keys = _keys(keys, name)
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(ids=empty, sizes=empty, first_rows=empty, order=None)
    chunks = _nonempty_chunks(keys)
    run_starts = _run_starts(chunks)
    if _is_scattered(run_starts.shape[0], n):
        del run_starts  # as large as the row count: free it before hashing
        # Scattered rows: the core hashes every key.
        return _groups_of_keys(group_keys(pa.chunked_array(chunks)))
    return _groups_of_runs(chunks, run_starts, n)


def score_rows(
    keys: pa.Array | pa.ChunkedArray, logprob: np.ndarray, reward: np.ndarray, name: str
) -> tuple[ConflictScores, np.ndarray]:
    """Score rows grouped by ``keys`` (column ``name``, checked as in :func:`group_rows`).

    Returns the scores, per-completion fields in row order and per-prompt fields in order of first
    appearance, and the int64 prompt of each row. Scattered rows are grouped and scored in one core
    call, without reordering the table; runs of adjacent equal keys are grouped by one key per run.
    """
    keys = _keys(keys, name)
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return score(logprob, reward, empty), empty
    chunks = _nonempty_chunks(keys)
    run_starts = _run_starts(chunks)
    if _is_scattered(run_starts.shape[0], n):
        del run_starts
        keyed = score(logprob, reward, groups=pa.chunked_array(chunks))
        return keyed, keyed.prompt_index
    groups = _groups_of_runs(chunks, run_starts, n)
    if groups.order is None:
        return score(logprob, reward, groups.sizes), groups.ids
    key_groups = KeyGroups(
        sizes=groups.sizes, first_rows=groups.first_rows, contiguous=False, order=groups.order, index=groups.ids
    )
    return score(logprob, reward, groups=key_groups), groups.ids


def hash_prompts(keys: pa.Array | pa.ChunkedArray, name: str, *, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uint64 hashes of each key of column ``name`` (checked as in :func:`group_rows`,
    rows numbered from ``first_row`` in errors): the first to group by, the second to tell two
    distinct keys that share the first apart (see :func:`score_hashed`)."""
    keys = _keys(keys, name, first_row=first_row)
    if pa.types.is_dictionary(keys.type):  # hash the values: each batch has a dictionary of its own
        keys = keys.cast(keys.type.value_type)
    return _core.hash_keys(core_keys(keys, name), _HASH_MASK)


def group_hashed(hashes: np.ndarray, checks: np.ndarray) -> Groups | None:
    """Group rows by the first hash of :func:`hash_prompts` (``hashes``), or ``None`` when two distinct
    keys share it: every row's second hash (``checks``) is compared with its group's first row's."""
    run_starts = _distinct_runs(hashes)
    if run_starts is not None:  # each prompt's rows adjacent
        sizes, ids = _adjacent_groups(run_starts, hashes.shape[0])
        groups = Groups(ids=ids, sizes=sizes, first_rows=run_starts, order=None)
    else:
        groups = _groups_of_keys(group_keys(hashes))
    return groups if _checks_agree(checks, groups.ids, groups.first_rows) else None


def score_hashed(
    hashes: np.ndarray, checks: np.ndarray, logprob: np.ndarray, reward: np.ndarray
) -> tuple[ConflictScores, np.ndarray] | None:
    """Score rows grouped by a 64-bit hash of their key (the arrays of :func:`hash_prompts`).

    Returns what :func:`score_rows` returns, or ``None`` when two distinct keys share a hash: every
    row's second, independent hash (``checks``) is compared with its prompt's first row's. The keys
    themselves are not needed, so a table of any size is grouped in about 32 bytes per row plus
    the scores. Rows whose prompts are already adjacent go to the contiguous engine; scattered
    inputs of more than ``_BUCKET_ROWS`` rows are scored bucket by bucket, every prompt in one
    bucket. The results are the same.
    """
    n = hashes.shape[0]
    run_starts = _distinct_runs(hashes)
    if run_starts is not None:  # each prompt's rows adjacent: the contiguous engine, no partitioning
        sizes, ids = _adjacent_groups(run_starts, n)
        scores = score(logprob, reward, sizes)
        return (scores, ids) if _checks_agree(checks, ids, run_starts) else None
    num_buckets = 1 << max(0, int(np.ceil(np.log2(n / _BUCKET_ROWS))))
    if num_buckets == 1:
        arrays, (ids, sizes, first_rows, _) = _core.score_keys(hashes, logprob, reward, "all")
    else:
        z_l, z_r, pacs, ids = np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
        buckets = _buckets(hashes, num_buckets)
        per_prompt: list[tuple[np.ndarray, ...]] = []
        num_prompts = 0
        for bucket in range(num_buckets):
            rows = np.flatnonzero(buckets == bucket)
            (z_l[rows], z_r[rows], pacs[rows], *prompt_scores), (index, sizes, first_rows, _) = _core.score_keys(
                hashes[rows], logprob[rows], reward[rows], "all"
            )
            ids[rows] = index + num_prompts
            per_prompt.append((rows[first_rows], sizes, *prompt_scores))
            num_prompts += sizes.shape[0]
        del buckets
        # Number the prompts of all buckets by first appearance, as one call would have.
        first_rows, sizes, conflict, tau, degenerate = (np.concatenate(columns) for columns in zip(*per_prompt))
        by_first_row = np.argsort(first_rows)
        renumber = np.empty_like(by_first_row)
        renumber[by_first_row] = np.arange(by_first_row.shape[0])
        for start in range(0, n, _STEP_ROWS):
            ids[start : start + _STEP_ROWS] = renumber[ids[start : start + _STEP_ROWS]]
        first_rows, sizes = first_rows[by_first_row], sizes[by_first_row]
        arrays = (z_l, z_r, pacs, conflict[by_first_row], tau[by_first_row], degenerate[by_first_row])
    if not _checks_agree(checks, ids, first_rows):
        return None
    return ConflictScores(**core_score_fields(arrays), group_sizes=sizes), ids


def _distinct_runs(hashes: np.ndarray) -> np.ndarray | None:
    """Where each run of equal adjacent hashes starts, if no hash comes back after another; else None."""
    if not hashes.shape[0]:
        return np.zeros(0, dtype=np.int64)
    changes = hashes[1:] != hashes[:-1]
    if _is_scattered(int(np.count_nonzero(changes)) + 1, hashes.shape[0]):  # look no further
        return None
    run_starts = np.concatenate([[0], np.flatnonzero(changes) + 1])
    run_hashes = np.sort(hashes[run_starts])
    return None if np.any(run_hashes[1:] == run_hashes[:-1]) else run_starts


def _adjacent_groups(run_starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sizes, ids)`` of ``n`` rows whose groups are the runs starting at ``run_starts``."""
    sizes = np.diff(np.append(run_starts, n))
    return sizes, np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)


def _groups_of_keys(key_groups: KeyGroups) -> Groups:
    return Groups(
        ids=key_groups.index,
        sizes=key_groups.sizes,
        first_rows=key_groups.first_rows,
        order=None if key_groups.contiguous else key_groups.order,
    )


def _checks_agree(checks: np.ndarray, ids: np.ndarray, first_rows: np.ndarray) -> bool:
    """Whether every row's second hash equals that of its prompt's first row."""
    first_checks = checks[first_rows]
    return all(
        np.array_equal(checks[start : start + _STEP_ROWS], first_checks[ids[start : start + _STEP_ROWS]])
        for start in range(0, checks.shape[0], _STEP_ROWS)
    )


def _buckets(hashes: np.ndarray, num_buckets: int) -> np.ndarray:
    """The bucket of each row: the top bits of its hash, mixed again (the core partitions by the top
    bits of its own mix, so a bucket's rows still spread over all of its partitions)."""
    shift = np.uint64(64 - int(np.log2(num_buckets)))
    buckets = np.empty(hashes.shape[0], dtype=np.uint16)
    for start in range(0, hashes.shape[0], _STEP_ROWS):
        step = hashes[start : start + _STEP_ROWS] * np.uint64(0x9E37_79B9_7F4A_7C15)
        buckets[start : start + _STEP_ROWS] = step >> shift
    return buckets


def _nonempty_chunks(keys: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return [chunk for chunk in (keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]) if len(chunk)]


def _is_scattered(num_runs: int, n: int) -> bool:
    """Whether ``num_runs`` runs of equal adjacent keys over ``n`` rows are so short that grouping
    every row beats grouping one key per run."""
    return num_runs > n // _MIN_MEAN_RUN


def _groups_of_runs(chunks: list[pa.Array], run_starts: np.ndarray, n: int) -> Groups:
    """Groups of rows whose equal keys mostly come in runs: one key per run is hashed.

    Tables usually hold a prompt's completions together. The run keys are taken chunk by chunk (a
    take on the chunked column would first concatenate its strings).
    """
    offsets = np.cumsum([0] + [len(chunk) for chunk in chunks])
    run_keys = pa.concat_arrays(
        [
            chunk.take(pa.array(run_starts[(run_starts >= start) & (run_starts < stop)] - start))
            for chunk, start, stop in zip(chunks, offsets[:-1], offsets[1:], strict=True)
        ]
    )
    runs = group_keys(run_keys)
    run_lengths = np.diff(np.append(run_starts, n))
    if runs.num_groups == run_starts.shape[0]:  # no prompt comes back after another: already contiguous
        ids = np.repeat(np.arange(runs.num_groups, dtype=np.int64), run_lengths)
        return Groups(ids=ids, sizes=run_lengths, first_rows=run_starts, order=None)
    return _scattered(np.repeat(runs.index, run_lengths), runs.num_groups)


class AdjacentGroups:
    """Cut a stream of key batches into groups of adjacent equal keys, refusing a key that comes back.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> groups = AdjacentGroups("prompt")
    >>> groups.add(pa.array(["a", "a", "b"])).tolist()  # "b" may go on in the next batch
    [2]
    >>> groups.add(pa.array(["b", "c"])).tolist(), groups.finish().tolist()
    ([2], [1])
    >>> groups.add(pa.array(["a"]))
    Traceback (most recent call last):
    ...
    shfcas_fast.errors.ShfcasValueError: row 5 (0-based): column 'prompt' repeats 'a', first seen before other values; ...

    ```

    A key whose rows are not adjacent (it comes back after other keys) raises a ShfcasValueError
    naming the key and its row, as does a missing key; rows are numbered from the first key ever
    added. Memory grows by 8 bytes per group (one 64-bit hash of each closed group's key).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._rows = 0  # keys added so far
        self._open_key: pa.Scalar | None = None  # the last group's key, which the next batch may continue
        self._open_start = 0
        self._closed = _HashSet()

    def add(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 sizes of the groups that the next rows ``keys`` close, in order; the last group stays open."""
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        keys = _keys(keys, self.name, first_row=self._rows)
        if not len(keys):
            return np.zeros(0, dtype=np.int64)
        local_starts = _run_starts([keys], previous=self._open_key)
        starts = local_starts + self._rows
        self._rows += len(keys)
        if not starts.shape[0]:  # the open group goes on through the whole batch
            return np.zeros(0, dtype=np.int64)
        closed_keys = keys.take(pa.array(local_starts[:-1])).to_pylist()
        closed_starts = starts[:-1]
        if self._open_key is not None:
            closed_keys.insert(0, self._open_key.as_py())
            closed_starts = np.insert(closed_starts, 0, self._open_start)
        self._refuse_seen(closed_keys, closed_starts)
        self._closed.add(_hashes(closed_keys))
        # The new open key is checked at once, so that a prompt that comes back is refused at its
        # first row, before any of its rows are handed on.
        open_key = keys[int(local_starts[-1])]
        self._refuse_seen([open_key.as_py()], starts[-1:])
        sizes = np.diff(np.append(closed_starts, starts[-1]))
        self._open_key, self._open_start = open_key, int(starts[-1])
        return sizes

    def finish(self) -> np.ndarray:
        """The size of the last group, now closed (empty if it was closed already or no rows were added)."""
        if self._open_key is None:
            return np.zeros(0, dtype=np.int64)
        self._closed.add(_hashes([self._open_key.as_py()]))
        self._open_key = None
        return np.array([self._rows - self._open_start], dtype=np.int64)

    def _refuse_seen(self, keys: list[object], first_rows: np.ndarray) -> None:
        """Raise if one of ``keys`` (runs of adjacent equal keys, in order) was closed before, or repeats."""
        hashes = _hashes(keys)
        repeated = self._closed.contains(hashes)
        _, first_index = np.unique(hashes, return_index=True)
        if first_index.shape[0] < hashes.shape[0]:
            repeated_in_batch = np.ones(hashes.shape[0], dtype=bool)
            repeated_in_batch[first_index] = False
            repeated |= repeated_in_batch
        if not repeated.any():
            return
        index = int(np.argmax(repeated))
        key = repr(keys[index])
        key = key if len(key) <= 80 else key[:77] + "..."
        raise ShfcasValueError(
            f"row {first_rows[index]} (0-based): column {self.name!r} repeats {key}, first seen before "
            "other values; streaming needs the rows of each prompt adjacent: score the table at once "
            "instead (score_table, or score_file without grouped=True: drop --grouped)"
        )


def _hashes(keys: list[object]) -> np.ndarray:
    """uint64 hashes of Python keys (Python's 64-bit hash: a false alarm is vanishingly unlikely)."""
    return np.fromiter((hash(key) for key in keys), dtype=np.int64, count=len(keys)).view(np.uint64)


class _HashSet:
    """A set of uint64 hashes held in sorted runs: 8 bytes per hash, plus one run of scratch space.

    Runs are merged like a binary counter (a new run absorbs smaller ones before it) up to
    ``_MAX_RUN`` hashes, so a lookup searches O(log n + n / _MAX_RUN) sorted runs and a merge never
    copies more than ``2 * _MAX_RUN`` hashes (16 MiB) at once.
    """

    _MAX_RUN = 1 << 20

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    @property
    def nbytes(self) -> int:
        """Bytes held: 8 per hash."""
        return sum(run.nbytes for run in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """A bool mask of the ``hashes`` already in the set."""
        found = np.zeros(hashes.shape[0], dtype=bool)
        for run in self._runs:
            index = np.minimum(np.searchsorted(run, hashes), run.shape[0] - 1)
            found |= run[index] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        """Add distinct ``hashes`` that are not in the set yet."""
        if not hashes.shape[0]:
            return
        run = np.sort(hashes)
        while self._runs and self._runs[-1].shape[0] <= run.shape[0] < self._MAX_RUN:
            run = np.concatenate([self._runs.pop(), run])
            run.sort()
        self._runs.append(run)


def _keys(keys: pa.Array | pa.ChunkedArray, name: str, *, first_row: int = 0) -> pa.Array | pa.ChunkedArray:
    """The keys that group the rows of column ``name``: the column, or the string keys of conversations.

    Raises a ShfcasTypeError for another nested type, a ShfcasValueError naming the first row
    (numbered from ``first_row``) with a null key.
    """
    keys = io.prompt_keys(keys)
    if pa.types.is_nested(keys.type):
        raise ShfcasTypeError(
            f"column {name!r} has type {keys.type}; group keys must be strings, bytes, numbers or "
            "conversations (lists of role/content messages)"
        )
    if keys.null_count:
        row = first_row + pc.index(pc.is_null(keys), True).as_py()
        raise ShfcasValueError(f"row {row} (0-based): column {name!r} is missing; every row needs one")
    return keys


def _scattered(ids: np.ndarray, num_groups: int) -> Groups:
    """Groups from ids numbered by first appearance, sorting rows only if some group is split."""
    sizes = np.bincount(ids, minlength=num_groups).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if np.all(ids[1:] >= ids[:-1]):
        return Groups(ids=ids, sizes=sizes, first_rows=starts, order=None)
    order = _core.stable_group_order(ids.astype(np.int64, copy=False), num_groups)
    return Groups(ids=ids, sizes=sizes, first_rows=order[starts], order=order)


def _run_starts(chunks: list[pa.Array], previous: pa.Scalar | None = None) -> np.ndarray:
    """The int64 rows where a run of equal adjacent keys starts, across chunk boundaries.

    ``previous`` is the key just before the first chunk, if any: row 0 starts a run only if it differs.
    """
    starts = []
    offset = 0
    for chunk in chunks:
        changes = pc.not_equal(chunk.slice(1), chunk.slice(0, len(chunk) - 1)).to_numpy(zero_copy_only=False)
        first_is_new = previous is None or previous != chunk[0]
        starts.append(np.flatnonzero(np.concatenate([[first_is_new], changes])) + offset)
        offset += len(chunk)
        previous = chunk[len(chunk) - 1]
    return np.concatenate(starts).astype(np.int64, copy=False)
