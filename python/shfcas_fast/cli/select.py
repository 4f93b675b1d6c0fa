"""``shfcas select``: the high-conflict prompts of a scored file, with all their completions.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--budget" in CliRunner().invoke(app, ["select", "--help"]).output
True

```
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..tables import select_file
from ..tables.select import OutputKind
from ._common import (
    BudgetOption,
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    ScoredArgument,
    SeedOption,
    StrategyOption,
    ThresholdOption,
    echo_summary,
    reports_errors,
)
from .app import app

__all__ = ["select_command"]


@app.command("select")
@reports_errors
def select_command(
    scored_path: ScoredArgument,
    output: OutputOption,
    strategy: StrategyOption = "pacs",
    budget: BudgetOption = None,
    threshold: ThresholdOption = None,
    seed: SeedOption = 0,
    kind: Annotated[
        OutputKind,
        typer.Option(
            "--as",
            help="rows: every completion of the selected prompts, all columns (for annotation); "
            "prompts: one row per selected prompt (a TRL prompt-only data set).",
            case_sensitive=False,
        ),
    ] = "rows",
    prompt_column: PromptColumnOption = "prompt",
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Select the highest-conflict prompts, with all their completions.

    Given both --budget and --threshold, the --budget highest prompts above the threshold. Every
    output row has its prompt's selection_rank (0 = selected first, i.e. highest conflict); rows
    keep the scored file's order.
    """
    summary = select_file(
        scored_path,
        output,
        strategy=strategy,
        budget=budget,
        threshold=threshold,
        seed=seed,
        kind=kind,
        prompt_column=prompt_column,
        overwrite=overwrite,
        progress=not quiet,
    )
    echo_summary(summary, output, quiet=quiet)
