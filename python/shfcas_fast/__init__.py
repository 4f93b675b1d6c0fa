"""shfcas-fast: a fast conflict-scoring engine for LLM alignment data (SHF-CAS).

Example:
```python
>>> import numpy as np, shfcas_fast
>>> rng = np.random.default_rng(0)
>>> logprobs, rewards = rng.normal(size=8_000), rng.normal(size=8_000)
>>> scores = shfcas_fast.score(logprobs, rewards, group_sizes=8)
>>> chosen = shfcas_fast.select(scores, budget=100)
>>> chosen.shape
(100,)

```
"""

from __future__ import annotations

from typing import Any

from . import _core
from .errors import ShfcasError, ShfcasSelectionWarning, ShfcasTypeError, ShfcasValueError
from .grouping import KeyGroups, group_keys
from .scoring import (
    ConflictScores,
    KeyedConflictScores,
    kendall_distance,
    kendall_tau,
    pacs,
    score,
    select,
    top_k,
)

__version__ = _core.__version__

# The torch-based log-prob API loads on first use, so that the engine imports with numpy alone.
_LOGPROBS_API = ("policy_logprobs", "score_logits", "sequence_logprobs", "sequence_logprobs_from_hidden")

__all__ = [
    "ConflictScores",
    "KeyGroups",
    "KeyedConflictScores",
    "ShfcasError",
    "ShfcasSelectionWarning",
    "ShfcasTypeError",
    "ShfcasValueError",
    "group_keys",
    "kendall_distance",
    "kendall_tau",
    "pacs",
    "policy_logprobs",
    "score",
    "score_logits",
    "select",
    "sequence_logprobs",
    "sequence_logprobs_from_hidden",
    "top_k",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LOGPROBS_API:
        from . import logprobs

        return getattr(logprobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LOGPROBS_API))
