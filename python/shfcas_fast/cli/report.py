"""``shfcas report``: summary.json, a Markdown or HTML page and PNG plots of a scored file.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--page" in CliRunner().invoke(app, ["report", "--help"]).output
True

```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ..report import report_folder, write_report
from ..scoring import ConflictScores
from ..tables import load_scored
from ._common import (
    BudgetOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    ScoredArgument,
    SeedOption,
    StrategyOption,
    ThresholdOption,
    reports_errors,
)
from .app import app

__all__ = ["report_command"]


@app.command("report")
@reports_errors
def report_command(
    scored_path: ScoredArgument,
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Report folder (created; an existing report is replaced with --overwrite, a folder holding other "
            "files never).",
            show_default=False,
        ),
    ],
    strategy: StrategyOption = "pacs",
    budget: BudgetOption = None,
    threshold: ThresholdOption = None,
    seed: SeedOption = 0,
    page: Annotated[
        Literal["md", "html"], typer.Option("--page", help="Format of the report page.", case_sensitive=False)
    ] = "md",
    prompt_column: PromptColumnOption = "prompt",
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Report counts, thresholds and plots of a scored file and of the selection the options make.

    Writes summary.json, report.md (or report.html), conflict_histogram.png, z_scatter.png and
    tau_distribution.png.
    """
    with report_folder(output, overwrite=overwrite, inputs=[scored_path]) as folder:
        scored = load_scored(scored_path, prompt_column, progress=not quiet)
        assert isinstance(scored.scores, ConflictScores)  # per-completion columns are read by default
        selected = scored.select(strategy, budget, threshold, seed)
        summary = write_report(
            folder,
            scored.scores,
            scored.groups.sizes,
            selected,
            strategy=strategy,
            budget=budget,
            threshold=threshold,
            seed=seed,
            source=str(scored_path),
            page=page,
        )
    if not quiet:
        counts = summary["counts"]
        typer.echo(
            f"Reported {counts['prompts']:,} prompts ({counts['selected_prompts']:,} selected) into {output}/", err=True
        )
