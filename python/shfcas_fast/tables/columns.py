"""Columns of completion tables: checking they exist, reading numbers, the NaN policy, the score columns.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast.tables.columns import float_column, finite_rows
>>> logprobs = float_column(pa.array([[-1.0, -0.5], [], None]), "logprob", allow_lists=True)
>>> logprobs.tolist()
[-1.5, 0.0, nan]
>>> finite_rows({"logprob": logprobs}, "omit").tolist()
[True, True, False]

```

Error messages name the Python keyword argument that chooses a column or a policy together with the
command-line option that sets it (``nan_policy='omit' (--nan-policy omit)``): one message serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ShfcasTypeError, ShfcasValueError

__all__ = [
    "NanPolicy",
    "SCORE_FIELDS",
    "PER_COMPLETION_FIELDS",
    "check_nan_policy",
    "argument_hint",
    "require_columns",
    "float_column",
    "finite_rows",
]

#: What to do with rows whose numbers are NaN, infinite or missing: ``"raise"`` stops at the first
#: such row, naming it; ``"omit"`` drops those rows.
NanPolicy = Literal["raise", "omit"]

#: The columns scoring appends (an input that already has them gets them replaced): per-prompt
#: z-scores of the log-prob and reward (population standard deviation), the signed conflict
#: ``pacs = z_reward - z_logprob``, the prompt's mean |PACS| (``group_conflict``), its Kendall tau-b
#: between log-probs and rewards and ``kendall_distance = (1 - tau_b) / 2``, and ``degenerate``
#: (fewer than two completions, or constant log-probs or rewards: such prompts score 0).
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


def argument_hint(keyword: str, value: str | None = None) -> str:
    """How to pass ``keyword`` (set to ``value``) in Python and on the command line.

    Example:
    ```python
    >>> argument_hint("nan_policy", "omit")
    "nan_policy='omit' (--nan-policy omit)"
    >>> argument_hint("reward_column")
    'reward_column= (--reward-column)'

    ```
    """
    option = "--" + keyword.replace("_", "-")
    if value is None:
        return f"{keyword}= ({option})"
    return f"{keyword}={value!r} ({option} {value})"


def check_nan_policy(nan_policy: str) -> NanPolicy:
    """``nan_policy`` if it is one of :data:`NanPolicy`; a ShfcasValueError otherwise."""
    if nan_policy not in get_args(NanPolicy):
        raise ShfcasValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    return nan_policy  # type: ignore[return-value]


def require_columns(schema: pa.Schema, columns: Mapping[str, str], source: object) -> None:
    """Check that ``source`` has every column; ``columns`` maps each name to the keyword choosing it.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> require_columns(pa.schema([("prompt", pa.string())]), {"answer": "completion_column"}, "rows.parquet")
    Traceback (most recent call last):
    ...
    shfcas_fast.errors.ShfcasValueError: rows.parquet has no column 'answer' (its columns: prompt); pass completion_column= (--completion-column) to choose another

    ```
    """
    for name, keyword in columns.items():
        if name not in schema.names:
            available = ", ".join(schema.names) or "none"
            raise ShfcasValueError(
                f"{source} has no column {name!r} (its columns: {available}); "
                f"pass {argument_hint(keyword)} to choose another"
            )


def _is_numeric(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type)


def _is_numeric_list(data_type: pa.DataType) -> bool:
    list_types = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    return any(is_list(data_type) for is_list in list_types) and _is_numeric(data_type.value_type)


def float_column(column: pa.Array | pa.ChunkedArray, name: str, *, allow_lists: bool = False) -> np.ndarray:
    """float64 values of a numeric column (missing values become NaN).

    With ``allow_lists``, a list column of per-token numbers is summed per row (the sequence
    log-probability is the sum of its response tokens' log-probs); an empty list sums to 0.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if allow_lists and _is_numeric_list(column.type):
        tokens = pc.cast(pc.list_flatten(column), pa.float64()).to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(column).to_numpy()
        sums = np.bincount(rows, weights=tokens, minlength=len(column))
        if column.null_count:
            sums[pc.is_null(column).to_numpy(zero_copy_only=False)] = np.nan
        return sums
    if not _is_numeric(column.type):
        wanted = "numbers or lists of numbers" if allow_lists else "numbers"
        raise ShfcasTypeError(f"column {name!r} has type {column.type}; it must hold {wanted}")
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def finite_rows(values: Mapping[str, np.ndarray], nan_policy: NanPolicy, *, first_row: int = 0) -> np.ndarray | None:
    """The mask of rows to keep, or ``None`` when every value is finite.

    With ``nan_policy="raise"`` a non-finite value raises a ShfcasValueError naming its row and
    column; rows are numbered from ``first_row``, the row of the values' first row in their table.
    """
    # NaN and infinities survive a sum, so a finite sum clears a column in one cheap pass (an
    # overflowing sum merely falls through to the exact check).
    if all(np.isfinite(column.sum()) for column in values.values()):
        return None
    bad = np.zeros(len(next(iter(values.values()))), dtype=bool)
    for column in values.values():
        bad |= ~np.isfinite(column)
    if not bad.any():
        return None
    if nan_policy == "omit":
        return ~bad
    row = int(np.argmax(bad))
    name, column = next((name, column) for name, column in values.items() if not np.isfinite(column[row]))
    what = "missing or nan" if np.isnan(column[row]) else str(column[row])
    raise ShfcasValueError(
        f"row {first_row + row} (0-based): column {name!r} is {what}; "
        f"fix the input or pass {argument_hint('nan_policy', 'omit')}"
    )
