"""Independent reference for the tests: the scoring definitions transcribed into float64 numpy, one group at a time.

Deliberately naive (a Python loop over groups, ``np.std`` and ``scipy.stats.kendalltau``), so that
it shares no code and no algorithm with the engine or the baseline.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats

Z_SCORE_EPS = 1e-8
DEGENERATE_STD = 1e-6
# A standard deviation within n * eps * |mean| is the rounding of the mean of n values, not spread.
DEGENERATE_RELATIVE_STD = np.finfo(np.float64).eps


class ReferenceScores(NamedTuple):
    pacs: np.ndarray
    z_logprob: np.ndarray
    z_reward: np.ndarray
    group_conflict: np.ndarray
    kendall_tau: np.ndarray
    kendall_distance: np.ndarray
    degenerate: np.ndarray


def sizes_of(group_sizes: int | np.ndarray, n: int) -> np.ndarray:
    """Group sizes as an int64 array, expanding the ``int`` form."""
    if isinstance(group_sizes, (int, np.integer)):
        return np.full(n // int(group_sizes), int(group_sizes), dtype=np.int64)
    return np.asarray(group_sizes, dtype=np.int64)


def scipy_tau(x: np.ndarray, y: np.ndarray) -> float:
    """``scipy.stats.kendalltau(x, y).statistic`` as a float, NaN where scipy gives NaN.

    scipy ranks the values in their own dtype: int64 exactly (not uint64 above 2**63: it gives NaN).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant and too-short inputs
        return float(stats.kendalltau(np.asarray(x), np.asarray(y)).statistic)


def grouped_scipy_tau(x: np.ndarray, y: np.ndarray, group_sizes: int | np.ndarray) -> np.ndarray:
    """One scipy tau-b per group."""
    bounds = np.concatenate([[0], np.cumsum(sizes_of(group_sizes, len(x)))])
    return np.array([scipy_tau(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.float64)


def zscore(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """z-scores of one group and whether its spread is degenerate, computed on ``values / max|values|``.

    Dividing by the largest magnitude first keeps every finite input finite through the mean and
    the squares (near 1e308 both overflow otherwise); the absolute thresholds are divided likewise.
    """
    magnitude = float(np.abs(values).max()) or 1.0
    unit = values / magnitude
    mean, std = unit.mean(), unit.std(ddof=0)
    z = (unit - mean) / (std + Z_SCORE_EPS / magnitude)
    degenerate = std < DEGENERATE_STD / magnitude or std <= len(values) * DEGENERATE_RELATIVE_STD * abs(mean)
    return z, bool(degenerate)


def score(logprobs: np.ndarray, rewards: np.ndarray, group_sizes: int | np.ndarray) -> ReferenceScores:
    """Every conflict measure, group by group, in float64."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    sizes = sizes_of(group_sizes, len(logprobs))
    z_l = np.zeros(len(logprobs))
    z_r = np.zeros(len(logprobs))
    pacs = np.zeros(len(logprobs))
    conflict = np.zeros(len(sizes))
    degenerate = np.zeros(len(sizes), dtype=bool)
    start = 0
    for group, size in enumerate(sizes):
        items = slice(start, start + size)
        start += size
        if size == 0:
            degenerate[group] = True
            continue
        (z_l[items], degenerate_l), (z_r[items], degenerate_r) = zscore(logprobs[items]), zscore(rewards[items])
        degenerate[group] = size < 2 or degenerate_l or degenerate_r
        if not degenerate[group]:
            pacs[items] = z_r[items] - z_l[items]
            conflict[group] = np.abs(pacs[items]).mean()
    tau = grouped_scipy_tau(logprobs, rewards, sizes)
    return ReferenceScores(pacs, z_l, z_r, conflict, tau, (1.0 - tau) / 2.0, degenerate)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest non-NaN scores by a full stable sort: descending score, then ascending index."""
    candidates = np.flatnonzero(~np.isnan(scores))
    order = sorted(candidates.tolist(), key=lambda i: (-scores[i], i))
    return np.array(order[:k], dtype=np.int64)
