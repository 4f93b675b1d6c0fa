"""CPU benchmarks of the scoring engine against its pure-PyTorch baseline, scipy and numpy (issue 2).

Usage:
```bash
pytest benches/bench_engine.py --benchmark-only                       # the issue's sizes: 10M pairs
SHFCAS_BENCH_PAIRS=100000 pytest benches/bench_engine.py --benchmark-only  # a quick check
python benches/report_engine.py                                       # the Markdown table for the README
```

Every :class:`Comparison` times one engine call against one yardstick on the same inputs: ``n``
completions in prompts of 8 (10M pairs = 1.25M prompts x 8 by default). The scipy loop over
per-prompt Kendall runs on a sample of prompts and is extrapolated to all of them. Targets on a
2-core machine (issue 2): ``score`` >= 10x the baseline, batched tau-b >= 5x the baseline and
>= 1000x a scipy loop, global tau-b >= 3x scipy, ``top_k`` of 10,000 >= 2x ``np.argpartition``
plus sorting the k. Keyed scoring (``groups=``, rows shuffled, keys like ``"prompt-0001234"`` or
int64 ids) may cost at most 2x the contiguous ``group_sizes`` path: a "speed-up" >= 0.5x over it.
The benchmarks are not part of the test run (``testpaths`` is ``tests/``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

import shfcas_fast
from shfcas_fast import baseline

#: Completions scored per benchmark; override with the ``SHFCAS_BENCH_PAIRS`` environment variable.
DEFAULT_PAIRS = 10_000_000
GROUP_SIZE = 8
TOP_K = 10_000
#: Prompts timed in the scipy loop; its time is scaled to all prompts.
SCIPY_SAMPLE_GROUPS = 2_000


@dataclasses.dataclass(frozen=True)
class Inputs:
    """``n`` completions in prompts of ``GROUP_SIZE``: sequence log-probs and proxy rewards.

    For keyed scoring, the same rows also carry shuffled prompt keys (``GROUP_SIZE`` rows per key):
    ``prompt_ids`` (int64) and ``prompt_keys`` (Arrow strings ``"prompt-"`` + the id in 7 digits).
    """

    logprobs: np.ndarray
    rewards: np.ndarray
    prompt_ids: np.ndarray
    prompt_keys: pa.Array

    @classmethod
    def generate(cls, num_pairs: int, seed: int = 0) -> Inputs:
        """Weakly correlated log-probs and rewards, like a policy and a proxy that barely agree."""
        rng = np.random.default_rng(seed)
        logprobs = -120.0 + 25.0 * rng.standard_normal(num_pairs)
        rewards = 0.01 * (logprobs + 120.0) + rng.standard_normal(num_pairs)
        prompt_ids = rng.permutation(num_pairs).astype(np.int64) // GROUP_SIZE
        return cls(logprobs, rewards, prompt_ids, prompt_strings(prompt_ids))

    @functools.cached_property
    def key_groups(self) -> shfcas_fast.KeyGroups:
        """The grouping of ``prompt_keys``, made once: scoring with it times the reordering alone."""
        return shfcas_fast.group_keys(self.prompt_keys)

    @property
    def num_pairs(self) -> int:
        return int(self.logprobs.shape[0])

    @property
    def num_groups(self) -> int:
        return self.num_pairs // GROUP_SIZE

    @property
    def sample_groups(self) -> int:
        return min(SCIPY_SAMPLE_GROUPS, self.num_groups)

    @property
    def k(self) -> int:
        return min(TOP_K, self.num_pairs)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One engine call against one yardstick on the same :class:`Inputs`, and the speed-up asked for."""

    name: str
    engine: Callable[[Inputs], Any]
    yardstick_name: str
    yardstick: Callable[[Inputs], Any]
    target: float | None
    #: The yardstick runs on ``Inputs.sample_groups`` prompts only and is extrapolated to all.
    sampled: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} vs {self.yardstick_name}"

    def yardstick_scale(self, inputs: Inputs) -> float:
        """Factor from the yardstick's measured time to its time on all of ``inputs``."""
        return inputs.num_groups / inputs.sample_groups if self.sampled else 1.0


