"""TRL preference pairs (prompt, chosen, rejected, margin) from oracle or human scores of completions.

Example:
```python
>>> import numpy as np, pyarrow as pa
>>> from shfcas_fast.tables import preference_pairs
>>> table = pa.table({"prompt": ["p", "q", "p"], "completion": ["a", "b", "c"]})
>>> preference_pairs(table, np.array([0.0, 1.0, 2.0])).to_pylist()
[{'prompt': 'p', 'chosen': 'c', 'rejected': 'a', 'margin': 2.0}]

```

Within each prompt, every two completions with different scores make one pair; the better scored
one is chosen and ``margin`` is the (positive) score difference.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa

from .. import io
from ..errors import ShfcasValueError
from ..pairs import preference_pair_indices
from .columns import NanPolicy, check_nan_policy, finite_rows, float_column, require_columns
from .grouping import group_rows

__all__ = ["PairsSummary", "pair_schema", "pairs_file", "preference_pairs"]


def pair_schema(prompt_type: pa.DataType, completion_type: pa.DataType) -> pa.Schema:
    """The columns of preference pairs: TRL's ``prompt, chosen, rejected`` and the ``margin``."""
    fields = [("prompt", prompt_type), ("chosen", completion_type), ("rejected", completion_type)]
    return pa.schema([*fields, ("margin", pa.float64())])


def preference_pairs(
    table: pa.Table, scores: np.ndarray, *, prompt_column: str = "prompt", completion_column: str = "completion"
) -> pa.Table:
    """Every pair of a prompt's completions with different ``scores``, the higher-scored one chosen.

    ``scores`` has one value per row of ``table`` (negate a cost, where lower is better); rows of
    one prompt need not be adjacent. Pairs are ordered by prompt (first appearance), then by row.
    """
    require_columns(table.schema, {prompt_column: "prompt_column", completion_column: "completion_column"}, "table")
    groups = group_rows(table[prompt_column], prompt_column)
    chosen, rejected, margin = preference_pair_indices(groups.contiguous(scores), groups.sizes)
    if groups.order is not None:  # indices into the grouped order -> rows of the table
        chosen, rejected = groups.order[chosen], groups.order[rejected]
    completions = table[completion_column]
    columns = [
        table[prompt_column].take(pa.array(chosen)),
        completions.take(pa.array(chosen)),
        completions.take(pa.array(rejected)),
        pa.array(margin, type=pa.float64()),
    ]
    return pa.Table.from_arrays(columns, schema=pair_schema(table[prompt_column].type, completions.type))


@dataclasses.dataclass(frozen=True)
class PairsSummary:
    """How many pairs came from how many (kept) rows."""

    pairs: int
    rows: int

    def describe(self, destination: object) -> str:
        """A one-line summary naming where the pairs went."""
        return f"Wrote {self.pairs:,} preference pairs from {self.rows:,} rows into {destination}"


def pairs_file(
    labelled_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    score_column: str = "score",
    cost: bool = False,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    nan_policy: NanPolicy = "raise",
    overwrite: bool = False,
) -> PairsSummary:
    """Write the :func:`preference_pairs` of a labelled table file to ``output`` (Parquet or JSONL).

    Example:
    ```python
    >>> import pathlib, tempfile
    >>> import pyarrow as pa
    >>> from shfcas_fast import io
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> io.write_table(folder / "labelled.jsonl", pa.table({"prompt": ["p", "p"], "completion": ["a", "b"],
    ...                                                     "score": [1.0, 0.0]}))
    >>> pairs_file(folder / "labelled.jsonl", folder / "pairs.jsonl").describe("pairs.jsonl")
    'Wrote 1 preference pairs from 2 rows into pairs.jsonl'

    ```

    ``score_column`` holds the oracle's or annotator's score of each completion; with ``cost`` a
    lower score is better. Rows without a finite score raise a ShfcasValueError naming the first
    one, unless ``nan_policy="omit"`` drops them.
    """
    nan_policy = check_nan_policy(nan_policy)
    io.check_output(output, overwrite=overwrite)
    schema = io.read_schema(labelled_path)
    keywords = {prompt_column: "prompt_column", completion_column: "completion_column", score_column: "score_column"}
    require_columns(schema, keywords, labelled_path)
    output_schema = pair_schema(schema.field(prompt_column).type, schema.field(completion_column).type)
    with io.open_writer(output, output_schema, overwrite=overwrite) as writer:
        table = io.read_table(labelled_path, list(keywords))
        if table.num_rows == 0:
            raise ShfcasValueError(f"{labelled_path} has no rows")
        scores = float_column(table[score_column], score_column)
        keep = finite_rows({score_column: scores}, nan_policy)
        if keep is not None:
            table, scores = table.filter(pa.array(keep)), scores[keep]
        pairs = preference_pairs(
            table, -scores if cost else scores, prompt_column=prompt_column, completion_column=completion_column
        )
        writer.write(pairs.cast(output_schema))
    return PairsSummary(pairs=pairs.num_rows, rows=table.num_rows)
