"""Held-out evaluation: mean gold score and the conflict between the policy and the gold oracle.

Example:
```python
>>> import numpy as np
>>> from shfcas_fast.loop.evaluation import conflict_summary
>>> summary = conflict_summary(np.array([-1.0, -2.0, -3.0, -4.0]), np.array([1.0, 2.0, 3.0, 4.0]), 2)
>>> summary["mean_score"], round(summary["mean_abs_pacs"], 6), summary["mean_tau"]  # z-scores divide by std + 1e-8
(2.5, 2.0, -1.0)
>>> conflict_summary(np.array([-1.0, -1.0, -3.0, -4.0]), np.array([1.0, 2.0, 3.0, 4.0]), 2)["degenerate_share"]
0.5

```
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..scoring import DEFAULT_PACS_THRESHOLD, score
from .oracles import Oracle
from .sampling import DEFAULT_NUM_GENERATIONS, DEFAULT_TEMPERATURE, sample_completions

__all__ = ["conflict_summary", "degenerate_completion_share", "evaluate_policy"]


def conflict_summary(logprobs: Any, scores: Any, group_sizes: Any) -> dict[str, float]:
    """Mean score; over the prompts that are not degenerate, mean |PACS| (prompt conflict c), mean Kendall
    tau-b and the share with c above the paper's threshold 1.0 (NaN when every prompt is degenerate); and
    the share of degenerate prompts.

    A prompt is degenerate when its completions' log-probs or scores do not vary (a collapsed policy
    samples the same answer every time): its conflict is undefined, and counting it as zero would make a
    collapsed policy look aligned, so it is left out and counted in ``degenerate_share`` instead.
    """
    conflict = score(logprobs, scores, group_sizes)
    informative = ~np.asarray(conflict.degenerate, dtype=bool)
    taus = conflict.kendall_tau[informative & ~np.isnan(conflict.kendall_tau)]
    conflicts = conflict.group_conflict[informative]
    return {
        "mean_score": float(np.mean(scores)),
        "mean_abs_pacs": float(np.mean(conflicts)) if conflicts.size else float("nan"),
        "mean_tau": float(np.mean(taus)) if taus.size else float("nan"),
        "high_conflict_share": float(np.mean(conflicts > DEFAULT_PACS_THRESHOLD)) if conflicts.size else float("nan"),
        "degenerate_share": float(np.mean(conflict.degenerate)),
    }


def degenerate_completion_share(completions: Sequence[str]) -> float:
    """The share of completions with fewer than two distinct words (empty, one word, or one word repeated):
    the answers of a policy that has collapsed.

    Example:
    ```python
    >>> from shfcas_fast.loop.evaluation import degenerate_completion_share
    >>> degenerate_completion_share(["", "-> -> ->", "refuse", "refuse explain"])
    0.75

    ```
    """
    if not completions:
        return float("nan")
    return float(np.mean([len(set(completion.split())) < 2 for completion in completions]))


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
        the mean gold score) with the :func:`degenerate_completion_share` of its completions.
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
    completions = np.asarray(samples.completions, dtype=object)

    def summary(rows: np.ndarray) -> dict[str, float]:
        return {
            **conflict_summary(samples.logprobs[rows], gold[rows], num_generations),
            "degenerate_completion_share": degenerate_completion_share(list(completions[rows])),
        }

    per_category = {category: summary(completion_categories == category) for category in dict.fromkeys(categories)}
    return {"overall": summary(np.ones(len(completions), dtype=bool)), "per_category": per_category}
