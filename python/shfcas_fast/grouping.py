"""Group rows by prompt key, wherever in the table each prompt's rows are.

:func:`group_keys` numbers the distinct keys of ``n`` rows by first appearance and returns a
:class:`KeyGroups`: each row's prompt, the stable row order that makes every prompt's rows
contiguous, and the prompt sizes. The work runs in the compiled core with the interpreter released:
each key is hashed to 64 bits (strings and bytes straight from their Arrow or numpy buffers, integers
by value), rows are grouped by hash, and every row is then compared with its prompt's first key, so
two distinct keys that share a hash are still told apart. The keys are never copied into Python
objects; grouping needs about 24 bytes per row at its peak and keeps 8 (the row order).

Example:
```python
>>> import shfcas_fast
>>> groups = shfcas_fast.group_keys(["b", "a", "b", "c", "a"])
>>> groups.index.tolist(), groups.sizes.tolist(), groups.order.tolist()
([0, 1, 0, 2, 1], [2, 2, 1], [0, 2, 1, 4, 3])

```
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _core
from .errors import ShfcasTypeError, ShfcasValueError

__all__ = ["KeyGroups", "group_keys"]

#: Every bit of the hash is used; tests narrow it to force distinct keys onto one hash.
_FULL_HASH = (1 << 64) - 1
#: Integer dtypes the core reads in place; other integer widths are widened to int64 first.
_CORE_INT_DTYPES = (np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.uint64), np.dtype(np.uint32))


class KeyGroups:
    """How ``n`` rows fall into ``g`` prompts, numbered ``0 .. g - 1`` in order of first appearance.

    Made by :func:`group_keys` (which computes ``order``) and by keyed scoring (which computes
    ``index``); either one defines the other, computed on first use. Its arrays are read-only.

    Attributes:
        order: int64 ``[n]``, the stable row order that makes prompts contiguous: the rows of prompt
            0 first, then prompt 1, ..., each prompt's rows in their original order.
        index: int64 ``[n]``, the prompt of each row.
        sizes: int64 ``[g]``, rows per prompt.
        first_rows: int64 ``[g]``, the row where each prompt first appears (increasing); the key of
            prompt ``p`` is ``keys[first_rows[p]]``.
        contiguous: whether the rows are already grouped (``order`` is ``0 .. n - 1``), in which case
            scoring skips the reordering.
    """

    def __init__(
        self,
        *,
        sizes: np.ndarray,
        first_rows: np.ndarray,
        contiguous: bool,
        order: np.ndarray | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        if order is None and index is None:
            raise ShfcasValueError("KeyGroups needs order= or index=")
        self.sizes = sizes
        self.first_rows = first_rows
        self.contiguous = contiguous
        self._order = order
        self._index = index

    def __repr__(self) -> str:
        return f"KeyGroups({self.num_groups} prompts, {self.num_rows} rows, contiguous={self.contiguous})"

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = _read_only(_core.stable_group_order(self.index, self.num_groups))
        return self._order

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            index = np.empty(self.num_rows, dtype=np.int64)
            index[self.order] = np.repeat(np.arange(self.num_groups, dtype=np.int64), self.sizes)
            self._index = _read_only(index)
        return self._index

    @property
    def num_rows(self) -> int:
        return int((self._order if self._order is not None else self.index).shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """int64 ``[g + 1]``: prompt ``p`` holds positions ``offsets[p]:offsets[p + 1]`` of ``order``."""
        offsets = np.zeros(self.num_groups + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=offsets[1:])
        return offsets

    def grouped(self, values: np.ndarray) -> np.ndarray:
        """Per-row ``values`` (length ``n``) in prompt order: ``values[order]``."""
        return values if self.contiguous else values[self.order]

    def per_row(self, prompt_values: np.ndarray) -> np.ndarray:
        """Per-prompt ``prompt_values`` (length ``g``) spread to every row: ``prompt_values[index]``."""
        return prompt_values[self.index]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def group_keys(keys: Any) -> KeyGroups:
    """Group rows with equal prompt keys; prompts are numbered in order of first appearance.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> groups = shfcas_fast.group_keys(np.array([30, 10, 30, 30, 10]))
    >>> groups.index.tolist(), groups.sizes.tolist(), groups.first_rows.tolist()
    ([0, 1, 0, 0, 1], [3, 2], [0, 1])
    >>> rewards = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    >>> groups.grouped(rewards).tolist()  # prompt 0's rows, then prompt 1's
    [0.1, 0.3, 0.4, 0.2, 0.5]

    ```

    Args:
        keys: one prompt key per row, in any order: a 1-D numpy array (integers, ``S``/``U`` strings,
            ``datetime64``, or objects), a pyarrow ``Array``/``ChunkedArray`` (integers, string,
            large_string, binary, large_binary, dictionary-encoded and temporal types), a pandas or
            polars Series, a CPU torch integer tensor, or a list of ints, strings or bytes. Float keys
            are refused (equal-looking floats can differ); a null key raises an error naming its row.

    Returns:
        A :class:`KeyGroups`.
    """
    return _group(keys, "keys")


def _group(keys: Any, name: str, hash_mask: int = _FULL_HASH) -> KeyGroups:
    """:func:`group_keys` for argument ``name``; ``hash_mask`` narrows the hash (tests only)."""
    order, sizes, first_rows, contiguous = _core.group_keys(core_keys(keys, name), hash_mask)
    return groups_from_core(sizes, first_rows, contiguous, order=order)


def groups_from_core(
    sizes: np.ndarray,
    first_rows: np.ndarray,
    contiguous: bool,
    *,
    order: np.ndarray | None = None,
    index: np.ndarray | None = None,
) -> KeyGroups:
    """The :class:`KeyGroups` of arrays the core returned, made read-only."""
    return KeyGroups(
        sizes=_read_only(sizes),
        first_rows=_read_only(first_rows),
        contiguous=contiguous,
        order=None if order is None else _read_only(order),
        index=None if index is None else _read_only(index),
    )


#: Keys as the core reads them: an integer array, fixed-width strings as (data, width, strip_unit),
#: or Arrow string chunks as [(offsets, data)].
CoreKeys = np.ndarray | tuple[np.ndarray, int, int] | list[tuple[np.ndarray, np.ndarray]]

#: No keys at all, as the core reads them.
_NO_KEYS = np.zeros(0, dtype=np.int64)


def core_keys(keys: Any, name: str) -> CoreKeys:
    """``keys`` (anything :func:`group_keys` takes) as the core reads them, without copying where
    their buffers allow; errors name the argument ``name``.

    Equal keys of one call map to equal core keys, but a dictionary column is renumbered by its
    values' first appearance, so its core keys are not comparable across calls (batches): decode it
    first where they must be.
    """
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return _arrow_keys(keys, name)
    if isinstance(keys, np.ndarray):
        return _numpy_keys(keys, name)
    if isinstance(keys, (str, bytes, int, float)) or keys is None:
        raise ShfcasTypeError(
            f"{name} must hold one prompt key per row (a 1-D array or list), got a single "
            f"{type(keys).__name__}; for contiguous prompts of equal size pass group_sizes instead"
        )
    module = type(keys).__module__
    if module.startswith("torch"):
        if keys.device.type != "cpu":
            raise ShfcasTypeError(f"{name} is a torch tensor on {keys.device}; move it to the CPU first")
        return _numpy_keys(keys.detach().numpy(), name)
    if module.startswith("pandas"):
        if getattr(keys, "ndim", 1) != 1:
            raise ShfcasValueError(f"{name} must be 1-D (a Series or an array), got a {type(keys).__name__}")
        if isinstance(keys.dtype, np.dtype) and keys.dtype.kind in "iub":
            return _numpy_keys(keys.to_numpy(), name)
        return _arrow_keys(pa.array(keys, from_pandas=True), name)  # NaN and None become nulls
    if module.startswith("polars"):
        return _arrow_keys(keys.to_arrow(), name)
    try:  # lists, tuples and anything that speaks the Arrow C data interface
        array = pa.array(keys)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
        raise ShfcasTypeError(f"{name} must be a 1-D array of prompt keys (integers, strings or bytes): {err}") from None
    return _arrow_keys(array, name)


def num_core_keys(keys: CoreKeys) -> int:
    """Rows of keys as :func:`core_keys` gives them."""
    if isinstance(keys, np.ndarray):
        return int(keys.shape[0])
    if isinstance(keys, tuple):
        data, width, _ = keys
        return int(data.shape[0]) // width
    return sum(int(offsets.shape[0]) - 1 for offsets, _ in keys)


def _numpy_keys(keys: np.ndarray, name: str) -> CoreKeys:
    if keys.ndim != 1:
        raise ShfcasValueError(f"{name} must be 1-D, got shape {tuple(keys.shape)}")
    kind = keys.dtype.kind
    if kind in "iub":
        if keys.dtype not in _CORE_INT_DTYPES:
            keys = keys.astype(np.int64)
        return np.ascontiguousarray(keys)
    if kind in "SU":
        if keys.dtype.itemsize == 0:  # every key is the empty string
            return np.zeros(keys.shape[0], dtype=np.int64)
        native = np.ascontiguousarray(keys, dtype=keys.dtype.newbyteorder("="))
        # numpy pads S with zero bytes and U with zero code points, and ignores that padding in comparisons.
        unit = 1 if kind == "S" else 4
        return native.view(np.uint8), native.dtype.itemsize, unit
    if kind in "Mm":
        missing = np.isnat(keys)
        if missing.any():
            raise ShfcasValueError(f"{name}[{int(np.argmax(missing))}] is NaT; every row needs a prompt key")
        return np.ascontiguousarray(keys).view(np.int64)
    if kind == "O":
        try:
            array = pa.array(keys)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            raise ShfcasTypeError(f"{name} must hold integers, strings or bytes: {err}") from None
        return _arrow_keys(array, name)
    raise ShfcasTypeError(
        f"{name} has dtype {keys.dtype}; prompt keys must be integers, strings or bytes"
        + (" (floats that print alike can differ: cast whole-number ids to int)" if kind in "fc" else "")
    )


def _arrow_keys(keys: pa.Array | pa.ChunkedArray, name: str) -> CoreKeys:
    if keys.null_count:
        row = pc.index(pc.is_null(keys), True).as_py()
        raise ShfcasValueError(f"{name}[{row}] is null; every row needs a prompt key")
    kind = keys.type
    if pa.types.is_null(kind):  # an empty list (a non-empty null column failed above)
        return _NO_KEYS
    chunks = list(keys.chunks) if isinstance(keys, pa.ChunkedArray) else [keys]
    if pa.types.is_dictionary(kind):
        # Group the dictionary's values (one per distinct code), then the rows by their value's group.
        unified = pa.chunked_array(chunks, type=kind).unify_dictionaries()
        if not unified.num_chunks:
            return _NO_KEYS
        dictionary = unified.chunk(0).dictionary
        if dictionary.null_count:
            return _arrow_keys(unified.cast(kind.value_type), name)
        value_groups = _group(dictionary, name).index
        codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in unified.chunks])
        return value_groups[codes]
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        return [_byte_chunk(chunk, np.int32) for chunk in chunks]
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        return [_byte_chunk(chunk, np.int64) for chunk in chunks]
    if _is_view(kind) or pa.types.is_fixed_size_binary(kind):
        large = pa.large_binary() if pa.types.is_fixed_size_binary(kind) or "binary" in str(kind) else pa.large_string()
        return _arrow_keys(keys.cast(large), name)
    if pa.types.is_integer(kind):
        values = np.concatenate([chunk.to_numpy() for chunk in chunks]) if chunks else np.zeros(0, dtype=np.int64)
        return _numpy_keys(values, name)
    if pa.types.is_boolean(kind):
        return _arrow_keys(keys.cast(pa.int8()), name)
    if pa.types.is_temporal(kind):
        return _arrow_keys(keys.cast(pa.int64() if kind.bit_width == 64 else pa.int32()), name)
    raise ShfcasTypeError(f"{name} has Arrow type {kind}; prompt keys must be integers, strings or bytes")


def _byte_chunk(chunk: pa.Array, offset_type: type[np.signedinteger]) -> tuple[np.ndarray, np.ndarray]:
    """The (offsets, data) buffers of a string or binary chunk, without copying."""
    _, offsets, data = chunk.buffers()
    if offsets is None:  # an empty chunk may have no buffers
        return np.zeros(1, dtype=offset_type), np.zeros(0, dtype=np.uint8)
    offsets_array = np.frombuffer(offsets, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    data_array = np.zeros(0, dtype=np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)
    return offsets_array, data_array


def _is_view(kind: pa.DataType) -> bool:
    """Whether ``kind`` is string_view or binary_view (newer pyarrow only)."""
    return any(getattr(pa.types, test, lambda _: False)(kind) for test in ("is_string_view", "is_binary_view"))
