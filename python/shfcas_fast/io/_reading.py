"""Reading data sets: a file, a folder or glob of shards, or a saved Hugging Face dataset, as one table.

Example:
```python
>>> import pathlib, tempfile
>>> import pyarrow as pa, pyarrow.parquet as pq
>>> from shfcas_fast import io
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> pq.write_table(pa.table({"prompt": ["a", "a"], "reward": [1, 2]}), folder / "part-0.parquet")
>>> pq.write_table(pa.table({"prompt": ["a", "b"], "reward": [0.5, 3.0]}), folder / "part-1.parquet")
>>> io.read_schema(folder).field("reward").type
DataType(double)
>>> io.read_table(folder / "part-*.parquet", ["reward"])["reward"].to_pylist()
[1.0, 2.0, 0.5, 3.0]

```

A data set is named by:

- a file: ``.parquet``, ``.arrow`` or ``.feather`` (Arrow IPC, file or stream format), ``.jsonl``,
  ``.ndjson`` or ``.json`` (one JSON object per line), ``.csv``; JSONL and CSV may be compressed as a
  whole (``.gz``, ``.bz2``, ``.zst``, ``.zstd``);
- a folder: every table file below it, in path order, skipping names that start with ``.`` or ``_``
  (hidden files, ``_SUCCESS`` markers); they must all be of one format;
- a folder written by ``datasets.Dataset.save_to_disk`` (Arrow stream shards listed in its
  ``state.json``), in the order of its shards;
- a glob pattern (``*``, ``?``, ``[...]``, and ``**`` for any depth), its files in path order.

The rows are those of the shards one after the other. The shards' schemas are unified: a column
missing from a shard reads as nulls there, and a column of integers in one shard and floats in another
reads as floats (nested records gain the fields other shards have). Each file is streamed by Arrow's
reader for its format, so an error names the file it comes from; strings in JSONL and CSV must be
valid UTF-8 (the error names the row), and CSV values may hold newlines inside quotes.

Refused with a ShfcasValueError naming the path: a ``DatasetDict`` folder (pass one split's folder),
Parquet or Arrow files compressed as a whole, a folder mixing formats or holding files of other types
(pass a glob matching the table files), and shards whose column types cannot be unified.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from ..errors import ShfcasError, ShfcasValueError
from ._formats import TEXT_FORMATS, file_format

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "input_format",
    "source_files",
    "read_schema",
    "count_rows",
    "iter_batches",
    "read_table",
]

#: Rows per batch when streaming: large enough to amortise per-batch overhead, small enough that a
#: batch of wide rows stays well below the memory of the columns being scored.
DEFAULT_BATCH_ROWS = 1 << 20
# Text formats are parsed (and their types inferred) in blocks of this many bytes.
_TEXT_BLOCK_BYTES = 16 << 20
_GLOB_CHARACTERS = re.compile(r"[*?[]")

#: What names a data set: a path or glob pattern.
Source = str | os.PathLike[str]


@contextlib.contextmanager
def _naming(path: Path | str) -> Iterator[None]:
    """Say which file Arrow could not read."""
    try:
        yield
    except ShfcasError:
        raise
    # Arrow reports some corrupt data (e.g. a bad compressed page) as a bare OSError.
    except (pa.ArrowException, OSError) as err:
        message = " ".join(str(err).split())
        raise ShfcasValueError(f"cannot read {path}: {message}") from err


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ShfcasValueError(f"{path} is empty")


def _one_format(location: Source, files: Sequence[Path]) -> str:
    """The format shared by all ``files`` of ``location``."""
    examples: dict[str, Path] = {}
    for file in files:
        try:
            fmt, _ = file_format(file)
        except ShfcasValueError as err:
            raise ShfcasValueError(
                f"{location} holds {file}, which is not a table file ({err}); pass a glob matching only the tables"
            ) from None
        examples.setdefault(fmt, file)
    if len(examples) > 1:
        found = ", ".join(f"{fmt} ({example})" for fmt, example in examples.items())
        raise ShfcasValueError(f"{location} mixes formats: {found}; pass a glob matching one format")
    for file in files:
        _check_file(file)
    return next(iter(examples))


def _saved_dataset_files(folder: Path) -> list[Path]:
    """The Arrow shards of a ``save_to_disk`` folder, in the order its ``state.json`` lists them."""
    state = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ShfcasValueError(f"{state} does not list data files as datasets writes them: {err!r}") from None
    if not names:
        raise ShfcasValueError(f"{state} lists no data files")
    files = [folder / name for name in names]
    for file in files:
        _check_file(file)
    return files


def _folder_files(folder: Path) -> tuple[str, list[Path]]:
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
        example = folder / splits[0] if splits else folder / "train"
        raise ShfcasValueError(
            f"{folder} holds a DatasetDict (splits: {', '.join(splits) or 'none'}); pass one split's folder, "
            f"e.g. {example}"
        )
    if (folder / "state.json").is_file():
        return "arrow", _saved_dataset_files(folder)
    files = sorted(
        file
        for file in folder.rglob("*")
        if file.is_file() and not any(part.startswith((".", "_")) for part in file.relative_to(folder).parts)
    )
    if not files:
        raise ShfcasValueError(f"{folder} holds no table files")
    return _one_format(folder, files), files


def _format_and_files(location: Source) -> tuple[str, list[Path]]:
    path = Path(location)
    if path.is_dir():
        return _folder_files(path)
    if path.exists() or not _GLOB_CHARACTERS.search(str(location)):
        if not path.exists() and not path.suffix:  # a missing folder, most likely
            raise FileNotFoundError(f"{path} does not exist")
        fmt, _ = file_format(path)
        _check_file(path)
        return fmt, [path]
    files = sorted(Path(match) for match in glob.glob(str(location), recursive=True) if os.path.isfile(match))
    if not files:
        raise FileNotFoundError(f"{location} matches no files")
    return _one_format(location, files), files


def input_format(source: Source) -> str:
    """``"parquet"``, ``"arrow"``, ``"jsonl"`` or ``"csv"``: the format of a data set's files.

    For a file, from its name alone (it need not exist yet); for a folder or glob, from its files.
    """
    path = Path(source)
    if path.is_dir() or (not path.exists() and _GLOB_CHARACTERS.search(str(source))):
        return _format_and_files(source)[0]
    return file_format(path)[0]


def source_files(source: Source) -> list[Path]:
    """The files a data set reads, in reading order."""
    return _format_and_files(source)[1]


def _open_text(file: Path, fmt: str, columns: Sequence[str] | None = None) -> pa.RecordBatchReader:
    """A streaming reader of a CSV or JSONL file, decompressed as its suffix says."""
    stream = pa.input_stream(str(file), compression="detect")
    if fmt == "csv":
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=_TEXT_BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            # UTF-8 is checked by _require_utf8, whose error names the row.
            convert_options=pa_csv.ConvertOptions(
                include_columns=None if columns is None else list(columns), check_utf8=False
            ),
        )
    return pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=_TEXT_BLOCK_BYTES))


def _read_arrow(file: Path) -> pa.Table:
    """A memory-mapped Arrow IPC file, in the file or the stream format (as ``save_to_disk`` writes)."""
    mapped = pa.memory_map(str(file))
    try:
        return pa.ipc.open_file(mapped).read_all()
    except pa.ArrowInvalid:
        mapped.seek(0)
        return pa.ipc.open_stream(mapped).read_all()


def _file_schema(file: Path, fmt: str) -> pa.Schema:
    with _naming(file):
        if fmt == "parquet":
            return pq.read_schema(file)
        if fmt == "arrow":
            return _read_arrow(file).schema
        with contextlib.closing(_open_text(file, fmt)) as reader:
            return reader.schema


def _file_batches(file: Path, fmt: str, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """The batches of one file, with those of ``columns`` that it has."""
    # Not pyarrow.dataset's scanner: behind a slow consumer (scoring, writing) it held 100-200 MiB
    # more at the peak than these readers on 2M rows, and it does not take ".zst" for zstd.
    if fmt == "parquet":
        # No pre-buffering: it holds a whole row group's column chunks at once (~150 MB more at the
        # peak on 1M-row groups) for no measurable speed-up on a local disk.
        yield from pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)
    elif fmt == "arrow":
        yield from _read_arrow(file).select(columns).to_batches(max_chunksize=batch_size)
    else:
        for batch in _open_text(file, fmt, columns):
            yield batch.select(columns)


def _unify(files: Sequence[Path], schemas: Sequence[pa.Schema]) -> pa.Schema:
    unified = schemas[0]
    for file, schema in zip(files[1:], schemas[1:]):
        try:
            unified = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            problem = " ".join(str(err).split())
            raise ShfcasValueError(f"the columns of {file} do not match those of {files[0]}: {problem}") from None
    return unified


@functools.lru_cache(maxsize=8)
def _schemas(
    fmt: str, files: tuple[Path, ...], stamps: tuple[tuple[int, int], ...]
) -> tuple[pa.Schema, tuple[pa.Schema, ...]]:
    """The unified schema of ``files`` and each one's own; ``stamps`` (modification time and size) renew
    the cached entry."""
    schemas = tuple(_file_schema(file, fmt) for file in files)
    return _unify(files, schemas), schemas


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with the columns and types of ``schema``: missing columns null, others cast."""
    if batch.schema.equals(schema):
        return batch
    arrays = [
        batch.column(field.name).cast(field.type)
        if field.name in batch.schema.names
        else pa.nulls(batch.num_rows, field.type)
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@dataclass(frozen=True)
class _DataSet:
    location: str
    format: str
    files: tuple[Path, ...]
    schema: pa.Schema
    file_schemas: tuple[pa.Schema, ...]

    def columns(self, columns: Sequence[str] | None) -> pa.Schema:
        """The schema of ``columns`` (all if None), in that order."""
        if columns is None:
            return self.schema
        for name in columns:
            if name not in self.schema.names:
                available = ", ".join(self.schema.names)
                raise ShfcasValueError(f"{self.location} has no column {name!r} (its columns: {available})")
        return pa.schema([self.schema.field(name) for name in columns])


def _open(source: Source) -> _DataSet:
    fmt, files = _format_and_files(source)
    stamps = tuple((stat.st_mtime_ns, stat.st_size) for stat in (file.stat() for file in files))
    return _DataSet(str(source), fmt, tuple(files), *_schemas(fmt, tuple(files), stamps))


def read_schema(source: Source) -> pa.Schema:
    """The Arrow schema of a data set, unified across its files (for CSV and JSONL, as inferred from the
    first 16 MiB block of each file)."""
    return _open(source).schema


def count_rows(source: Source) -> int | None:
    """The number of rows when it is known without parsing the data (Parquet, Arrow), else ``None``."""
    data = _open(source)
    if data.format == "parquet":
        return sum(pq.ParquetFile(file).metadata.num_rows for file in data.files)
    if data.format == "arrow":
        return sum(_read_arrow(file).num_rows for file in data.files)
    return None


def _has_strings(data_type: pa.DataType) -> bool:
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return True
    return any(_has_strings(data_type.field(index).type) for index in range(data_type.num_fields))


def _is_valid(array: pa.Array) -> bool:
    try:
        array.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _require_utf8(batch: pa.RecordBatch, file: Path | str, first_row: int) -> None:
    """Refuse strings that are not UTF-8, naming the file row (text readers only check it lazily)."""
    for name, column in zip(batch.schema.names, batch.columns):
        if not _has_strings(column.type) or _is_valid(column):
            continue
        start, stop = 0, len(column)
        while stop - start > 1:  # bisect for the first invalid row
            middle = (start + stop) // 2
            start, stop = (start, middle) if not _is_valid(column.slice(start, middle - start)) else (middle, stop)
        raise ShfcasValueError(
            f"{file}: row {first_row + start} (0-based) has invalid UTF-8 in column {name!r}; "
            "re-encode the file as UTF-8"
        )


def iter_batches(
    source: Source,
    columns: Sequence[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Stream the rows of a data set as record batches, decoding only ``columns`` (all if None).

    Batches hold the columns in the order given, with the data set's unified types. ``batch_size``
    bounds the rows per batch for Parquet and Arrow; CSV and JSONL are read in blocks of 16 MiB.
    """
    data = _open(source)
    schema = data.columns(columns)
    for file, file_schema in zip(data.files, data.file_schemas):
        present = [name for name in schema.names if name in file_schema.names]
        first_row = 0
        with _naming(file):
            for batch in _file_batches(file, data.format, present, batch_size):
                if data.format in TEXT_FORMATS:
                    _require_utf8(batch, file, first_row)
                first_row += batch.num_rows
                yield _conform(batch, schema)
    # Arrow's allocator keeps the decoders' scratch memory for reuse; the caller needs it more.
    pa.default_memory_pool().release_unused()


def read_table(source: Source, columns: Sequence[str] | None = None) -> pa.Table:
    """Read ``columns`` (all if None) of a data set into memory."""
    schema = _open(source).columns(columns)
    return pa.Table.from_batches(list(iter_batches(source, columns)), schema=schema)
