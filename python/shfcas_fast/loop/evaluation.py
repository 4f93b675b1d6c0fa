"""Held-out evaluation: mean gold score and the conflict between the policy and the gold oracle.

Example:
```python
>>> import numpy as np
>>> from shfcas_fast.loop.evaluation import conflict_summary
>>> summary = conflict_summary(np.array([-1.0, -2.0, -3.0, -4.0]), np.array([1.0, 2.0, 3.0, 4.0]), 2)
>>> summary["mean_score"], round(summary["mean_abs_pacs"], 6), summary["mean_tau"]  # z-scores divide by std + 1e-8
(2.5, 2.0, -1.0)

```
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..scoring import DEFAULT_PACS_THRESHOLD, score
from .oracles import Oracle
from .sampling import DEFAULT_NUM_GENERATIONS, DEFAULT_TEMPERATURE, sample_completions

__all__ = ["conflict_summary", "evaluate_policy"]


def conflict_summary(logprobs: Any, scores: Any, group_sizes: Any) -> dict[str, float]:
    """Mean score, mean |PACS| (prompt conflict c, 0 for degenerate prompts), mean Kendall tau-b (NaN
    prompts left out), the share of prompts with c above the paper's threshold 1.0, and the share of
    degenerate prompts."""
    conflict = score(logprobs, scores, group_sizes)
    taus = conflict.kendall_tau[~np.isnan(conflict.kendall_tau)]
    return {
        "mean_score": float(np.mean(scores)),
        "mean_abs_pacs": float(np.mean(conflict.group_conflict)),
        "mean_tau": float(np.mean(taus)) if taus.size else float("nan"),
        "high_conflict_share": float(np.mean(conflict.group_conflict > DEFAULT_PACS_THRESHOLD)),
        "degenerate_share": float(np.mean(conflict.degenerate)),
    }


def evaluate_policy(
    model: Any,
    processing_class: Any,
    prompts: Sequence[str],
    categories: Sequence[str],
    oracle: Oracle,
    *,
    num_generations: int = DEFAULT_NUM_GENERATIONS,
    temperature: float = DEFAULT_TEMPERATURE,
    max_new_tokens: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Sample held-out completions, score them with the gold ``oracle``, and summarise.

    Returns:
        ``{"overall": summary, "per_category": {category: summary}}`` where each summary is
        :func:`conflict_summary` of the policy's log-probs against the gold scores (``mean_score`` is then
        the mean gold score).
    """
    if len(categories) != len(prompts):
        raise ValueError(f"categories must have one entry per prompt, got {len(categories)} for {len(prompts)}")
    samples = sample_completions(
        model,
        processing_class,
        prompts,
        num_generations=num_generations,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        progress=progress,
    )
    gold = oracle.score(samples.completion_prompts, samples.completions)
    completion_categories = np.repeat(np.asarray(categories, dtype=object), num_generations)
    per_category = {}
    for category in dict.fromkeys(categories):
        rows = completion_categories == category
        per_category[category] = conflict_summary(samples.logprobs[rows], gold[rows], num_generations)
    return {"overall": conflict_summary(samples.logprobs, gold, num_generations), "per_category": per_category}
