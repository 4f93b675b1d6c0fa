"""Paired statistics over seeds: the difference between two arms run on the same seeds.

Example:
```python
>>> import numpy as np
>>> from shfcas_fast.experiments.statistics import paired_difference
>>> result = paired_difference(np.array([0.3, 0.5, 0.4, 0.6, 0.5]), np.array([0.2, 0.3, 0.4, 0.4, 0.3]))
>>> round(result.mean, 3), result.positive, result.n
(0.14, 4, 5)

```

Every interval is a 95% interval. Needs scipy (the ``demo`` extra) for the t and Wilcoxon distributions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ..errors import ShfcasValueError

__all__ = ["PairedDifference", "bootstrap_mean_ci", "holm", "minimum_detectable_effect", "paired_difference", "t_mean_ci"]

#: Two-sided level of every interval and test.
ALPHA = 0.05
#: Power at which the minimum detectable effect is stated.
POWER = 0.8
BOOTSTRAP_RESAMPLES = 10_000


def _differences(treatment: Any, control: Any) -> np.ndarray:
    a = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ShfcasValueError(f"treatment and control must be two vectors of one length, got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ShfcasValueError(f"a paired comparison needs at least 2 seeds, got {a.shape[0]}")
    return a - b


def t_mean_ci(values: Any, alpha: float = ALPHA) -> tuple[float, float]:
    """Student-t confidence interval of the mean: mean -/+ t(1 - alpha/2, n - 1) * sd / sqrt(n), sd with
    ddof = 1."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    half = float(t.ppf(1 - alpha / 2, n - 1)) * float(np.std(x, ddof=1)) / np.sqrt(n)
    return float(np.mean(x) - half), float(np.mean(x) + half)


def bootstrap_mean_ci(
    values: Any, alpha: float = ALPHA, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: ``resamples`` resamples of the seeds with replacement, the
    alpha/2 and 1 - alpha/2 quantiles of their means."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.shape[0], size=(resamples, x.shape[0]))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def minimum_detectable_effect(values: Any, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest mean difference a two-sided paired t test at ``alpha`` detects with probability
    ``power`` given the observed spread: (t(1 - alpha/2, n-1) + t(power, n-1)) * sd / sqrt(n)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * np.std(x, ddof=1) / np.sqrt(n))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Example:
    ```python
    >>> from shfcas_fast.experiments.statistics import holm
    >>> holm([0.01, 0.04])
    [0.02, 0.04]

    ```
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.shape[0]
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[index])))
        adjusted[index] = running
    return [float(value) for value in adjusted]


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Treatment minus control over the same seeds.

    Attributes:
        n: seeds; mean: mean difference; positive: seeds where the treatment is higher.
        t_ci, bootstrap_ci: 95% intervals of the mean difference.
        wilcoxon_p: two-sided Wilcoxon signed-rank p-value (1.0 when every difference is zero).
        mde: minimum detectable effect of a paired t test (alpha 0.05, power 0.8) at this spread.
        differences: the per-seed differences.
    """

    n: int
    mean: float
    positive: int
    t_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]
    wilcoxon_p: float
    mde: float
    differences: list[float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def paired_difference(treatment: Any, control: Any, seed: int = 0) -> PairedDifference:
    """Per-seed differences ``treatment - control`` with their t and bootstrap intervals, Wilcoxon test and
    minimum detectable effect."""
    from scipy.stats import wilcoxon

    d = _differences(treatment, control)
    wilcoxon_p = 1.0 if not np.any(d) else float(wilcoxon(d).pvalue)
    return PairedDifference(
        n=int(d.shape[0]),
        mean=float(np.mean(d)),
        positive=int(np.sum(d > 0)),
        t_ci=t_mean_ci(d),
        bootstrap_ci=bootstrap_mean_ci(d, seed=seed),
        wilcoxon_p=wilcoxon_p,
        mde=minimum_detectable_effect(d),
        differences=d.tolist(),
    )
