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
import pyarrow.compute as pc

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

    A missing (null) conversation has a null key. Messages whose fields are all strings (the usual
    ``role`` and ``content``) are keyed by Arrow's string kernels, millions of rows a second; others
    (e.g. multimodal content) through Python's ``json``, with the same result.
    """
    if not is_conversational(column.type):
        return column
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([prompt_keys(chunk) for chunk in column.chunks], type=pa.string())
    message_type = column.type.value_type
    if all(_is_string(field.type) or pa.types.is_null(field.type) for field in message_type):
        return _string_message_keys(column)
    return pa.array(
        [None if messages is None else conversation_key(messages) for messages in column.to_pylist()],
        type=pa.string(),
    )


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


# What json.dumps(..., ensure_ascii=False) escapes in a string: the backslash (first, so that the
# other escapes are not escaped again), the quote and the control characters.
_COMMON_ESCAPES = [(char, json.dumps(char)[1:-1]) for char in ("\\", '"', "\n", "\t", "\r")]
_RARE_ESCAPES = [(chr(code), json.dumps(chr(code))[1:-1]) for code in range(32) if chr(code) not in "\n\t\r"]


def _json_strings(strings: pa.Array) -> pa.Array:
    """JSON string literals of ``strings``, as ``json.dumps(..., ensure_ascii=False)`` writes them."""
    # Each distinct string is escaped once: a prompt's messages repeat in each of its completions.
    encoded = pc.dictionary_encode(pc.cast(strings, pa.string()))
    distinct = encoded.dictionary
    for char, escaped in _COMMON_ESCAPES:
        distinct = pc.replace_substring(distinct, char, escaped)
    if pc.any(pc.match_substring_regex(distinct, "[\\x00-\\x1f]")).as_py():
        for char, escaped in _RARE_ESCAPES:
            distinct = pc.replace_substring(distinct, char, escaped)
    return pc.binary_join_element_wise('"', distinct, '"', "").take(encoded.indices)


def _string_message_keys(conversations: pa.Array) -> pa.Array:
    """:func:`conversation_key` of each row, for messages whose fields are strings, with Arrow kernels."""
    offsets = conversations.offsets
    first = offsets[0].as_py()
    messages = conversations.values.slice(first, offsets[-1].as_py() - first)
    # Each present field as ',"name":value', missing ones as ""; their concatenation less its first comma.
    members = [
        pc.coalesce(pc.binary_join_element_wise(f",{json.dumps(name)}:", _json_strings(values), ""), "")
        for name, values in sorted((field.name, pc.struct_field(messages, field.name)) for field in messages.type)
        if not pa.types.is_null(values.type)
    ]
    fields = pc.utf8_slice_codeunits(pc.binary_join_element_wise(*members, ""), 1) if members else ""
    objects = pc.binary_join_element_wise("{", fields, "}", "")
    objects = pc.if_else(pc.is_valid(messages), objects, "null")
    rows = pa.ListArray.from_arrays(pc.subtract(offsets, first), objects, mask=pc.is_null(conversations))
    return pc.binary_join_element_wise("[", pc.binary_join(rows, ","), "]", "")
