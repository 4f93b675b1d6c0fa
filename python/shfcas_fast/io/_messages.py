"""Prompt keys for conversational data: a deterministic string for each list of chat messages.

Example:
```python
>>> import pyarrow as pa
>>> from shfcas_fast import io
>>> prompts = pa.array([
...     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
...     [{"content": "Hi", "role": "user"}],
... ])
>>> io.is_conversational(prompts.type)
True
>>> io.prompt_keys(prompts).to_pylist()
['[{"content":"Be brief.","role":"system"},{"content":"Hi","role":"user"}]', '[{"content":"Hi","role":"user"}]']

```

TRL's conversational format holds a prompt (or a completion) as a list of messages, each a record with
a ``role`` and a ``content`` (and, for tool use, other fields). Rows of one prompt are those with equal
messages, and :func:`conversation_key` names them by a string: the canonical JSON of the list, each
message an object of its non-null fields (at any depth, e.g. in multimodal content) with keys sorted,
compact separators (``,`` and ``:``) and non-ASCII characters kept as they are. The key does not
depend on field order or on fields that are missing (null) in a message, so the same conversation gets
the same key in every shard and file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

__all__ = ["is_conversational", "conversation_key", "prompt_keys"]


def is_conversational(data_type: pa.DataType) -> bool:
    """Whether a column of ``data_type`` holds conversations: lists of records with ``role`` and ``content``."""
    if not (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)):
        return False
    message = data_type.value_type
    return pa.types.is_struct(message) and {"role", "content"} <= {field.name for field in message}


def _without_null_fields(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_null_fields(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_null_fields(item) for item in value]
    return value


def conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """The canonical JSON of a list of messages: non-null fields, sorted keys, compact, non-ASCII kept."""
    return json.dumps(
        _without_null_fields(list(messages)), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )


def prompt_keys(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The keys that group rows by prompt: ``column`` itself, or for conversations their :func:`conversation_key`.

    A missing (null) conversation has a null key.
    """
    if not is_conversational(column.type):
        return column
    return pa.array(
        [None if messages is None else conversation_key(messages) for messages in column.to_pylist()],
        type=pa.string(),
    )
