"""``shfcas demo``: the reproducible biased-proxy experiment (no download, CPU only).

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--seeds" in CliRunner().invoke(app, ["demo", "--help"]).output
True

```
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from ._common import reports_errors
from .app import app

__all__ = ["demo"]


class ConflictMeasure(str, enum.Enum):
    """The conflict measure the SHF-CAS arm selects by."""

    PACS = "pacs"
    KENDALL = "kendall"


@app.command("demo")
@reports_errors
def demo(
    output: Path = typer.Option(
        Path("shfcas-demo-report"), "-o", "--output", help="Report directory (results.json, plots, run artefacts)."
    ),
    seeds: int = typer.Option(
        10, "--seeds", min=1, help="Number of seeds; each trains its own base policy and proxy and runs every arm."
    ),
    budget: int = typer.Option(
        12, "--budget", min=1, help="Prompts sent to the gold oracle per arm (the same for random and SHF-CAS)."
    ),
    strategy: ConflictMeasure = typer.Option(
        ConflictMeasure.PACS, "--strategy", help="Conflict measure of the SHF-CAS arm.", case_sensitive=False
    ),
    fast: bool = typer.Option(
        False, "--fast", help="A much smaller configuration (seconds): for smoke tests, not for conclusions."
    ),
    threads: int = typer.Option(
        1,
        "--threads",
        min=1,
        help="CPU threads torch may use. 1 is fastest: the models are so small that more threads only wait on each other.",
    ),
) -> None:
    """Run no-extra-feedback vs random selection vs SHF-CAS on the embedded synthetic safety task."""
    # Imported here: torch, transformers and TRL are optional and slow to import.
    import datasets
    import transformers

    from ..loop.demo import DemoConfig, run_demo

    # Hundreds of sub-second stages: their library progress bars would bury the results.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    if output.exists() and not output.is_dir():
        raise ValueError(f"{output} is a file; -o/--output names the report directory")
    config = DemoConfig(
        output_dir=str(output), num_seeds=seeds, budget=budget, strategy=strategy.value, fast=fast, num_threads=threads
    )
    report = run_demo(config)
    typer.echo(report.summary_table())
    typer.echo(f"Full results: {output / 'results.json'}")
