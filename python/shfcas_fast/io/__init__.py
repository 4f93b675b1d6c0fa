"""Arrow I/O for tables of completions: data sets in, atomic outputs out.

Example:
```python
>>> import pathlib, tempfile
>>> import pyarrow as pa
>>> from shfcas_fast import io
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> io.write_table(folder / "rows.parquet", pa.table({"prompt": ["a", "a"], "reward": [0.5, 1.0]}))
>>> [batch.num_rows for batch in io.iter_batches(folder / "rows.parquet", ["reward"])]
[2]

```

Inputs are data sets: a Parquet, Arrow, JSONL or CSV file (JSONL and CSV possibly compressed), a
folder or glob of such shards, or a folder written by ``datasets.Dataset.save_to_disk``; their schemas
are unified across shards (see :func:`iter_batches` and the module ``shfcas_fast.io._reading``).
Reading is batched so that a data set larger than memory can be streamed, and only the requested
columns are decoded (Parquet skips the others entirely). Conversational prompts (lists of chat
messages) are grouped by :func:`prompt_keys`.

Outputs are Parquet or JSONL. Every output is first written to a hidden temporary file beside its
destination and published under its name in one step at the end, so an error, an interrupt or a
concurrent writer never leaves a partial or silently replaced output behind (see
:func:`atomic_output`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ShfcasValueError
from ._formats import OUTPUT_FORMATS, output_format
from ._messages import conversation_key, is_conversational, prompt_keys
from ._outputs import (
    StaleTemporaryWarning,
    atomic_output,
    check_output,
    remove_stale_temporaries,
    temporary_path,
)
from ._reading import (
    DEFAULT_BATCH_ROWS,
    count_rows,
    input_format,
    iter_batches,
    read_schema,
    read_table,
    source_files,
)

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "input_format",
    "output_format",
    "source_files",
    "read_schema",
    "count_rows",
    "iter_batches",
    "read_table",
    "is_conversational",
    "conversation_key",
    "prompt_keys",
    "check_output",
    "temporary_path",
    "atomic_output",
    "remove_stale_temporaries",
    "StaleTemporaryWarning",
    "BatchWriter",
    "open_writer",
    "write_table",
]


class BatchWriter:
    """Write record batches of one schema incrementally to a Parquet or JSONL file.

    Example:
    ```python
    >>> import pathlib, tempfile
    >>> import pyarrow as pa
    >>> from shfcas_fast.io import BatchWriter
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> table = pa.table({"prompt": ["a"], "kendall_tau": [float("nan")]})
    >>> with BatchWriter(path, table.schema, "jsonl") as writer:
    ...     writer.write(table)
    >>> path.read_text()
    '{"prompt": "a", "kendall_tau": null}\\n'

    ```

    JSONL has no NaN: NaN floats are written as ``null``. Parquet batches are encoded and
    compressed on a background thread (Arrow releases the GIL) while the caller prepares the next
    one; at most one batch is in flight, and its errors surface on the next ``write`` or ``close``.
    ``dictionary_columns`` names the Parquet columns worth dictionary-encoding (default: all);
    leaving out columns of distinct floats saves the encoder a dictionary it would discard.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        fmt: str,
        *,
        dictionary_columns: Sequence[str] | None = None,
    ) -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ShfcasValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self.path = Path(path)
        self.schema = schema
        self.fmt = fmt
        self._sink: _ParquetSink | _JsonlSink = (
            _ParquetSink(self.path, schema, dictionary_columns) if fmt == "parquet" else _JsonlSink(self.path, schema)
        )

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        """Append the rows of ``data`` (which must have this writer's schema)."""
        self._sink.write(data)

    def close(self) -> None:
        """Finish any batch in flight, then flush and close the file."""
        self._sink.close()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ParquetSink:
    def __init__(self, path: Path, schema: pa.Schema, dictionary_columns: Sequence[str] | None) -> None:
        use_dictionary = True if dictionary_columns is None else list(dictionary_columns)
        self._writer = pq.ParquetWriter(path, schema, use_dictionary=use_dictionary)
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending: Future[None] | None = None

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        self._wait()
        self._pending = self._background.submit(self._writer.write, data)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._background.shutdown()
            self._writer.close()


class _JsonlSink:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._schema = schema
        self._file = path.open("w", encoding="utf-8")

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        columns = [_nan_to_null(column) for column in data.columns]
        records = pa.Table.from_arrays(columns, schema=self._schema).to_pylist()
        self._file.writelines(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records)

    def close(self) -> None:
        self._file.close()


def _nan_to_null(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if not pa.types.is_floating(column.type):
        return column
    return pc.if_else(pc.is_nan(column), pa.scalar(None, column.type), column)


@contextlib.contextmanager
def open_writer(
    path: str | os.PathLike[str],
    schema: pa.Schema,
    *,
    overwrite: bool = False,
    dictionary_columns: Sequence[str] | None = None,
) -> Iterator[BatchWriter]:
    """A :class:`BatchWriter` on a temporary file that becomes ``path`` only if the block succeeds."""
    fmt = output_format(path)
    with (
        atomic_output(path, overwrite=overwrite) as temporary,
        BatchWriter(temporary, schema, fmt, dictionary_columns=dictionary_columns) as writer,
    ):
        yield writer


def write_table(path: str | os.PathLike[str], table: pa.Table, *, overwrite: bool = False) -> None:
    """Write a whole table atomically to a ``.parquet`` or ``.jsonl`` file."""
    with open_writer(path, table.schema, overwrite=overwrite) as writer:
        writer.write(table)
