"""``shfcas export``: selected completions as JSONL tasks for an annotation tool.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--label-column" in CliRunner().invoke(app, ["export", "--help"]).output
True

```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..tables import export_file
from ._common import (
    CompletionColumnOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    echo_summary,
    reports_errors,
)
from .app import app

__all__ = ["export_command"]


@app.command("export")
@reports_errors
def export_command(
    selected_path: Annotated[
        Path,
        typer.Argument(
            metavar="SELECTED", help="Output of `shfcas select` (or any table of completions).", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output file (.jsonl).", show_default=False)],
    label_column: Annotated[
        str,
        typer.Option(
            "--label-column",
            help="Name of the empty field the annotator fills in (read by `shfcas pairs --score-column`).",
        ),
    ] = "score",
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep", help="Also carry this column over (repeatable), e.g. --keep selection_rank.", show_default=False
        ),
    ] = None,
    prompt_column: PromptColumnOption = "prompt",
    completion_column: CompletionColumnOption = "completion",
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write one JSON line per completion: id, prompt_id, prompt, completion and an empty label.

    A prompt's completions are adjacent. After annotation, `shfcas pairs` turns the labelled file
    into preference pairs.
    """
    summary = export_file(
        selected_path,
        output,
        prompt_column=prompt_column,
        completion_column=completion_column,
        label_column=label_column,
        keep=keep or [],
        overwrite=overwrite,
    )
    echo_summary(summary, output, quiet=quiet)
