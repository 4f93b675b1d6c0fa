"""Pure-PyTorch baseline of the scoring engine: the yardstick the benchmarks measure the engine against.

It is written the way a PyTorch engineer would write these functions without a compiled core:
vectorised over prompts (segment sums with ``index_add_`` over a group id per item, per-prompt
Kendall as the signs of all pairs of a padded ``[groups, width]`` layout, processed in bounded
chunks), float64 accumulation, and an O(n log n) global Kendall whose only Python loop runs over
the log2(n) merge levels. Signatures, input checks and return types are those of
:mod:`shfcas_fast.scoring`; ``select`` *is* the engine's, since it only applies selection rules to a
:class:`~shfcas_fast.scoring.ConflictScores` and has no numerical work of its own.

Example:
```python
>>> import numpy as np
>>> from shfcas_fast import baseline
>>> rng = np.random.default_rng(0)
>>> scores = baseline.score(rng.normal(size=80), rng.normal(size=80), 8)
>>> scores.group_conflict.shape, scores.kendall_tau.shape
((10,), (10,))

```
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from . import _core
from ._validation import as_count, as_float_pair, as_float_vector, group_offsets
from .scoring import ConflictScores, select

__all__ = ["pacs", "kendall_tau", "kendall_distance", "top_k", "score", "select"]

#: Upper bound on the elements of one ``[groups, pairs]`` chunk of per-group pairwise signs.
PAIRWISE_CHUNK_ELEMENTS = 1 << 22
#: Block length of the global Kendall merge sort below which inversions are counted pairwise.
MERGE_BASE_BLOCK = 16


def pacs(logprobs: Any, rewards: Any, group_sizes: Any) -> np.ndarray:
    """Signed PACS ``z_r - z_l`` of every completion, 0 in degenerate prompts.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast import baseline
    >>> baseline.pacs(np.array([-3.0, -1.0]), np.array([1.0, 0.0]), 2).round(6)  # z-scores divide by std + 1e-8
    array([ 2., -2.])

    ```

    Same contract as :func:`shfcas_fast.pacs`.
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    offsets = group_offsets(group_sizes, lp.shape[0])
    return _grouped_conflict(lp, rw, offsets).pacs.numpy()


def kendall_tau(x: Any, y: Any, group_sizes: Any = None) -> Any:
    """Kendall's tau-b exactly as ``scipy.stats.kendalltau``: one float, or one per group.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast import baseline
    >>> baseline.kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))  # 1 / sqrt(3) / sqrt(3), as scipy
    0.33333333333333337

    ```

    Same contract as :func:`shfcas_fast.kendall_tau`: without ``group_sizes`` an O(n log n) merge
    count over all items; with them, float64 ``[g]``, NaN where scipy gives NaN.
    """
    xa, ya = as_float_pair(x, y, "x", "y", exact_order=True)
    if group_sizes is None:
        return _global_tau(torch.from_numpy(xa), torch.from_numpy(ya))
    offsets = group_offsets(group_sizes, xa.shape[0])
    return _grouped_tau(torch.from_numpy(xa), torch.from_numpy(ya), torch.from_numpy(offsets)).numpy()


def kendall_distance(x: Any, y: Any, group_sizes: Any = None) -> Any:
    """Kendall distance ``(1 - tau_b) / 2`` in [0, 1]; same shapes as :func:`kendall_tau`.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast import baseline
    >>> baseline.kendall_distance(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))
    1.0

    ```
    """
    return (1.0 - kendall_tau(x, y, group_sizes)) / 2.0


def top_k(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, by score descending, ties to the lower index, NaN never chosen.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast import baseline
    >>> baseline.top_k(np.array([0.5, np.nan, 2.0, 0.5]), 2)
    array([2, 0])

    ```

    ``torch.topk`` finds the k-th largest value; the items tied with it are then taken in index
    order, because ``torch.topk`` itself breaks ties arbitrarily.
    """
    k = as_count(k, "k")
    values = torch.from_numpy(as_float_vector(scores, "scores", finite=False))
    is_number = ~torch.isnan(values)
    k = min(k, int(is_number.sum()))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    # NaN would sort above everything in torch.topk; -inf keeps it out unless real -inf ties it.
    ranked = torch.where(is_number, values, -math.inf)
    kth_largest = torch.topk(ranked, k, sorted=False).values.min()
    above = torch.nonzero(ranked > kth_largest).squeeze(1)
    tied = torch.nonzero(is_number & (values == kth_largest)).squeeze(1)
    chosen = torch.cat([above, tied[: k - above.shape[0]]]).sort().values
    order = torch.sort(values[chosen], descending=True, stable=True).indices
    return chosen[order].numpy()


def score(logprobs: Any, rewards: Any, group_sizes: Any) -> ConflictScores:
    """Every SHF-CAS conflict measure of grouped completions (same contract as :func:`shfcas_fast.score`).

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast import baseline
    >>> rng = np.random.default_rng(0)
    >>> scores = baseline.score(rng.normal(size=80), rng.normal(size=80), 8)
    >>> scores.pacs.shape, scores.degenerate.dtype
    ((80,), dtype('bool'))

    ```
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    offsets = group_offsets(group_sizes, lp.shape[0])
    conflict = _grouped_conflict(lp, rw, offsets)
    tau = _grouped_tau(torch.from_numpy(lp), torch.from_numpy(rw), torch.from_numpy(offsets)).numpy()
    return ConflictScores(
        pacs=conflict.pacs.numpy(),
        z_logprob=conflict.z_logprob.numpy(),
        z_reward=conflict.z_reward.numpy(),
        group_conflict=conflict.group_conflict.numpy(),
        kendall_tau=tau,
        kendall_distance=(1.0 - tau) / 2.0,
        degenerate=conflict.degenerate.numpy(),
        group_sizes=np.diff(offsets),
    )


class _GroupedConflict(NamedTuple):
    """Per-prompt z-scores, PACS and conflict of ``n`` items, as float64 torch tensors."""

    z_logprob: torch.Tensor
    z_reward: torch.Tensor
    pacs: torch.Tensor
    group_conflict: torch.Tensor
    degenerate: torch.Tensor


def _grouped_conflict(logprobs: np.ndarray, rewards: np.ndarray, offsets: np.ndarray) -> _GroupedConflict:
    """Per-prompt z-scores, PACS, conflict and the degenerate flag, vectorised with one group id per item."""
    sizes = torch.from_numpy(offsets).diff()
    group_id = torch.repeat_interleave(torch.arange(sizes.shape[0]), sizes)
    z_logprob, degenerate_logprob = _zscore(torch.from_numpy(logprobs).double(), group_id, sizes)
    z_reward, degenerate_reward = _zscore(torch.from_numpy(rewards).double(), group_id, sizes)
    degenerate = (sizes < 2) | degenerate_logprob | degenerate_reward
    pacs_values = torch.where(degenerate[group_id], 0.0, z_reward - z_logprob)
    group_conflict = _segment_mean(pacs_values.abs(), group_id, sizes)
    return _GroupedConflict(z_logprob, z_reward, pacs_values, group_conflict, degenerate)


def _segment_mean(values: torch.Tensor, group_id: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` per group (0 for an empty group)."""
    sums = values.new_zeros(sizes.shape[0]).index_add_(0, group_id, values)
    return sums / sizes.clamp(min=1)


def _zscore(values: torch.Tensor, group_id: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group z-scores with the population standard deviation, and whether that deviation is degenerate.

    Degenerate: ``std < DEGENERATE_STD``, or ``std <= size * DEGENERATE_RELATIVE_STD * |mean|`` (the
    rounding error of a computed mean, so a constant group of large values is never taken for spread).
    """
    # Groups of values above 2^401 are scaled by a power of two (exact) into [2^400, 2^401), where
    # sums and squares cannot overflow; all moments below are in these scaled units.
    max_abs = values.new_zeros(sizes.shape[0]).scatter_reduce_(0, group_id, values.abs(), "amax")
    binary_exponent = torch.frexp(max_abs).exponent  # max_abs < 2^binary_exponent
    scale = torch.ldexp(torch.ones_like(max_abs), (401 - binary_exponent).clamp(max=0))
    scaled = values * scale[group_id]
    # Two passes (mean, then squared deviations): one-pass E[x^2] - E[x]^2 cancels badly for
    # log-probs around -300 that differ by less than 1. The mean deviation then corrects the mean,
    # so that a constant group gets its exact value and z-scores of 0.
    first_mean = _segment_mean(scaled, group_id, sizes)
    deviation = scaled - first_mean[group_id]
    mean = first_mean + _segment_mean(deviation, group_id, sizes)
    std = _segment_mean(deviation.square(), group_id, sizes).sqrt()
    z = (scaled - mean[group_id]) / (std + _core.Z_EPSILON * scale)[group_id]
    degenerate = (std < _core.DEGENERATE_STD * scale) | (std <= sizes * _core.DEGENERATE_RELATIVE_STD * mean.abs())
    return z, degenerate


