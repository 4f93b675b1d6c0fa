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

from . import _core
from .scoring import (
    ConflictScores,
    kendall_distance,
    kendall_tau,
    pacs,
    score,
    select,
    top_k,
)

__version__ = _core.__version__

__all__ = [
    "ConflictScores",
    "kendall_distance",
    "kendall_tau",
    "pacs",
    "score",
    "select",
    "top_k",
    "__version__",
]
