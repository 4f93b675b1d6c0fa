"""The file-level pipeline as a library: score, select, export and pair tables of completions.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast import tables
>>> rows = pa.table({
...     "prompt": ["p", "p", "p", "q", "q", "q"],
...     "completion": ["a", "b", "c", "d", "e", "f"],
...     "logprob": [-1.0, -2.0, -3.0, -1.0, -2.0, -3.0],
...     "reward": [1.0, 2.0, 3.0, 3.0, 2.0, 1.0],
... })
>>> scored = tables.score_table(rows)
>>> selected = tables.select_table(scored, budget=1)
>>> sorted(set(selected["prompt"].to_pylist())), selected["kendall_tau"][0].as_py()
(['p'], -1.0)
>>> tables.annotation_tasks(selected).num_rows
3

```

Each step works on Arrow tables in memory (``score_table``, or ``score_dataset`` for a ``datasets.Dataset``, ``select_table``, ``annotation_tasks``,
``preference_pairs``), on a stream of batches (:class:`StreamingScorer`), or on files that may be
larger than memory (``score_file``, ``select_file``, ``export_file``, ``pairs_file``: Parquet, JSONL
or CSV in, Parquet or JSONL out, written atomically). The ``shfcas`` command line is a thin layer
over these functions. Bad input raises :class:`~shfcas_fast.errors.ShfcasError` subclasses.
"""

from __future__ import annotations

from .annotate import ExportSummary, annotation_tasks, export_file
from .columns import PER_COMPLETION_FIELDS, SCORE_FIELDS, NanPolicy
from .grouping import Groups, group_rows
from .pairs import PairsSummary, pairs_file, preference_pairs
from .score import (
    ScoreSummary,
    StreamingScorer,
    default_batch_rows,
    score_dataset,
    score_file,
    score_table,
    scored_schema,
)
from .select import OutputKind, ScoredPrompts, SelectSummary, load_scored, scored_prompts, select_file, select_table

__all__ = [
    "PER_COMPLETION_FIELDS",
    "SCORE_FIELDS",
    "ExportSummary",
    "Groups",
    "NanPolicy",
    "OutputKind",
    "PairsSummary",
    "ScoreSummary",
    "ScoredPrompts",
    "SelectSummary",
    "StreamingScorer",
    "annotation_tasks",
    "default_batch_rows",
    "export_file",
    "group_rows",
    "load_scored",
    "pairs_file",
    "preference_pairs",
    "score_dataset",
    "score_file",
    "score_table",
    "scored_prompts",
    "scored_schema",
    "select_file",
    "select_table",
]
