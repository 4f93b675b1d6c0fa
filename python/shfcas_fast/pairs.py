"""Preference pairs from oracle scores, without any training dependency.

Example:
```python
>>> import numpy as np
>>> from shfcas_fast.pairs import preference_pair_indices
>>> chosen, rejected, margin = preference_pair_indices(np.array([1.0, 3.0, 2.0, 0.0, 5.0]), [3, 2])
>>> chosen.tolist(), rejected.tolist(), margin.tolist()
([1, 2, 1, 4], [0, 0, 2, 3], [2.0, 1.0, 1.0, 5.0])

```

After the oracle (a gold reward model or human annotators) scores the completions of the selected
prompts, every two completions of one prompt with different oracle scores give one pair, the
preferred (``chosen``) completion being the one with the *higher* score. A cost oracle (higher =
worse) must be negated before it gets here: the released scripts of the paper got that sign wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import as_float_vector, group_offsets

__all__ = ["preference_pair_indices"]


def preference_pair_indices(
    oracle_scores: Any, group_sizes: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(chosen, rejected)`` and their ``margin`` within each group.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast.pairs import preference_pair_indices
    >>> chosen, rejected, margin = preference_pair_indices(np.array([0.0, 2.0, 2.0]), 3)
    >>> chosen.tolist(), rejected.tolist(), margin.tolist()
    ([1, 2], [0, 0], [2.0, 2.0])

    ```

    Returns:
        ``chosen`` and ``rejected`` (int64 indices into the items) and ``margin`` (float64, the
        positive score difference), ordered by group, then by the first index of the pair.
    """
    scores = as_float_vector(oracle_scores, "oracle_scores").astype(np.float64, copy=False)
    offsets = group_offsets(group_sizes, scores.shape[0])
    chosen_parts, rejected_parts = [], []
    sizes = np.diff(offsets)
    # Groups of one size share one triangular index pattern: vectorise per distinct size.
    for size in np.unique(sizes):
        if size < 2:
            continue
        starts = offsets[:-1][sizes == size]
        i, j = np.triu_indices(int(size), k=1)
        first = (starts[:, None] + i[None, :]).ravel()
        second = (starts[:, None] + j[None, :]).ravel()
        first_better = scores[first] > scores[second]
        differ = scores[first] != scores[second]
        chosen_parts.append(np.where(first_better, first, second)[differ])
        rejected_parts.append(np.where(first_better, second, first)[differ])
    if not chosen_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    chosen = np.concatenate(chosen_parts).astype(np.int64)
    rejected = np.concatenate(rejected_parts).astype(np.int64)
    order = np.lexsort((np.maximum(chosen, rejected), np.minimum(chosen, rejected)))
    chosen, rejected = chosen[order], rejected[order]
    return chosen, rejected, scores[chosen] - scores[rejected]
