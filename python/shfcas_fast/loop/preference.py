"""Preference pairs from oracle scores as a TRL preference ``datasets.Dataset`` (docs/method.md, section 3, step 6).

Example:
```python
>>> from shfcas_fast.loop.preference import preference_pairs
>>> pairs = preference_pairs(["q ", "q "], ["bad", "good"], [0.0, 1.0], group_sizes=2)
>>> pairs[0]
{'prompt': 'q ', 'chosen': 'good', 'rejected': 'bad', 'margin': 1.0}

```
"""

from __future__ import annotations

from typing import Any, Sequence

from datasets import Dataset

from .._validation import as_float_vector
from ..pairs import preference_pair_indices
from .oracles import _check_lengths

__all__ = ["preference_pairs", "PREFERENCE_COLUMNS"]

#: TRL's explicit-prompt preference columns, plus the margin that ``RewardTrainer`` uses.
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "margin")


def preference_pairs(
    prompts: Sequence[str], completions: Sequence[str], oracle_scores: Any, group_sizes: Any
) -> Dataset:
    """Every pair of completions with different oracle scores within a prompt, preferred = higher score.

    Args:
        prompts: the prompt of each completion (``n`` strings; one prompt repeated over its group).
        completions: ``n`` completion texts, each group contiguous.
        oracle_scores: ``n`` scores, higher = better (negate a cost first; :class:`RewardModelOracle`
            does it for ``is_cost=True``).
        group_sizes: completions per prompt (an int, or one size per prompt).

    Returns:
        A ``Dataset`` with columns ``prompt``, ``chosen``, ``rejected`` and ``margin`` (the positive score
        difference), in group order.
    """
    _check_lengths(prompts, completions)
    scores = as_float_vector(oracle_scores, "oracle_scores")
    if scores.shape[0] != len(completions):
        raise ValueError(
            f"oracle_scores and completions must have the same length, got {scores.shape[0]} and {len(completions)}"
        )
    chosen, rejected, margin = preference_pair_indices(scores, group_sizes)
    return Dataset.from_dict(
        {
            "prompt": [prompts[i] for i in chosen],
            "chosen": [completions[i] for i in chosen],
            "rejected": [completions[i] for i in rejected],
            "margin": margin.tolist(),
        }
    )
