"""Oracles: whatever scores completions in the loop (the human, a gold reward model, or a judge).

Example:
```python
>>> from shfcas_fast.loop.oracles import CallableOracle
>>> oracle = CallableOracle(lambda prompts, completions: [len(c) for c in completions])
>>> oracle.score(["q ", "q "], ["a", "abc"]).tolist()
[1.0, 3.0]

```

Every oracle returns float64 scores, higher = better: a cost model is negated on the way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .._validation import as_float_vector
from ..errors import ShfcasValueError
from ..io import atomic_output

__all__ = ["Oracle", "RewardModelOracle", "CallableOracle", "FileOracle", "LabelsPending", "label_key"]


@runtime_checkable
class Oracle(Protocol):
    """Anything with ``score(prompts, completions) -> array`` (one float per completion, higher = better)."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray: ...


def _check_lengths(prompts: Sequence[str], completions: Sequence[str]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(
            f"prompts and completions must have the same length, got {len(prompts)} and {len(completions)}"
        )


class RewardModelOracle:
    """Scores with a sequence-classification reward model (or a cost model when ``is_cost=True``).

    The text scored is ``prompt + completion + eos``, exactly what TRL's ``RewardTrainer`` trains on.

    Example:
    ```python
    >>> from shfcas_fast.loop.oracles import RewardModelOracle
    >>> from shfcas_fast.loop.synthetic import build_tokenizer, tiny_reward_model
    >>> tokenizer = build_tokenizer()
    >>> oracle = RewardModelOracle(tiny_reward_model(tokenizer, seed=0), tokenizer)
    >>> oracle.score(["drugs : how get -> "], ["refuse"]).shape
    (1,)

    ```

    Args:
        model: a ``...ForSequenceClassification`` model with one label.
        processing_class: its tokenizer.
        is_cost: the model outputs a cost (higher = worse); scores are negated.
        batch_size: texts per forward pass.
    """

    def __init__(self, model: Any, processing_class: Any, *, is_cost: bool = False, batch_size: int = 64) -> None:
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(f"model must have num_labels=1 (one reward), got {getattr(model.config, 'num_labels', None)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if processing_class.eos_token is None:
            raise ValueError("processing_class needs an eos token: RewardTrainer ends every scored text with it")
        self.model = model
        self.processing_class = processing_class
        self.is_cost = is_cost
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, completions)
        eos = self.processing_class.eos_token
        texts = [prompt + completion + eos for prompt, completion in zip(prompts, completions)]
        was_training = self.model.training
        self.model.eval()
        outputs = []
        device = next(self.model.parameters()).device
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.processing_class(
                    texts[start : start + self.batch_size],
                    padding=True,
                    padding_side="right",
                    add_special_tokens=False,
                    return_tensors="pt",
                ).to(device)
                outputs.append(self.model(**batch).logits[:, 0].double().cpu())
        finally:
            self.model.train(was_training)
        scores = torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float64)
        return -scores if self.is_cost else scores


class CallableOracle:
    """Wraps any ``fn(prompts, completions) -> scores`` (a programmatic gold rule, an API judge, ...).

    Args:
        fn: returns one number per completion.
        is_cost: ``fn`` returns costs (higher = worse); scores are negated.
    """

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Any], *, is_cost: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.is_cost = is_cost

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, completions)
        scores = as_float_vector(np.asarray(self.fn(prompts, completions)), "oracle output").astype(np.float64)
        if scores.shape[0] != len(completions):
            raise ValueError(f"fn returned {scores.shape[0]} scores for {len(completions)} completions")
        return -scores if self.is_cost else scores


def label_key(prompt: str, completion: str) -> str:
    """The id of one (prompt, completion): SHA-256 of both, length-prefixed so no two pairs collide.

    :class:`FileOracle` writes it as the ``key`` of each request and stores the label under it, so a
    label stays attached to the request even if an annotation tool edits the text it sends back.
    """
    digest = hashlib.sha256()
    for part in (prompt, completion):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class LabelsPending(RuntimeError):
    """Raised by :class:`FileOracle` when annotators still owe labels; rerun once they are in."""

    def __init__(self, request_file: Path, missing: int) -> None:
        super().__init__(f"{missing} completion(s) await a score in {request_file}; fill the 'score' column and rerun")
        self.request_file = request_file
        self.missing = missing


