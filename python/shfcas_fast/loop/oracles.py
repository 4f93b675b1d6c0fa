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

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa
import torch

from .._validation import as_float_vector
from ..io import write_table

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
    """A stable key of one (prompt, completion): SHA-256 of both, length-prefixed so no two pairs collide."""
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


def _drop_torn_last_line(path: Path) -> None:
    """Cut a torn last line (no final newline) off ``path`` so that the next append starts a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)


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
    scores if every completion has one; otherwise it rewrites the request file with only the completions
    still unlabelled (columns ``key``, ``prompt``, ``completion``, ``score`` = null) and raises
    :class:`LabelsPending`. Each label is appended to ``labels.jsonl`` and fsynced as soon as it arrives,
    so a crash loses none, and a label already stored is never requested again.

    Args:
        directory: where ``requests.jsonl`` (or ``.parquet``) and ``labels.jsonl`` live.
        file_format: ``"jsonl"`` or ``"parquet"`` for the request file.
        is_cost: annotators give costs (higher = worse); scores are negated.
    """

    def __init__(
        self, directory: str | os.PathLike, *, file_format: Literal["jsonl", "parquet"] = "jsonl", is_cost: bool = False
    ) -> None:
        if file_format not in ("jsonl", "parquet"):
            raise ValueError(f'file_format must be "jsonl" or "parquet", got {file_format!r}')
        self.directory = Path(directory)
        self.file_format = file_format
        self.is_cost = is_cost

    @property
    def request_file(self) -> Path:
        return self.directory / f"requests.{self.file_format}"

    @property
    def label_file(self) -> Path:
        return self.directory / "labels.jsonl"

    def labels(self) -> dict[str, float]:
        """Every stored label, by :func:`label_key`.

        A torn last line (a crash in the middle of :meth:`record`, which writes the newline last) is
        ignored; any other unreadable line raises ValueError naming ``file:line``.
        """
        if not self.label_file.exists():
            return {}
        stored = {}
        lines = self.label_file.read_text(encoding="utf-8").splitlines(keepends=True)
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if number == len(lines) and not line.endswith("\n"):
                    break
                raise ValueError(f"{self.label_file}:{number}: not a JSON label: {err}") from err
            stored[row["key"]] = float(row["score"])
        return stored

    def record(self, prompt: str, completion: str, score: float) -> None:
        """Store one label durably (append + fsync) the moment it arrives."""
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"score must be a number, got {score!r}") from None
        if not np.isfinite(value):
            raise ValueError(f"score must be finite, got {score!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        _drop_torn_last_line(self.label_file)
        row = {"key": label_key(prompt, completion), "prompt": prompt, "completion": completion, "score": value}
        with self.label_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _read_requests(self) -> list[dict]:
        if not self.request_file.exists():
            return []
        if self.file_format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(self.request_file).to_pylist()
        with self.request_file.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def _write_requests(self, rows: list[dict]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_table(self.request_file, pa.Table.from_pylist(rows, schema=_REQUEST_SCHEMA), overwrite=True)

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, completions)
        stored = self.labels()
        for number, row in enumerate(self._read_requests(), start=1):
            if row.get("score") is not None and row["key"] not in stored:
                try:
                    self.record(row["prompt"], row["completion"], row["score"])
                except ValueError as err:
                    raise ValueError(f"{self.request_file}: row {number}: {err}") from err
                stored[row["key"]] = float(row["score"])
        keys = [label_key(p, c) for p, c in zip(prompts, completions)]
        missing = {}
        for key, prompt, completion in zip(keys, prompts, completions):
            if key not in stored:
                missing[key] = {"key": key, "prompt": prompt, "completion": completion, "score": None}
        if missing:
            self._write_requests(list(missing.values()))
            raise LabelsPending(self.request_file, len(missing))
        self.request_file.unlink(missing_ok=True)
        scores = np.array([stored[key] for key in keys], dtype=np.float64)
        return -scores if self.is_cost else scores