def prompt_strings(ids: np.ndarray) -> pa.Array:
    """Arrow strings ``"prompt-0001234"`` of ``ids`` < 10**7, built from their buffers (a Python loop
    over 10M rows would take longer than the benchmark)."""
    prefix = np.frombuffer(b"prompt-", dtype=np.uint8)
    digits = (ids[:, None] // 10 ** np.arange(6, -1, -1)) % 10 + ord("0")
    width = prefix.shape[0] + digits.shape[1]
    data = np.concatenate([np.broadcast_to(prefix, (ids.shape[0], prefix.shape[0])), digits], axis=1).astype(np.uint8)
    offsets = np.arange(0, (ids.shape[0] + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), ids.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def scipy_tau_per_group(x: np.ndarray, y: np.ndarray, num_groups: int) -> np.ndarray:
    """What users write today: ``scipy.stats.kendalltau`` in a loop over prompts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(
            [
                stats.kendalltau(x[start : start + GROUP_SIZE], y[start : start + GROUP_SIZE]).statistic
                for start in range(0, num_groups * GROUP_SIZE, GROUP_SIZE)
            ]
        )


def argpartition_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """numpy's usual top-k: partition, then sort only the k (ties and NaN not handled)."""
    candidates = np.argpartition(scores, scores.shape[0] - k)[scores.shape[0] - k :]
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def engine_batched_tau(inputs: Inputs) -> np.ndarray:
    return shfcas_fast.kendall_tau(inputs.logprobs, inputs.rewards, GROUP_SIZE)


def engine_global_tau(inputs: Inputs) -> float:
    return shfcas_fast.kendall_tau(inputs.logprobs, inputs.rewards)


def engine_top_k(inputs: Inputs) -> np.ndarray:
    return shfcas_fast.top_k(inputs.rewards, inputs.k)


def engine_score(inputs: Inputs) -> shfcas_fast.ConflictScores:
    return shfcas_fast.score(inputs.logprobs, inputs.rewards, GROUP_SIZE)


COMPARISONS = [
    Comparison(
        "score",
        engine_score,
        "baseline",
        lambda inputs: baseline.score(inputs.logprobs, inputs.rewards, GROUP_SIZE),
        target=10.0,
    ),
    Comparison(
        "batched tau-b",
        engine_batched_tau,
        "baseline",
        lambda inputs: baseline.kendall_tau(inputs.logprobs, inputs.rewards, GROUP_SIZE),
        target=5.0,
    ),
    Comparison(
        "batched tau-b",
        engine_batched_tau,
        "scipy loop",
        lambda inputs: scipy_tau_per_group(inputs.logprobs, inputs.rewards, inputs.sample_groups),
        target=1000.0,
        sampled=True,
    ),
    Comparison(
        "global tau-b",
        engine_global_tau,
        "scipy.stats.kendalltau",
        lambda inputs: stats.kendalltau(inputs.logprobs, inputs.rewards),
        target=3.0,
    ),
    Comparison(
        "global tau-b",
        engine_global_tau,
        "baseline",
        lambda inputs: baseline.kendall_tau(inputs.logprobs, inputs.rewards),
        target=None,
    ),
    Comparison(
        "top_k",
        engine_top_k,
        "np.argpartition + sort",
        lambda inputs: argpartition_top_k(inputs.rewards, inputs.k),
        target=2.0,
    ),
    Comparison(
        "top_k",
        engine_top_k,
        "baseline",
        lambda inputs: baseline.top_k(inputs.rewards, inputs.k),
        target=None,
    ),
    Comparison(
        "score, shuffled string keys",
        lambda inputs: shfcas_fast.score(inputs.logprobs, inputs.rewards, groups=inputs.prompt_keys),
        "score, contiguous group_sizes",
        engine_score,
        target=0.5,
    ),
    Comparison(
        "score, shuffled int64 keys",
        lambda inputs: shfcas_fast.score(inputs.logprobs, inputs.rewards, groups=inputs.prompt_ids),
        "score, contiguous group_sizes",
        engine_score,
        target=0.5,
    ),
    Comparison(
        "group_keys, shuffled string keys",
        lambda inputs: shfcas_fast.group_keys(inputs.prompt_keys),
        "score, contiguous group_sizes",
        engine_score,
        target=None,
    ),
    Comparison(
        "group_keys, shuffled int64 keys",
        lambda inputs: shfcas_fast.group_keys(inputs.prompt_ids),
        "score, contiguous group_sizes",
        engine_score,
        target=None,
    ),
    Comparison(
        "score, shuffled rows grouped by group_keys beforehand",
        lambda inputs: shfcas_fast.score(inputs.logprobs, inputs.rewards, groups=inputs.key_groups),
        "score, contiguous group_sizes",
        engine_score,
        target=None,
    ),
]


def bench_pairs() -> int:
    """Completions per benchmark: ``SHFCAS_BENCH_PAIRS`` or the issue's 10M."""
    return int(os.environ.get("SHFCAS_BENCH_PAIRS", DEFAULT_PAIRS))


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return Inputs.generate(bench_pairs())


@pytest.mark.parametrize("side", ["engine", "yardstick"])
@pytest.mark.parametrize("comparison", COMPARISONS, ids=[comparison.label for comparison in COMPARISONS])
def test_engine_against_yardstick(benchmark, inputs, comparison, side):
    benchmark.group = f"{comparison.label}, {inputs.num_pairs:,} pairs"
    benchmark.extra_info["target_speedup"] = comparison.target
    if side == "engine":
        benchmark.pedantic(comparison.engine, args=(inputs,), rounds=3, warmup_rounds=1)
        return
    # Slow yardsticks get one round; the sampled scipy loop is short enough for three.
    benchmark.pedantic(comparison.yardstick, args=(inputs,), rounds=3 if comparison.sampled else 1)
    scale = comparison.yardstick_scale(inputs)
    benchmark.extra_info["yardstick_scale"] = scale
    benchmark.extra_info["extrapolated_s"] = benchmark.stats.stats.min * scale
