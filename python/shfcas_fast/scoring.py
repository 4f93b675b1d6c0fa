"""The engine's public scoring API: PACS, Kendall tau-b, top-k and conflict-aware selection.

All heavy work runs in the compiled Rust core (``shfcas_fast._core``) with the interpreter released.
Definitions follow SHF-CAS (Liu et al., 2025): per prompt, z-scores of the log-probs ``l`` and the
rewards ``r`` with the population standard deviation, ``z = (v - mean) / (std + 1e-8)``;
``PACS = z_r - z_l``; the prompt's conflict is ``mean |PACS|``; Kendall's tau-b between ``l`` and
``r``. A prompt is *degenerate* (its PACS and conflict are 0 and it is never selected) when it has
fewer than two completions, or when the log-probs or the rewards have no usable spread: for ``n``
values, ``std < 1e-6``, or ``std <= n * 2.2e-16 * |mean|`` (float64's epsilon): a spread that small
is within the rounding error of the computed mean, so a constant prompt counts as constant at any
magnitude. Below ``|mean| = 1e-6 / (n * 2.2e-16)`` (5.6e8 for 8 completions) only the first rule
matters. Moments are taken in float64 on values scaled by a power of two where needed, so every
finite input, up to 1.8e308, gives the right z-scores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from . import _core
from .errors import ShfcasTypeError, ShfcasValueError
from ._validation import as_count, as_float_pair, as_float_vector, as_seed, group_offsets

__all__ = [
    "ConflictScores",
    "PromptScores",
    "pacs",
    "kendall_tau",
    "kendall_distance",
    "top_k",
    "score",
    "select",
    "DEFAULT_PACS_THRESHOLD",
    "DEFAULT_KENDALL_THRESHOLD",
]

#: The paper's selection rule: a prompt is high-conflict when mean |PACS| > 1.0.
DEFAULT_PACS_THRESHOLD = 1.0
#: Ours: a Kendall distance above 0.5 means more discordant than concordant pairs (tau_b < 0).
DEFAULT_KENDALL_THRESHOLD = 0.5

Strategy = Literal["pacs", "kendall", "random"]


@dataclasses.dataclass(frozen=True, eq=False)
class PromptScores:
    """Conflict measures of ``g`` prompts: everything :func:`select` needs.

    ``group_conflict`` (mean |PACS|), ``kendall_tau`` (tau-b, NaN where scipy gives NaN),
    ``kendall_distance`` ((1 - tau_b) / 2) and ``degenerate`` (fewer than two completions, or a
    log-prob or reward standard deviation ``std`` of ``n`` values with ``std < 1e-6`` or
    ``std <= n * 2.2e-16 * |mean|``, the rounding error of their mean), each of length ``g``.
    """

    group_conflict: np.ndarray
    kendall_tau: np.ndarray
    kendall_distance: np.ndarray
    degenerate: np.ndarray

    @property
    def num_groups(self) -> int:
        return int(self.group_conflict.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class ConflictScores(PromptScores):
    """Conflict scores of ``n`` completions grouped into ``g`` prompts.

    The per-prompt fields of :class:`PromptScores`, and per completion (length ``n``):
    ``z_logprob``, ``z_reward`` (per-prompt z-scores, population standard deviation) and the signed
    ``pacs = z_reward - z_logprob`` (0 in degenerate prompts).
    """

    pacs: np.ndarray
    z_logprob: np.ndarray
    z_reward: np.ndarray

    @property
    def num_items(self) -> int:
        return int(self.pacs.shape[0])


def pacs(logprobs: Any, rewards: Any, group_sizes: Any) -> np.ndarray:
    """Signed Proxy-Policy Alignment Conflict Score of every completion.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.pacs(np.array([-3.0, -1.0]), np.array([1.0, 0.0]), 2)  # 1e-8 added to each std
    array([ 1.99999997, -1.99999997])

    ```

    Args:
        logprobs: sequence log-probabilities ``l`` under the policy, shape ``[n]``.
        rewards: proxy rewards ``r`` (higher is better), shape ``[n]``.
        group_sizes: completions per prompt, an int or ``g`` sizes summing to ``n``; the
            completions of one prompt are contiguous.

    Returns:
        float64 ``[n]``: ``z_r - z_l`` per prompt, 0 in degenerate prompts.
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    offsets = group_offsets(group_sizes, lp.shape[0])
    return _core.pacs(lp, rw, offsets)


def kendall_tau(x: Any, y: Any, group_sizes: Any = None) -> Any:
    """Kendall's tau-b, exactly as ``scipy.stats.kendalltau`` (ties corrected).

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    0.33333333333333337

    ```

    Without ``group_sizes``: one float over all ``n`` items in O(n log n), NaN when either vector is
    constant or shorter than 2. With ``group_sizes``: float64 ``[g]``, one tau-b per group.
    Integer inputs are ranked exactly, also beyond 2**53 where float64 would tie distinct values.
    """
    xa, ya = as_float_pair(x, y, "x", "y", exact_order=True)
    if group_sizes is None:
        return float(_core.kendall_tau(xa, ya))
    offsets = group_offsets(group_sizes, xa.shape[0])
    return _core.kendall_tau_grouped(xa, ya, offsets)


def kendall_distance(x: Any, y: Any, group_sizes: Any = None) -> Any:
    """Kendall distance ``(1 - tau_b) / 2`` in [0, 1]; same shapes as :func:`kendall_tau`."""
    return (1.0 - kendall_tau(x, y, group_sizes)) / 2.0


def top_k(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, by score descending, ties to the lower index.

    NaN is never chosen; when fewer than ``k`` non-NaN values exist, all of them are returned.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.top_k(np.array([0.5, np.nan, 2.0, 0.5]), 2)
    array([2, 0])

    ```
    """
    k = as_count(k, "k")
    values = as_float_vector(scores, "scores", finite=False)
    return _core.top_k(values, k)


