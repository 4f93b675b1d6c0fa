"""Group the rows of a table by a key column (the prompt), wherever in the file its rows are.

The engine scores contiguous groups. A file's rows of one prompt are usually adjacent but need not
be, so rows are numbered by group (in order of first appearance) and, only when some group is split,
stably reordered to make every group contiguous; results are then gathered back in file order.
:class:`AdjacentGroups` instead cuts a stream of batches whose groups are already adjacent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _core

__all__ = ["AdjacentGroups", "Groups", "group_rows"]

# Below this many rows per run of adjacent equal keys on average, hashing every key beats taking
# the run keys first (which copies them).
_MIN_MEAN_RUN = 4


@dataclasses.dataclass(frozen=True)
class Groups:
    """How ``n`` rows fall into ``g`` groups numbered by first appearance.

    Attributes:
        ids: int32 ``[n]``, the group of each row.
        sizes: int64 ``[g]``, rows per group.
        first_rows: int64 ``[g]``, the row where each group first appears.
        order: int64 ``[n]`` stable permutation that makes groups contiguous (group 0's rows first,
            in file order), or ``None`` when they already are.
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

    def positions(self) -> np.ndarray | None:
        """Where each row went in :meth:`contiguous` order (the inverse of ``order``), or ``None``.

        ``contiguous(values)[positions()[rows]]`` is ``values[rows]``: results computed on grouped
        rows come back to file order batch by batch, without a full-size copy per result.
        """
        if self.order is None:
            return None
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(self.order.shape[0], dtype=self.order.dtype)
        return inverse


def group_rows(keys: pa.Array | pa.ChunkedArray, name: str) -> Groups:
    """Group rows with equal ``keys``; a null key raises a ValueError naming column ``name``.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> groups = group_rows(pa.array(["b", "b", "a", "b"]), "prompt")
    >>> groups.ids.tolist(), groups.sizes.tolist(), groups.order.tolist()
    ([0, 0, 1, 0], [3, 1], [0, 1, 3, 2])

    ```
    """
    _require_keys(keys, name)
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(ids=np.zeros(0, dtype=np.int32), sizes=empty, first_rows=empty, order=None)
    chunks = [chunk for chunk in (keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]) if len(chunk)]
    run_starts = _run_starts(chunks)
    if run_starts.shape[0] > n // _MIN_MEAN_RUN:
        del run_starts  # as large as the row count: free it before hashing
        # Scattered rows: hash every key (Arrow keeps one dictionary across the chunks).
        encoded = pc.dictionary_encode(pa.chunked_array(chunks))
        ids = np.concatenate([chunk.indices.to_numpy() for chunk in encoded.chunks]).astype(np.int32, copy=False)
        return _scattered(ids, len(encoded.chunks[0].dictionary))
    # Files usually hold a prompt's completions together: hash one key per run of equal adjacent
    # keys, taken chunk by chunk (a take on the chunked column would first concatenate its strings).
    offsets = np.cumsum([0] + [len(chunk) for chunk in chunks])
    run_keys = pa.concat_arrays(
        [
            chunk.take(pa.array(run_starts[(run_starts >= start) & (run_starts < stop)] - start))
            for chunk, start, stop in zip(chunks, offsets[:-1], offsets[1:], strict=True)
        ]
    )
    encoded = pc.dictionary_encode(run_keys)
    num_groups = len(encoded.dictionary)
    run_lengths = np.diff(np.append(run_starts, n))
    if num_groups == run_starts.shape[0]:  # no prompt comes back after another: already contiguous
        ids = np.repeat(np.arange(num_groups, dtype=np.int32), run_lengths)
        return Groups(ids=ids, sizes=run_lengths, first_rows=run_starts, order=None)
    return _scattered(np.repeat(encoded.indices.to_numpy().astype(np.int32, copy=False), run_lengths), num_groups)


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

    ```

    A key whose rows are not adjacent (it comes back after other keys) raises a ValueError naming
    the row, as does a missing key; rows are numbered from the first key ever added.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._rows = 0  # keys added so far
        self._open_key: pa.Scalar | None = None  # the last group's key, which the next batch may continue
        self._open_start = 0
        # Hashes of the closed groups' keys: memory grows with the number of groups (not rows), the
        # price of catching a key that comes back. Python's 64-bit string hash makes a false alarm
        # vanishingly unlikely.
        self._closed: set[int] = set()

    def add(self, keys: pa.Array) -> np.ndarray:
        """int64 sizes of the groups that the next rows ``keys`` close, in order; the last group stays open."""
        _require_keys(keys, self.name, first_row=self._rows)
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
        self._close(closed_keys, closed_starts)
        sizes = np.diff(np.append(closed_starts, starts[-1]))
        self._open_key, self._open_start = keys[int(local_starts[-1])], int(starts[-1])
        return sizes

    def finish(self) -> np.ndarray:
        """The size of the last group, now closed (empty if no rows were added)."""
        if self._open_key is None:
            return np.zeros(0, dtype=np.int64)
        self._close([self._open_key.as_py()], np.array([self._open_start]))
        self._open_key = None
        return np.array([self._rows - self._open_start], dtype=np.int64)

    def _close(self, keys: list[object], first_rows: np.ndarray) -> None:
        hashes = [hash(key) for key in keys]
        if len(set(hashes)) < len(hashes) or not self._closed.isdisjoint(hashes):
            seen = set(self._closed)  # find the first repeat (a rare path: the copy does not matter)
            for key_hash, row in zip(hashes, first_rows, strict=True):
                if key_hash in seen:
                    raise ValueError(
                        f"row {row} (0-based): column {self.name!r} repeats a value first seen before other "
                        "values; --grouped needs the rows of each prompt adjacent: drop --grouped to score this file"
                    )
                seen.add(key_hash)
        self._closed.update(hashes)


def _require_keys(keys: pa.Array | pa.ChunkedArray, name: str, *, first_row: int = 0) -> None:
    """Raise a ValueError naming the first row (numbered from ``first_row``) with a null key."""
    if keys.null_count:
        row = first_row + pc.index(pc.is_null(keys), True).as_py()
        raise ValueError(f"row {row} (0-based): column {name!r} is missing; every row needs one")


def _scattered(ids: np.ndarray, num_groups: int) -> Groups:
    """Groups from ids numbered by first appearance, sorting rows only if some group is split."""
    sizes = np.bincount(ids, minlength=num_groups).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if np.all(ids[1:] >= ids[:-1]):
        return Groups(ids=ids, sizes=sizes, first_rows=starts, order=None)
    order = _core.stable_group_order(ids, num_groups)
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
