"""Group the rows of a table by a key column (the prompt), wherever in the file its rows are.

The engine scores contiguous groups. A file's rows of one prompt are usually adjacent but need not
be, so rows are numbered by group (in order of first appearance) and, only when some group is split,
stably reordered to make every group contiguous; results are then scattered back to file order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Groups", "group_rows"]


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

    def to_file_order(self, values: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`contiguous`."""
        if self.order is None:
            return values
        restored = np.empty_like(values)
        restored[self.order] = values
        return restored


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
    if keys.null_count:
        row = pc.index(pc.is_null(keys), True).as_py()
        raise ValueError(f"row {row} (0-based): column {name!r} is missing; every row needs one")
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(ids=np.zeros(0, dtype=np.int32), sizes=empty, first_rows=empty, order=None)
    # Hash one key per run of equal adjacent keys rather than one per row: files usually hold a
    # prompt's completions together, so this hashes about 1/N of the strings.
    changes = pc.not_equal(keys.slice(1), keys.slice(0, n - 1))
    run_starts = np.flatnonzero(np.concatenate([[True], _to_bool_numpy(changes)]))
    run_lengths = np.diff(np.append(run_starts, n))
    encoded = pc.dictionary_encode(keys.take(pa.array(run_starts)))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    num_groups = len(encoded.dictionary)
    if num_groups == run_starts.shape[0]:
        ids = np.repeat(np.arange(num_groups, dtype=np.int32), run_lengths)
        return Groups(ids=ids, sizes=run_lengths.astype(np.int64), first_rows=run_starts.astype(np.int64), order=None)
    ids = np.repeat(encoded.indices.to_numpy().astype(np.int32, copy=False), run_lengths)
    sizes = np.bincount(ids, minlength=num_groups).astype(np.int64)
    order = _stable_argsort_small_ints(ids, num_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return Groups(ids=ids, sizes=sizes, first_rows=order[starts], order=order)


def _to_bool_numpy(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _stable_argsort_small_ints(ids: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of integers in ``[0, bound)``, with bound < 2**32.

    numpy sorts 16-bit integers with a linear-time radix sort but wider ones with timsort, so two
    stable 16-bit passes (low half, then high half) beat one ``argsort(kind="stable")``.
    """
    low = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    if bound <= 1 << 16:
        return low
    high = (ids[low] >> 16).astype(np.uint16)
    return low[np.argsort(high, kind="stable")]
