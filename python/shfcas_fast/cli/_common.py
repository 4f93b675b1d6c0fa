"""What the commands share: option types, one-line error reporting, progress bars and column checks."""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import typer
from tqdm import tqdm

__all__ = [
    "NanPolicy",
    "InputArgument",
    "OutputOption",
    "OverwriteOption",
    "QuietOption",
    "PromptColumnOption",
    "CompletionColumnOption",
    "NanPolicyOption",
    "reports_errors",
    "progress_bar",
    "require_columns",
    "float_column",
    "finite_rows",
]


class NanPolicy(str, enum.Enum):
    """What to do with rows whose numbers are NaN, infinite or missing."""

    RAISE = "raise"
    OMIT = "omit"


InputArgument = Annotated[Path, typer.Argument(help="Input table: .parquet, .jsonl or .csv.", show_default=False)]
OutputOption = Annotated[
    Path, typer.Option("-o", "--output", help="Output file: .parquet or .jsonl.", show_default=False)
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it already exists.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")]
PromptColumnOption = Annotated[
    str, typer.Option("--prompt-column", help="Column holding the prompt; rows with equal prompts form a group.")
]
CompletionColumnOption = Annotated[str, typer.Option("--completion-column", help="Column holding the completion text.")]
NanPolicyOption = Annotated[
    NanPolicy,
    typer.Option(
        "--nan-policy",
        help="raise: stop at the first row with a NaN, infinite or missing number; omit: drop such rows.",
        case_sensitive=False,
    ),
]

# What a user can fix: bad files, bad values, existing outputs. Anything else is a bug and keeps its
# traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, pa.ArrowException)
_MAX_MESSAGE_CHARS = 400

Command = TypeVar("Command", bound=Callable[..., Any])


def reports_errors(command: Command) -> Command:
    """Turn user errors raised by ``command`` into a one-line message on stderr and exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FileExistsError as err:
            message = f"{err}; pass --overwrite to replace it"
        except _USER_ERRORS as err:
            message = " ".join(str(err).split()) or type(err).__name__
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
        typer.echo(f"Error: {message}", err=True)
        raise typer.Exit(code=1)

    return run  # type: ignore[return-value]


def progress_bar(total: int | None, description: str, *, quiet: bool) -> tqdm:
    """A row counter on stderr that only appears once the work has taken more than two seconds."""
    return tqdm(
        total=total,
        desc=description,
        unit="rows",
        unit_scale=True,
        file=sys.stderr,
        disable=quiet,
        delay=2.0,
        leave=False,
    )


def require_columns(schema: pa.Schema, columns: Mapping[str, str], source: Path) -> None:
    """Check that ``source`` has every column; ``columns`` maps each name to the option choosing it."""
    for name, option in columns.items():
        if name not in schema.names:
            available = ", ".join(schema.names) or "none"
            raise ValueError(
                f"{source} has no column {name!r} (its columns: {available}); pass {option} to choose another"
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
        raise TypeError(f"column {name!r} has type {column.type}; it must hold {wanted}")
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)


def finite_rows(values: Mapping[str, np.ndarray], nan_policy: NanPolicy, *, first_row: int = 0) -> np.ndarray | None:
    """The mask of rows to keep, or ``None`` when every value is finite.

    With ``NanPolicy.RAISE`` a non-finite value raises a ValueError naming its row and column; rows
    are numbered from ``first_row``, the file row of the values' first row when they are one batch.
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
    if nan_policy is NanPolicy.OMIT:
        return ~bad
    row = int(np.argmax(bad))
    name, column = next((name, column) for name, column in values.items() if not np.isfinite(column[row]))
    what = "missing or nan" if np.isnan(column[row]) else str(column[row])
    raise ValueError(
        f"row {first_row + row} (0-based): column {name!r} is {what}; fix the input or pass --nan-policy omit"
    )
