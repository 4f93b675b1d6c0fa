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

import numpy as np
import pyarrow as pa
import typer

from .. import io
from ._common import (
    CompletionColumnOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    reports_errors,
    require_columns,
)
from ._groups import group_rows
from .app import app

__all__ = ["annotation_tasks"]


def annotation_tasks(
    table: pa.Table, prompt_column: str, completion_column: str, label_column: str, keep: list[str]
) -> pa.Table:
    """One task per completion, a prompt's completions together, with an empty label to fill in.

    Example:
    ```python
    >>> import pyarrow as pa
    >>> table = pa.table({"prompt": ["p", "q", "p"], "completion": ["a", "b", "c"], "pacs": [1.0, 0.0, -1.0]})
    >>> tasks = annotation_tasks(table, "prompt", "completion", "score", [])
    >>> tasks.column_names
    ['id', 'prompt_id', 'prompt', 'completion', 'score']
    >>> tasks["id"].to_pylist(), tasks["prompt_id"].to_pylist(), tasks["score"].to_pylist()
    ([0, 2, 1], [0, 0, 1], [None, None, None])

    ```

    ``id`` is the row in ``table`` (to join labels back) and ``prompt_id`` numbers prompts by first
    appearance. Only ``keep`` columns are carried over: annotators should not see the model's
    log-probs, rewards or conflict scores, which would anchor their judgement.
    """
    groups = group_rows(table[prompt_column], prompt_column)
    rows = groups.contiguous(np.arange(table.num_rows, dtype=np.int64))
    columns = {
        "id": rows,
        "prompt_id": groups.contiguous(groups.ids.astype(np.int64)),
        "prompt": table[prompt_column].take(pa.array(rows)),
        "completion": table[completion_column].take(pa.array(rows)),
        label_column: pa.nulls(table.num_rows, pa.float64()),
    }
    columns.update({name: table[name].take(pa.array(rows)) for name in keep})
    return pa.table(columns)


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
    if io.output_format(output) != "jsonl":
        raise ValueError(f"{output}: annotation tools read JSON lines; name the output .jsonl")
    task_fields = {"id", "prompt_id", "prompt", "completion"}
    if label_column in task_fields:
        raise ValueError(f"--label-column {label_column} clashes with a field export always writes")
    keep = list(dict.fromkeys(keep or []))
    reserved = task_fields | {label_column}
    clashing = [name for name in keep if name in reserved]
    if clashing:
        raise ValueError(f"--keep {clashing[0]} clashes with a field export always writes")
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(selected_path)
    columns = {prompt_column: "--prompt-column", completion_column: "--completion-column"}
    require_columns(schema, {**columns, **{name: "--keep" for name in keep}}, selected_path)
    with io.atomic_output(output, overwrite=overwrite) as temporary:
        table = io.read_table(selected_path, list(dict.fromkeys([*columns, *keep])))
        if table.num_rows == 0:
            raise ValueError(f"{selected_path} has no rows")
        tasks = annotation_tasks(table, prompt_column, completion_column, label_column, keep)
        with io.BatchWriter(temporary, tasks.schema, "jsonl") as writer:
            writer.write(tasks)
    if not quiet:
        num_prompts = int(tasks["prompt_id"][-1].as_py()) + 1  # tasks are in prompt_id order
        typer.echo(f"Exported {tasks.num_rows:,} completions of {num_prompts:,} prompts into {output}", err=True)
