"""Arrow I/O for tables of completions: batched reading, incremental writing and atomic output.

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

Inputs are Parquet, JSONL or CSV, chosen by the file suffix; outputs are Parquet or JSONL. Reading is
batched so that a file larger than memory can be streamed, and only the requested columns are
decoded (Parquet skips the others entirely). Every output is first written to a hidden temporary file
beside its destination and renamed into place at the end, so an error or an interrupt never leaves a
partial output behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "input_format",
    "output_format",
    "read_schema",
    "count_rows",
    "iter_batches",
    "read_table",
    "check_output",
    "atomic_output",
    "BatchWriter",
    "open_writer",
    "write_table",
]

#: Rows per batch when streaming Parquet: large enough to amortise per-batch overhead, small enough
#: that a batch of wide rows stays well below the memory of the columns being scored.
DEFAULT_BATCH_ROWS = 1 << 20
# Text formats are batched by bytes rather than rows.
_TEXT_BLOCK_BYTES = 16 << 20

_INPUT_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
_OUTPUT_FORMATS = ("parquet", "jsonl")


def input_format(path: str | os.PathLike[str]) -> str:
    """``"parquet"``, ``"jsonl"`` or ``"csv"`` from the suffix of ``path``; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in _INPUT_SUFFIXES:
        known = ", ".join(sorted(_INPUT_SUFFIXES))
        raise ValueError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use one of {known}")
    return _INPUT_SUFFIXES[suffix]


def output_format(path: str | os.PathLike[str]) -> str:
    """``"parquet"`` or ``"jsonl"`` from the suffix of ``path``; ValueError for anything else."""
    suffix = Path(path).suffix.lower()
    fmt = _INPUT_SUFFIXES.get(suffix)
    if fmt not in _OUTPUT_FORMATS:
        raise ValueError(f"{path}: cannot write {suffix or '(no suffix)'!r} files; name the output .parquet or .jsonl")
    return fmt


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if not path.is_file():
        raise IsADirectoryError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty")


def _open_text_reader(path: Path, fmt: str, columns: Sequence[str] | None) -> pa.RecordBatchReader:
    if fmt == "csv":
        convert = pa_csv.ConvertOptions(include_columns=list(columns) if columns is not None else None)
        return pa_csv.open_csv(
            path, read_options=pa_csv.ReadOptions(block_size=_TEXT_BLOCK_BYTES), convert_options=convert
        )
    return pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=_TEXT_BLOCK_BYTES))


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Say which file Arrow could not parse."""
    try:
        yield
    except pa.ArrowException as err:
        raise ValueError(f"cannot read {path}: {err}") from err


def read_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The Arrow schema of a table file (for CSV and JSONL, as inferred from its first block)."""
    path = Path(path)
    fmt = input_format(path)
    _check_readable(path)
    with _reading(path):
        if fmt == "parquet":
            return pq.read_schema(path)
        with contextlib.closing(_open_text_reader(path, fmt, None)) as reader:
            return reader.schema


def count_rows(path: str | os.PathLike[str]) -> int | None:
    """The number of rows when it is known without reading the data (Parquet), else ``None``."""
    path = Path(path)
    if input_format(path) != "parquet":
        return None
    return pq.ParquetFile(path).metadata.num_rows


def iter_batches(
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of a table file as record batches, decoding only ``columns`` (all if None).

    Batches hold the columns in the order given. ``batch_size`` bounds the rows per batch for
    Parquet; CSV and JSONL are read in blocks of 16 MiB.
    """
    path = Path(path)
    fmt = input_format(path)
    _check_readable(path)
    with _reading(path):
        if fmt == "parquet":
            # No pre-buffering: it holds a whole row group's column chunks at once (~150 MB more at
            # the peak on 1M-row groups) for no measurable speed-up on a local disk.
            batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)
        else:
            batches = _open_text_reader(path, fmt, columns)
        for batch in batches:
            yield batch if columns is None else batch.select(columns)
    # Arrow's allocator keeps the decoders' scratch memory for reuse; the caller needs it more.
    pa.default_memory_pool().release_unused()


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``columns`` (all if None) of a table file into memory."""
    batches = list(iter_batches(path, columns))
    if batches:
        return pa.Table.from_batches(batches)
    schema = read_schema(path)
    return pa.schema([schema.field(name) for name in columns or schema.names]).empty_table()


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False) -> None:
    """Raise unless ``path`` can be written: a known file type (unless ``directory``), an existing
    folder, and no existing file or folder there unless ``overwrite``.

    Commands call it first, so that a bad output fails before any input is read.
    """
    path = Path(path)
    if not directory:
        output_format(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, overwrite: bool = False, directory: bool = False, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that is renamed to ``path`` when the block succeeds.

    On any exception (including ``KeyboardInterrupt``) the temporary file or directory is removed
    and ``path`` is left as it was. An existing ``path`` is only replaced when ``overwrite`` is true.
    With ``directory=True`` the temporary path is an empty directory, e.g. for a report. With
    ``durable=True`` a file is flushed to disk before the rename and the rename itself after it, so
    that a crash of the machine cannot lose it (for small, precious files such as human labels).
    """
    path = Path(path)
    check_output(path, overwrite=overwrite, directory=directory)
    if directory:
        temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    else:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
    try:
        yield temporary
        if durable and not directory:
            _fsync(temporary)
        _replace(temporary, path)
        if durable:
            _fsync(path.parent)
    except BaseException:
        _remove(temporary)
        raise


def _replace(source: Path, destination: Path) -> None:
    """Rename ``source`` onto ``destination``; a directory is swapped in, then the old one removed."""
    if not (source.is_dir() and destination.is_dir()):
        os.replace(source, destination)
        return
    retired = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".old"))
    os.replace(destination, retired / destination.name)
    os.replace(source, destination)
    shutil.rmtree(retired)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
        if fmt not in _OUTPUT_FORMATS:
            raise ValueError(f"fmt must be one of {_OUTPUT_FORMATS}, got {fmt!r}")
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
