"""``shfcas pairs``: TRL preference pairs from oracle or human scores of grouped completions.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--score-column" in CliRunner().invoke(app, ["pairs", "--help"]).output
True

```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..tables import pairs_file
from ._common import (
    CompletionColumnOption,
    NanPolicyOption,
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    echo_summary,
    reports_errors,
)
from .app import app

__all__ = ["pairs_command"]


@app.command("pairs")
@reports_errors
def pairs_command(
    labelled_path: Annotated[
        Path,
        typer.Argument(
            metavar="LABELLED",
            help="Completions with oracle or human scores (.parquet, .jsonl or .csv).",
            show_default=False,
        ),
    ],
    output: OutputOption,
    score_column: Annotated[
        str, typer.Option("--score-column", help="Column with the oracle's or annotator's score of each completion.")
    ] = "score",
    cost: Annotated[
        bool,
        typer.Option("--cost", help="The score is a cost (lower is better, e.g. a cost model): prefer the lower one."),
    ] = False,
    prompt_column: PromptColumnOption = "prompt",
    completion_column: CompletionColumnOption = "completion",
    nan_policy: NanPolicyOption = "raise",
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Turn scored completions into preference pairs with columns prompt, chosen, rejected, margin.

    Within each prompt, every two completions with different scores make one pair; the better
    scored one is chosen and margin is the (positive) score difference. Unscored rows are an
    error unless --nan-policy omit.
    """
    summary = pairs_file(
        labelled_path,
        output,
        score_column=score_column,
        cost=cost,
        prompt_column=prompt_column,
        completion_column=completion_column,
        nan_policy=nan_policy,
        overwrite=overwrite,
    )
    echo_summary(summary, output, quiet=quiet)
