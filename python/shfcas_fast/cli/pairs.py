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

import numpy as np
import pyarrow as pa
import typer

from .. import io
from ..pairs import preference_pair_indices
from ._common import (
    CompletionColumnOption,
    NanPolicy,
    NanPolicyOption,
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    finite_rows,
    float_column,
    reports_errors,
    require_columns,
)
from ._groups import group_rows
from .app import app

__all__ = ["preference_pairs"]


def preference_pairs(table: pa.Table, prompt_column: str, completion_column: str, scores: np.ndarray) -> pa.Table:
    """Every pair of a prompt's completions with different ``scores``, the higher-scored one chosen.

    Example:
    ```python
    >>> import numpy as np, pyarrow as pa
    >>> table = pa.table({"prompt": ["p", "q", "p"], "completion": ["a", "b", "c"]})
    >>> preference_pairs(table, "prompt", "completion", np.array([0.0, 1.0, 2.0])).to_pylist()
    [{'prompt': 'p', 'chosen': 'c', 'rejected': 'a', 'margin': 2.0}]

    ```

    ``scores`` has one value per row of ``table``; rows of one prompt need not be adjacent.
    """
    groups = group_rows(table[prompt_column], prompt_column)
    chosen, rejected, margin = preference_pair_indices(groups.contiguous(scores), groups.sizes)
    if groups.order is not None:  # indices into the grouped order -> rows of the table
        chosen, rejected = groups.order[chosen], groups.order[rejected]
    completions = table[completion_column]
    return pa.table(
        {
            "prompt": table[prompt_column].take(pa.array(chosen)),
            "chosen": completions.take(pa.array(chosen)),
            "rejected": completions.take(pa.array(rejected)),
            "margin": pa.array(margin, type=pa.float64()),
        }
    )


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
    nan_policy: NanPolicyOption = NanPolicy.RAISE,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Turn scored completions into preference pairs with columns prompt, chosen, rejected, margin.

    Within each prompt, every two completions with different scores make one pair; the better
    scored one is chosen and margin is the (positive) score difference. Unscored rows are an
    error unless --nan-policy omit.
    """
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(labelled_path)
    options = {
        prompt_column: "--prompt-column",
        completion_column: "--completion-column",
        score_column: "--score-column",
    }
    require_columns(schema, options, labelled_path)
    output_schema = pa.schema(
        [
            ("prompt", schema.field(prompt_column).type),
            ("chosen", schema.field(completion_column).type),
            ("rejected", schema.field(completion_column).type),
            ("margin", pa.float64()),
        ]
    )
    with io.open_writer(output, output_schema, overwrite=overwrite) as writer:
        table = io.read_table(labelled_path, list(options))
        if table.num_rows == 0:
            raise ValueError(f"{labelled_path} has no rows")
        scores = float_column(table[score_column], score_column)
        keep = finite_rows({score_column: scores}, nan_policy)
        if keep is not None:
            table, scores = table.filter(pa.array(keep)), scores[keep]
        pairs = preference_pairs(table, prompt_column, completion_column, -scores if cost else scores)
        writer.write(pairs.cast(output_schema))
    if not quiet:
        typer.echo(f"Wrote {pairs.num_rows:,} preference pairs from {table.num_rows:,} rows into {output}", err=True)