def _grouped_tau(x: torch.Tensor, y: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Tau-b of every group from all its pairwise signs (O(N^2) per group), float64 ``[g]``."""
    starts, sizes = offsets[:-1], offsets.diff()
    tau = torch.full((sizes.shape[0],), math.nan, dtype=torch.float64)
    scorable = torch.nonzero(sizes >= 2).squeeze(1)
    # Pad each group only to the width of its power-of-two size class, so that one long prompt
    # does not widen the padding of millions of short ones.
    size_class = torch.ceil(torch.log2(sizes[scorable].double()))
    for group_class in torch.unique(size_class):
        members = scorable[size_class == group_class]
        width = int(sizes[members].max())
        for chunk in members.split(max(1, PAIRWISE_CHUNK_ELEMENTS // (width * (width - 1) // 2))):
            tau[chunk] = _padded_tau(x, y, starts[chunk], sizes[chunk], width)
    return tau


def _padded_tau(x: torch.Tensor, y: torch.Tensor, starts: torch.Tensor, sizes: torch.Tensor, width: int) -> torch.Tensor:
    """Tau-b of groups of at most ``width`` items, from the signs of all ``width * (width - 1) / 2`` pairs."""
    column = torch.arange(width)
    index = torch.where(column < sizes[:, None], starts[:, None] + column, starts[:, None])
    first, second = torch.triu_indices(width, width, offset=1)
    # first < second, so a pair is real when its second item is.
    real_pair = (second < sizes[:, None]).to(x.dtype)
    x_signs = _pair_signs(x[index], first, second) * real_pair
    y_signs = _pair_signs(y[index], first, second) * real_pair
    concordant_minus_discordant = (x_signs * y_signs).sum(1, dtype=torch.float64)
    untied_x = x_signs.abs().sum(1, dtype=torch.float64)
    untied_y = y_signs.abs().sum(1, dtype=torch.float64)
    return (concordant_minus_discordant / torch.sqrt(untied_x * untied_y)).clamp(-1.0, 1.0)


def _pair_signs(values: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``sign(v[first] - v[second])`` per row; exact, since a float difference is 0 only for equal floats."""
    return torch.sign(values[:, first] - values[:, second])


def _global_tau(x: torch.Tensor, y: torch.Tensor) -> float:
    """Tau-b over all items in O(n log n), with scipy's tie handling and 64-bit pair counts."""
    n = x.shape[0]
    if n < 2:
        return math.nan
    # Sort by (x, y): stable sorts, the secondary key first.
    order = torch.sort(y, stable=True).indices
    order = order[torch.sort(x[order], stable=True).indices]
    x_sorted, y_by_x = x[order], y[order]
    x_changes = x_sorted[1:] != x_sorted[:-1]
    x_ties = _pairs_within_runs(x_changes)
    joint_ties = _pairs_within_runs(x_changes | (y_by_x[1:] != y_by_x[:-1]))
    # Within a run of tied x, y is ascending, so every strict inversion of y is a discordant pair.
    discordant, y_sorted = _merge_sort_counting_inversions(y_by_x)
    y_ties = _pairs_within_runs(y_sorted[1:] != y_sorted[:-1])
    total = n * (n - 1) // 2
    if x_ties == total or y_ties == total:
        return math.nan
    concordant_minus_discordant = total - x_ties - y_ties + joint_ties - 2 * discordant
    tau = concordant_minus_discordant / math.sqrt(total - x_ties) / math.sqrt(total - y_ties)
    return min(1.0, max(-1.0, tau))


def _pairs_within_runs(changes: torch.Tensor) -> int:
    """Number of pairs inside runs of equal neighbours, where ``changes[i]`` marks a new run at ``i + 1``."""
    run_starts = torch.nonzero(changes).squeeze(1) + 1
    edges = torch.cat([run_starts.new_zeros(1), run_starts, run_starts.new_full((1,), changes.shape[0] + 1)])
    lengths = edges.diff()
    return int((lengths * (lengths - 1) // 2).sum())


def _merge_sort_counting_inversions(values: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Count the pairs ``i < j`` with ``values[i] > values[j]`` and return the values sorted.

    Bottom-up merge sort: blocks of ``MERGE_BASE_BLOCK`` items are counted pairwise and sorted, then
    every level merges all pairs of sorted blocks at once with a batched stable sort, so the Python
    loop runs log2(n) times. In a stable merge of sorted halves, the right-half item from source
    column ``s`` (``s >= width``) landing at position ``p`` passes ``s - p`` larger left-half items.
    """
    n = values.shape[0]
    padded_length = max(MERGE_BASE_BLOCK, 1 << (n - 1).bit_length())
    # +inf padding at the end is never strictly greater than anything after it: no extra inversions.
    padded = torch.cat([values, values.new_full((padded_length - n,), math.inf)])
    base_blocks = padded.view(-1, MERGE_BASE_BLOCK)
    first, second = torch.triu_indices(MERGE_BASE_BLOCK, MERGE_BASE_BLOCK, offset=1)
    inversions = int((base_blocks[:, first] > base_blocks[:, second]).sum())
    merged = base_blocks.sort(dim=1).values.view(-1)
    width = MERGE_BASE_BLOCK
    while width < padded_length:
        pairs_of_blocks = torch.sort(merged.view(-1, 2 * width), dim=1, stable=True)
        source = pairs_of_blocks.indices
        position = torch.arange(2 * width)
        inversions += int(torch.where(source >= width, source - position, 0).sum())
        merged = pairs_of_blocks.values.view(-1)
        width *= 2
    return inversions, merged[:n]
