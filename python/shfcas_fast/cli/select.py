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
    EngineOption,
    PartitionsOption,
    RayAddressOption,
    refuse_with_ray,
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
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    partitions: PartitionsOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Select the highest-conflict prompts, with all their completions.

    Given both --budget and --threshold, the --budget highest prompts above the threshold. Every
    output row has its prompt's selection_rank (0 = selected first, i.e. highest conflict); rows
    keep the scored file's order.
    """
    if engine == "ray":
        # Ray scores on the way: SCORED may be the scored file or the raw completions.
        refuse_with_ray(as_prompts=kind == "prompts")
        from .. import ray as ray_engine

        ray_engine.connect(ray_address)
        ray_summary = ray_engine.select_file(
            scored_path,
            output,
            strategy=strategy,
            budget=budget,
            threshold=threshold,
            seed=seed,
            prompt_column=prompt_column,
            num_partitions=partitions,
            overwrite=overwrite,
        )
        echo_summary(ray_summary, output, quiet=quiet)
        return
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