_REQUEST_SCHEMA = pa.schema(
    [("key", pa.string()), ("prompt", pa.string()), ("completion", pa.string()), ("score", pa.float64())]
)


def _finite_score(score: Any) -> float:
    try:
        value = float(score)
    except (TypeError, ValueError):
        raise ShfcasValueError(f"score must be a number, got {score!r}") from None
    if not math.isfinite(value):
        raise ShfcasValueError(f"score must be finite, got {score!r}")
    return value


def _split_torn_tail(data: bytes) -> tuple[bytes, bytes]:
    """Split the bytes of a JSON-lines file before a torn last line (``b""`` when there is none).

    A last line without its newline that parses is a complete row (some tools save files so); one that
    does not parse is a write cut short by a crash, or a save still in progress.
    """
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if not tail.strip():
        return data, b""
    try:
        json.loads(tail)
    except ValueError:  # also invalid UTF-8: a write can stop inside a character
        return data[:start], tail
    return data, b""


def _parse_json_lines(data: bytes, path: Path, what: str) -> list[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line; a line that does not parse raises naming it."""
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except ValueError as err:
                raise ShfcasValueError(f"{path}:{number}: not a JSON {what}: {err}") from err
    return rows


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


@dataclass
class _Requests:
    """One snapshot of the request file."""

    content: bytes  # the file's bytes as read (empty when there is none)
    rows: list[tuple[int, dict]]  # (row number, row): line numbers in JSONL, positions in Parquet
    torn: bool  # a JSONL file ends in a line that does not parse: a save in progress, or cut short


class _ChangedWhileWriting(Exception):
    """The request file changed between reading it and replacing it (a tool saved without the lock)."""


class FileOracle:
    """Human feedback through files: writes what needs labelling, reads the scores back.

    Example:
    ```python
    >>> import tempfile
    >>> from shfcas_fast.loop.oracles import FileOracle, LabelsPending
    >>> oracle = FileOracle(tempfile.mkdtemp())
    >>> try:
    ...     oracle.score(["q "], ["a"])
    ... except LabelsPending as pending:
    ...     print(pending.missing)
    1
    >>> oracle.record("q ", "a", 0.5)
    >>> oracle.score(["q "], ["a"]).tolist()
    [0.5]

    ```

    ``score`` first takes in every score annotators have written into the request file, then returns the
    scores if every completion has one; otherwise it adds the completions not yet requested to the request
    file (columns ``key``, ``prompt``, ``completion``, ``score`` = null) and raises :class:`LabelsPending`.
    Each label is appended to ``labels.jsonl`` and fsynced as soon as it arrives, so a crash loses none,
    and a label already stored is never requested again. A label is stored under the request's ``key``
    (:func:`label_key` of the text as asked), not under the text sent back, so a tool that trims or
    re-encodes the text does not cause the completion to be asked again.

    The protocol for annotation tools (the request file is shared with them):

    - Fill in ``score`` (a finite number; leave it null for "not yet"). Keep ``key`` as written; other
      columns may be edited or added.
    - ``score`` holds ``requests.lock`` (in the same directory) with an exclusive ``fcntl.flock`` while it
      reads the request file, stores labels and adds requests (milliseconds). A tool that holds the same
      lock from reading the file to the end of its save may save any way it likes. Without the lock, a
      tool must save by writing a copy and renaming it over the request file (what most editors do), never
      by rewriting the file in place.
    - ``score`` never rewrites a JSONL request file: it only appends new requests after a complete last
      line, and removes the file once every row in it has a stored label. So no saved label is ever
      overwritten. A Parquet request file cannot be appended to: it is replaced (under the lock, and only
      if it is unchanged since it was read) when new requests must be added, so Parquet tools should take
      the lock.
    - An unterminated last line that does not parse is taken for a save in progress: it is not read, and
      no request is appended after it until it is complete.

    Each ``score`` call holds the lock only briefly, so polling it while annotators work is safe.

    Args:
        directory: where ``requests.jsonl`` (or ``.parquet``), ``requests.lock`` and ``labels.jsonl`` live.
        file_format: ``"jsonl"`` or ``"parquet"`` for the request file.
        is_cost: annotators give costs (higher = worse); scores are negated.
        lock_timeout: seconds to wait for ``requests.lock`` before raising TimeoutError.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        file_format: Literal["jsonl", "parquet"] = "jsonl",
        is_cost: bool = False,
        lock_timeout: float = 60.0,
    ) -> None:
        if file_format not in ("jsonl", "parquet"):
            raise ShfcasValueError(f'file_format must be "jsonl" or "parquet", got {file_format!r}')
        if not lock_timeout > 0:
            raise ShfcasValueError(f"lock_timeout must be a positive number of seconds, got {lock_timeout!r}")
        self.directory = Path(directory)
        self.file_format = file_format
        self.is_cost = is_cost
        self.lock_timeout = lock_timeout

    @property
    def request_file(self) -> Path:
        return self.directory / f"requests.{self.file_format}"

    @property
    def lock_file(self) -> Path:
        """Held (``fcntl.flock``, exclusive) by :meth:`score` and :meth:`record`, and by tools that save in place."""
        return self.directory / "requests.lock"

    @property
    def label_file(self) -> Path:
        return self.directory / "labels.jsonl"

    @property
    def torn_file(self) -> Path:
        """Where a torn last line of :attr:`label_file` is kept before the next label is appended."""
        return self.directory / "labels.jsonl.torn"

    def labels(self) -> dict[str, float]:
        """Every stored label, by request key (:func:`label_key` of the text as asked).

        A last line without its newline is a label if it parses; if it does not, it is a torn write (a
        crash in the middle of :meth:`record`, which writes the newline last) and is skipped here, then
        moved to :attr:`torn_file` by the next :meth:`record`. Any other unreadable line raises
        ShfcasValueError naming ``file:line``.
        """
        complete, _ = _split_torn_tail(_read_bytes(self.label_file))
        stored = {}
        for number, row in _parse_json_lines(complete, self.label_file, "label"):
            if not (isinstance(row, dict) and isinstance(row.get("key"), str) and "score" in row):
                raise ShfcasValueError(f"{self.label_file}:{number}: a label needs a string 'key' and a 'score'")
            try:
                stored[row["key"]] = _finite_score(row["score"])
            except ShfcasValueError as err:
                raise ShfcasValueError(f"{self.label_file}:{number}: {err}") from None
        return stored

    def record(self, prompt: str, completion: str, score: float) -> None:
        """Store one label durably (append + fsync) the moment it arrives, under ``label_key(prompt, completion)``."""
        value = _finite_score(score)
        with self._locked():
            self._append_label(label_key(prompt, completion), prompt, completion, value)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold :attr:`lock_file` exclusively; give up after ``lock_timeout`` seconds rather than hang."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("a") as handle:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{self.lock_file} stayed locked for {self.lock_timeout} s; "
                            "an annotation tool should hold it only while it saves"
                        ) from None
                    time.sleep(0.01)
            yield  # closing the handle releases the lock

    def _append_label(self, key: str, prompt: Any, completion: Any, value: float) -> None:
        """Append one label and fsync it (the caller holds the lock)."""
        self._end_label_file_with_a_newline()
        row = {"key": key, "prompt": prompt, "completion": completion, "score": value}
        with self.label_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _end_label_file_with_a_newline(self) -> None:
        """Before an append: complete a last line that parses, move a torn one to :attr:`torn_file`."""
        try:
            handle = self.label_file.open("rb+")
        except FileNotFoundError:
            return
        with handle:
            end = handle.seek(0, os.SEEK_END)
            if end == 0 or os.pread(handle.fileno(), 1, end - 1) == b"\n":
                return
            handle.seek(0)
            complete, torn = _split_torn_tail(handle.read())
            if torn:
                with self.torn_file.open("ab") as aside:
                    aside.write(torn + b"\n")
                    aside.flush()
                    os.fsync(aside.fileno())
                handle.truncate(len(complete))
                warnings.warn(
                    f"{self.label_file} ended in a torn line (a write cut short); moved it to {self.torn_file}",
                    stacklevel=4,
                )
            else:
                handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _read_requests(self) -> _Requests:
        content = _read_bytes(self.request_file)
        if self.file_format == "parquet":
            if not content:
                return _Requests(content, [], torn=False)
            try:
                table = pq.read_table(pa.BufferReader(content))
            except (pa.ArrowException, OSError) as err:
                raise ShfcasValueError(f"{self.request_file}: not a readable Parquet file: {err}") from err
            return _Requests(content, list(enumerate(table.to_pylist(), start=1)), torn=False)
        complete, torn = _split_torn_tail(content)
        return _Requests(content, _parse_json_lines(complete, self.request_file, "request"), torn=bool(torn))

    def _ingest(self, requests: _Requests, stored: dict[str, float]) -> None:
        """Store every score written into the request file that is not stored yet, under the row's key."""
        for number, row in requests.rows:
            key = row.get("key") if isinstance(row, dict) else None
            if not isinstance(key, str):
                raise ShfcasValueError(f"{self.request_file}: row {number}: a request needs its 'key' as written")
            if row.get("score") is not None and key not in stored:
                try:
                    value = _finite_score(row["score"])
                except ShfcasValueError as err:
                    raise ShfcasValueError(f"{self.request_file}: row {number}: {err}") from None
                self._append_label(key, row.get("prompt"), row.get("completion"), value)
                stored[key] = value

    def _add_requests(self, requests: _Requests, new_rows: list[dict]) -> None:
        """Add requests without overwriting anything an annotator saved (the caller holds the lock)."""
        if self.file_format == "jsonl":
            if requests.torn:
                warnings.warn(
                    f"{self.request_file} has an incomplete last line (a save in progress?); "
                    f"{len(new_rows)} new request(s) will be appended by a later call",
                    stacklevel=3,
                )
                return
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in new_rows).encode("utf-8")
            with self.request_file.open("a+b") as handle:
                end = handle.seek(0, os.SEEK_END)
                if end and os.pread(handle.fileno(), 1, end - 1) != b"\n":
                    lines = b"\n" + lines  # a tool saved the last row without its newline
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())
            return
        table = pa.Table.from_pylist(new_rows, schema=_REQUEST_SCHEMA)
        try:
            if requests.content:
                table = pa.concat_tables(
                    [pq.read_table(pa.BufferReader(requests.content)), table], promote_options="permissive"
                )
            with atomic_output(self.request_file, overwrite=True) as temporary:
                pq.write_table(table, temporary)
                if _read_bytes(self.request_file) != requests.content:
                    raise _ChangedWhileWriting
        except _ChangedWhileWriting:
            warnings.warn(
                f"{self.request_file} changed while new requests were being added (a tool saved without "
                f"{self.lock_file.name}); {len(new_rows)} new request(s) will be added by a later call",
                stacklevel=3,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ShfcasValueError(f"{self.request_file}: cannot add requests to it: {err}") from err

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, completions)
        keys = [label_key(p, c) for p, c in zip(prompts, completions)]
        with self._locked():
            stored = self.labels()
            requests = self._read_requests()
            self._ingest(requests, stored)
            missing = {key: (p, c) for key, p, c in zip(keys, prompts, completions) if key not in stored}
            requested = {row["key"] for _, row in requests.rows}
            if missing:
                new_rows = [
                    {"key": key, "prompt": p, "completion": c, "score": None}
                    for key, (p, c) in missing.items()
                    if key not in requested
                ]
                if new_rows:
                    self._add_requests(requests, new_rows)
            elif requests.rows and not requests.torn and requested <= stored.keys():
                # Every row has a stored label: nothing an annotator could still add is lost with it.
                self.request_file.unlink()
        if missing:
            raise LabelsPending(self.request_file, len(missing))
        scores = np.array([stored[key] for key in keys], dtype=np.float64)
        return -scores if self.is_cost else scores
