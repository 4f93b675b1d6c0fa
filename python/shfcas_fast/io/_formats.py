"""Table formats by file name: which are read, which are written, and how text files may be compressed.

Example:
```python
>>> from shfcas_fast.io import _formats
>>> _formats.file_format("shard-00001.jsonl.zst"), _formats.output_format("scored.parquet")
(('jsonl', 'zstd'), 'parquet')

```
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ShfcasValueError

__all__ = ["TEXT_FORMATS", "OUTPUT_FORMATS", "file_format", "output_format"]

_TABLE_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
#: Formats read as text, which may be compressed as a whole.
TEXT_FORMATS = ("jsonl", "csv")
#: Formats that outputs are written in.
OUTPUT_FORMATS = ("parquet", "jsonl")
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}


def file_format(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(format, compression)`` of a table file from its name, e.g. ``("csv", "gzip")`` for ``x.csv.gz``.

    The format is ``"parquet"``, ``"arrow"`` (Arrow IPC, file or stream), ``"jsonl"`` or ``"csv"``;
    the compression is ``None`` or, for JSONL and CSV only, ``"gzip"``, ``"bz2"`` or ``"zstd"``.
    Any other name raises a ShfcasValueError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    compression = _COMPRESSIONS.get(suffix)
    table_suffix = Path(path.stem).suffix.lower() if compression else suffix
    fmt = _TABLE_SUFFIXES.get(table_suffix)
    if fmt is None:
        shown = table_suffix + suffix if compression else suffix
        known = ", ".join(sorted(_TABLE_SUFFIXES))
        raise ShfcasValueError(
            f"{path}: unknown file type {shown or '(no suffix)'!r}; use one of {known} "
            f"(JSONL and CSV may be compressed: {', '.join(_COMPRESSIONS)})"
        )
    if compression and fmt not in TEXT_FORMATS:
        raise ShfcasValueError(
            f"{path}: {fmt} files cannot be read compressed as a whole ({suffix}); decompress it "
            "(Parquet and Arrow compress their contents themselves)"
        )
    return fmt, compression


def output_format(path: str | os.PathLike[str]) -> str:
    """``"parquet"`` or ``"jsonl"`` from the suffix of ``path``; ShfcasValueError for anything else."""
    suffix = Path(path).suffix.lower()
    fmt = _TABLE_SUFFIXES.get(suffix)
    if fmt not in OUTPUT_FORMATS:
        raise ShfcasValueError(
            f"{path}: cannot write {suffix or '(no suffix)'!r} files; name the output .parquet or .jsonl"
        )
    return fmt
