"""``shfcas bench``: the engine against the pure-PyTorch baseline on random data, as a table.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--size" in CliRunner().invoke(app, ["bench", "--help"]).output
True

```
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import typer

from .. import scoring
from ..errors import ShfcasValueError
from ._common import reports_errors
from .app import app

__all__ = ["Timing", "time_engine_and_baseline"]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Best-of-``repeats`` seconds of one operation on the engine and on the baseline."""

    operation: str
    engine_s: float
    baseline_s: float
    max_abs_difference: float

    @property
    def speedup(self) -> float:
        return self.baseline_s / self.engine_s


def _best_time(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_engine_and_baseline(size: int, group_size: int, top: int, repeats: int, seed: int) -> list[Timing]:
    """Time score, grouped and global Kendall tau-b and top-k on ``size`` random completions."""
    from .. import baseline  # torch is slow to import; only this command needs it

    rng = np.random.default_rng(seed)
    logprobs, rewards = rng.normal(size=size), rng.normal(size=size)
    operations = {
        f"score ({size // group_size:,} prompts x {group_size})": (
            lambda module: module.score(logprobs, rewards, group_size),
            lambda result: result.pacs,
        ),
        "kendall_tau per prompt": (
            lambda module: module.kendall_tau(logprobs, rewards, group_size),
            lambda result: result,
        ),
        f"kendall_tau global (n = {size:,})": (
            lambda module: module.kendall_tau(logprobs, rewards),
            lambda result: np.array([result]),
        ),
        f"top_k (k = {top:,})": (lambda module: module.top_k(rewards, top), lambda result: result),
    }
    timings = []
    for name, (run, values) in operations.items():
        engine_s, engine_result = _best_time(functools.partial(run, scoring), repeats)
        baseline_s, baseline_result = _best_time(functools.partial(run, baseline), repeats)
        difference = np.abs(np.asarray(values(engine_result), dtype=np.float64) - values(baseline_result))
        timings.append(Timing(name, engine_s, baseline_s, float(np.nanmax(difference, initial=0.0))))
    return timings


@app.command("bench")
@reports_errors
def bench_command(
    size: Annotated[
        int, typer.Option("--size", min=2, help="Completions (log-prob, reward pairs) to score.")
    ] = 1_000_000,
    group_size: Annotated[
        int, typer.Option("--group-size", min=1, help="Completions per prompt; must divide --size.")
    ] = 8,
    top: Annotated[int, typer.Option("--top", min=0, help="k of the top-k timing.")] = 10_000,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Runs per timing; the best is shown.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random data.")] = 0,
) -> None:
    """Time the engine against the pure-PyTorch baseline (shfcas_fast.baseline) on random data."""
    if size % group_size:
        raise ShfcasValueError(f"--group-size {group_size} does not divide --size {size}")
    timings = time_engine_and_baseline(size, group_size, top, repeats, seed)
    width = max(len(timing.operation) for timing in timings)
    typer.echo(f"{'operation':<{width}}  {'engine ms':>10}  {'baseline ms':>11}  {'speedup':>8}  {'max |diff|':>10}")
    for timing in timings:
        typer.echo(
            f"{timing.operation:<{width}}  {timing.engine_s * 1e3:>10.2f}  {timing.baseline_s * 1e3:>11.2f}  "
            f"{timing.speedup:>7.1f}x  {timing.max_abs_difference:>10.2e}"
        )
