"""What the commands share: option types, one-line errors and warnings, and the summary line."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, TypeVar

import typer

from ..errors import ShfcasError, ShfcasValueError
from ..scoring import Strategy
from ..tables.columns import NanPolicy

__all__ = [
    "map_large_allocations",
    "Engine",
    "EngineOption",
    "PartitionsOption",
    "RayAddressOption",
    "refuse_with_ray",
    "BudgetOption",
    "CompletionColumnOption",
    "InputArgument",
    "NanPolicyOption",
    "OutputOption",
    "OverwriteOption",
    "PromptColumnOption",
    "QuietOption",
    "ScoredArgument",
    "SeedOption",
    "StrategyOption",
    "ThresholdOption",
    "echo_summary",
    "reports_errors",
    "warnings_as_lines",
]

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
ScoredArgument = Annotated[
    Path,
    typer.Argument(metavar="SCORED", help="Output of `shfcas score` (.parquet, .jsonl or .csv).", show_default=False),
]
StrategyOption = Annotated[
    Strategy,
    typer.Option(
        "--strategy",
        help="pacs: highest mean |PACS|; kendall: highest Kendall distance; random: uniform (needs --budget).",
        case_sensitive=False,
    ),
]
BudgetOption = Annotated[
    int | None,
    typer.Option("--budget", min=0, help="Select at most this many prompts, highest first.", show_default=False),
]
ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Select prompts scoring above this (default without --budget: 1.0 for pacs, 0.5 for kendall).",
        show_default=False,
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed of --strategy random.")]
Engine = Literal["local", "ray"]
EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="local: this process; ray: Ray Data (pip install 'shfcas-fast[ray]'), for data sets larger "
        "than one machine.",
        case_sensitive=False,
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --engine ray: the cluster to join (e.g. auto); default RAY_ADDRESS, else a local Ray.",
        show_default=False,
    ),
]
PartitionsOption = Annotated[
    int | None,
    typer.Option(
        "--partitions", min=1, help="With --engine ray: hash partitions of the shuffle (default: by rows).",
        show_default=False,
    ),
]


def refuse_with_ray(**given: object) -> None:
    """Raise a ShfcasValueError naming the first option ``--engine ray`` cannot honour (given a truthy value)."""
    for option, value in given.items():
        if value:
            raise ShfcasValueError(f"--{option.replace('_', '-')} is not supported with --engine ray")


_MAX_MESSAGE_CHARS = 400
# Optional packages and the extra that installs each (a command that imports one names the extra
# instead of showing a traceback when it is missing).
_EXTRA_OF_PACKAGE = {
    "torch": "gpu",
    "triton": "gpu",
    "ray": "ray",
    "trl": "trl",
    "transformers": "trl",
    "datasets": "trl",
    "accelerate": "trl",
    "scipy": "demo",
    "tensorboard": "demo",
}

Command = TypeVar("Command", bound=Callable[..., Any])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _user_message(err: Exception) -> str | None:
    """The one-line message for an error the user can fix, or ``None`` for a bug (which keeps its traceback).

    User errors are the package's :class:`~shfcas_fast.errors.ShfcasError` (including Arrow's errors
    while reading a file, which :mod:`shfcas_fast.io` raises naming the file), OSError (files, disks),
    running out of memory, and a missing optional package.
    """
    if isinstance(err, FileExistsError):
        return f"{err}; pass --overwrite to replace it"
    if isinstance(err, (ShfcasError, OSError)):
        return _one_line(err)
    if isinstance(err, MemoryError):
        return f"out of memory ({_one_line(err)}); use a smaller input or free memory"
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] in _EXTRA_OF_PACKAGE:
        package = (err.name or "").split(".")[0]
        return (
            f"this command needs the optional package {package!r}, which is not installed: "
            f"pip install 'shfcas-fast[{_EXTRA_OF_PACKAGE[package]}]'"
        )
    return None


def reports_errors(command: Command) -> Command:
    """Turn user errors raised by ``command`` into a one-line message on stderr and exit code 1, and
    its user warnings into ``warning:`` lines (see :func:`warnings_as_lines`).

    Anything else is a bug in the package and keeps its traceback.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings_as_lines():
                return command(*args, **kwargs)
        except Exception as err:
            message = _user_message(err)
            if message is None:
                raise
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
        typer.echo(f"Error: {message}", err=True)
        raise typer.Exit(code=1)

    return run  # type: ignore[return-value]


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print each ``UserWarning`` raised inside as one ``warning: ...`` line on stderr, as it comes.

    Such as the engine's warning that a selection rule chose most prompts, or the note that a stale
    temporary output of a killed run was removed. Other warnings are shown as Python shows them.
    """
    with warnings.catch_warnings():
        show_as_python_does = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, UserWarning):
                typer.echo(f"warning: {' '.join(str(message).split())}", err=True)
            else:
                show_as_python_does(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def echo_summary(summary: Any, destination: object, *, quiet: bool) -> None:
    """Print ``summary.describe(destination)`` on stderr unless ``quiet``."""
    if not quiet:
        typer.echo(summary.describe(destination), err=True)


# glibc's mallopt parameter for the size above which malloc maps memory of its own.
_M_MMAP_THRESHOLD = -3


def map_large_allocations() -> None:
    """Make glibc return every freed block above 128 KiB to the system at once (its initial setting).

    By default glibc raises that threshold each time a large block is freed (up to 32 MiB), after
    which batch-sized buffers come from its heaps and their memory is kept when freed: streaming a
    file then grows resident memory with every batch (about 600 bytes per prompt of 8 rows,
    measured by ``benches/bench_cli.py --grouped-scaling``) instead of staying flat. Only the
    streaming ``score --grouped`` asks for it: mapping every large block costs the other commands
    about a fifth of their time (page faults) for little less memory.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 128 << 10)