def score(logprobs: Any, rewards: Any, group_sizes: Any) -> ConflictScores:
    """Every SHF-CAS conflict measure of grouped completions, in one parallel pass.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> rng = np.random.default_rng(0)
    >>> scores = shfcas_fast.score(rng.normal(size=80), rng.normal(size=80), 8)
    >>> scores.group_conflict.shape, scores.pacs.shape
    ((10,), (80,))

    ```

    Args:
        logprobs: sequence log-probabilities under the policy, ``[n]``.
        rewards: proxy rewards, higher is better (negate a cost model first), ``[n]``.
        group_sizes: completions per prompt (an int, or ``g`` sizes summing to ``n``).
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    offsets = group_offsets(group_sizes, lp.shape[0])
    z_l, z_r, pacs_values, conflict, tau, degenerate = _core.score(lp, rw, offsets)
    return ConflictScores(
        pacs=pacs_values,
        z_logprob=z_l,
        z_reward=z_r,
        group_conflict=conflict,
        kendall_tau=tau,
        kendall_distance=(1.0 - tau) / 2.0,
        degenerate=degenerate,
    )


def select(
    scores: PromptScores,
    *,
    budget: int | None = None,
    threshold: float | None = None,
    strategy: Strategy = "pacs",
    seed: int = 0,
) -> np.ndarray:
    """Indices of the prompts (groups) to send for feedback.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> rng = np.random.default_rng(0)
    >>> scores = shfcas_fast.score(rng.normal(size=800), rng.normal(size=800), 8)
    >>> len(shfcas_fast.select(scores, budget=5))
    5

    ```

    Strategies:
        - ``"pacs"``: groups with ``group_conflict > threshold`` (1.0 when neither ``budget`` nor
          ``threshold`` is given), the ``budget`` highest if a budget is given; highest first.
        - ``"kendall"``: the same on ``kendall_distance`` (default threshold 0.5).
        - ``"random"``: ``budget`` non-degenerate groups drawn uniformly from ``seed`` (the paper's
          baseline), in increasing index order.

    Degenerate groups are never chosen.
    """
    if not isinstance(scores, PromptScores):
        raise ShfcasTypeError(f"scores must be a ConflictScores from shfcas_fast.score, got {type(scores).__name__}")
    if budget is not None:
        budget = as_count(budget, "budget")
    if threshold is not None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
            raise ShfcasTypeError(f"threshold must be a number, got {type(threshold).__name__}")
        try:
            threshold = float(threshold)
        except OverflowError:
            raise ShfcasValueError("threshold must be finite, got an int beyond the float range") from None
        if not math.isfinite(threshold):
            raise ShfcasValueError(f"threshold must be finite, got {threshold!r}")
    eligible = ~np.asarray(scores.degenerate, dtype=bool)

    if strategy == "random":
        if budget is None:
            raise ShfcasValueError('strategy="random" needs a budget')
        if threshold is not None:
            raise ShfcasValueError('strategy="random" takes no threshold')
        candidates = np.flatnonzero(eligible)
        take = min(budget, candidates.shape[0])
        chosen = np.random.default_rng(as_seed(seed)).choice(candidates, size=take, replace=False)
        return np.sort(chosen).astype(np.int64)

    if strategy == "pacs":
        values, default = scores.group_conflict, DEFAULT_PACS_THRESHOLD
    elif strategy == "kendall":
        values, default = scores.kendall_distance, DEFAULT_KENDALL_THRESHOLD
    else:
        raise ShfcasValueError(f'strategy must be "pacs", "kendall" or "random", got {strategy!r}')
    if threshold is None and budget is None:
        threshold = default
    # NaN marks what may not be chosen; top_k never returns NaN.
    masked = np.where(eligible, values, np.nan)
    if threshold is not None:
        masked = np.where(masked > threshold, masked, np.nan)
    k = budget if budget is not None else int(np.count_nonzero(~np.isnan(masked)))
    return top_k(masked, k)
