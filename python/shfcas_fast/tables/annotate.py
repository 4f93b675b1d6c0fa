"""Annotation tasks: one JSON line per completion, a prompt's completions together, an empty label.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast.tables import annotation_tasks
>>> table = pa.table({"prompt": ["p", "q", "p"], "completion": ["a", "b", "c"], "pacs": [1.0, 0.0, -1.0]})
>>> annotation_tasks(table).to_pylist()[0]
{'id': 0, 'prompt_id': 0, 'prompt': 'p', 'completion': 'a', 'score': None}

```

After annotation, :func:`~shfcas_fast.tables.pairs_file` turns the labelled file into preference pairs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import ShfcasValueError
from .columns import argument_hint, require_columns
from .grouping import group_rows

__all__ = ["TASK_FIELDS", "ExportSummary", "annotation_tasks", "export_file"]

#: The fields every task has (besides the label).
TASK_FIELDS = ("id", "prompt_id", "prompt", "completion")


def _check_task_columns(label_column: str, keep: Sequence[str]) -> list[str]:
    """``keep`` without repeats; a ShfcasValueError for a name that would overwrite a task field."""
    if label_column in TASK_FIELDS:
        raise ShfcasValueError(f"{argument_hint('label_column', label_column)} clashes with a field every task has")
    keep = list(dict.fromkeys(keep))
    clashing = [name for name in keep if name in (*TASK_FIELDS, label_column)]
    if clashing:
        raise ShfcasValueError(f"{argument_hint('keep', clashing[0])} clashes with a field every task has")
    return keep


def annotation_tasks(
    table: pa.Table,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    label_column: str = "score",
    keep: Sequence[str] = (),
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
    keep = _check_task_columns(label_column, keep)
    columns = {prompt_column: "prompt_column", completion_column: "completion_column"}
    require_columns(table.schema, {**columns, **{name: "keep" for name in keep}}, "table")
    groups = group_rows(table[prompt_column], prompt_column)
    rows = groups.contiguous(np.arange(table.num_rows, dtype=np.int64))
    tasks = {
        "id": rows,
        "prompt_id": groups.contiguous(groups.ids.astype(np.int64)),
        "prompt": table[prompt_column].take(pa.array(rows)),
        "completion": table[completion_column].take(pa.array(rows)),
        label_column: pa.nulls(table.num_rows, pa.float64()),
    }
    tasks.update({name: table[name].take(pa.array(rows)) for name in keep})
    return pa.table(tasks)


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """How many tasks (completions) of how many prompts were exported."""

    tasks: int
    prompts: int

    def describe(self, destination: object) -> str:
        """A one-line summary naming where the tasks went."""
        return f"Exported {self.tasks:,} completions of {self.prompts:,} prompts into {destination}"


def export_file(
    selected_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    label_column: str = "score",
    keep: Sequence[str] = (),
    overwrite: bool = False,
) -> ExportSummary:
    """Write the :func:`annotation_tasks` of a table file to ``output``, a ``.jsonl`` file.

    Example:
    ```python
    >>> import json, pathlib, tempfile
    >>> import pyarrow as pa
    >>> from shfcas_fast import io
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> io.write_table(folder / "selected.parquet", pa.table({"prompt": ["p", "p"], "completion": ["a", "b"]}))
    >>> export_file(folder / "selected.parquet", folder / "tasks.jsonl").describe("tasks.jsonl")
    'Exported 2 completions of 1 prompts into tasks.jsonl'
    >>> json.loads((folder / "tasks.jsonl").read_text().splitlines()[1])
    {'id': 1, 'prompt_id': 0, 'prompt': 'p', 'completion': 'b', 'score': None}

    ```
    """
    if io.output_format(output) != "jsonl":
        raise ShfcasValueError(f"{output}: annotation tools read JSON lines; name the output .jsonl")
    keep = _check_task_columns(label_column, keep)
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(selected_path)
    columns = {prompt_column: "prompt_column", completion_column: "completion_column"}
    require_columns(schema, {**columns, **{name: "keep" for name in keep}}, selected_path)
    with io.atomic_output(output, overwrite=overwrite) as temporary:
        table = io.read_table(selected_path, list(dict.fromkeys([*columns, *keep])))
        if table.num_rows == 0:
            raise ShfcasValueError(f"{selected_path} has no rows")
        tasks = annotation_tasks(table, prompt_column, completion_column, label_column, keep)
        with io.BatchWriter(temporary, tasks.schema, "jsonl") as writer:
            writer.write(tasks)
    num_prompts = int(tasks["prompt_id"][-1].as_py()) + 1  # tasks are in prompt_id order
    return ExportSummary(tasks=tasks.num_rows, prompts=num_prompts)

