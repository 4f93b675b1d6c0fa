"""What is particular to the pure-PyTorch baseline: its chunking, its merge sort, and agreement with the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
import shfcas_fast
from shfcas_fast import baseline


def test_grouped_tau_is_the_same_over_many_chunks_and_size_classes(rng, monkeypatch):
    sizes = rng.integers(0, 40, size=300)
    x = rng.integers(0, 6, size=sizes.sum()).astype(np.float64)
    y = rng.integers(0, 6, size=sizes.sum()).astype(np.float64)
    # Chunks of a single group for the widest classes, of a few groups for the narrow ones.
    monkeypatch.setattr(baseline, "PAIRWISE_CHUNK_ELEMENTS", 100)
    np.testing.assert_allclose(baseline.kendall_tau(x, y, sizes), reference.grouped_scipy_tau(x, y, sizes), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 15, 16, 17, 31, 32, 33, 257, 1000])
def test_merge_sort_counts_strict_inversions(rng, n):
    values = rng.integers(0, max(2, n // 4), size=n).astype(np.float64)
    inversions, ordered = baseline._merge_sort_counting_inversions(torch.from_numpy(values))
    assert inversions == int(np.triu(values[:, None] > values[None, :], k=1).sum())
    np.testing.assert_array_equal(ordered.numpy(), np.sort(values))


def test_top_k_never_takes_nan_for_a_tied_minus_infinity():
    values = np.array([np.nan, -np.inf, -np.inf, 1.0, np.nan])
    for k in range(6):
        np.testing.assert_array_equal(baseline.top_k(values, k), reference.top_k(values, k))


def test_agrees_with_the_engine_on_a_larger_ragged_batch(rng):
    sizes = np.concatenate([np.full(3000, 8), rng.integers(0, 20, size=500)])
    n = int(sizes.sum())
    logprobs = -100.0 + 20.0 * rng.normal(size=n)
    rewards = np.round(rng.normal(size=n), 1)  # ties within groups
    expected, actual = shfcas_fast.score(logprobs, rewards, sizes), baseline.score(logprobs, rewards, sizes)
    for field in reference.ReferenceScores._fields:
        np.testing.assert_allclose(getattr(actual, field), getattr(expected, field), rtol=1e-12, atol=1e-12, err_msg=field)
    np.testing.assert_array_equal(baseline.top_k(rewards, 500), shfcas_fast.top_k(rewards, 500))
    assert baseline.kendall_tau(logprobs, rewards) == pytest.approx(shfcas_fast.kendall_tau(logprobs, rewards), rel=1e-12)


def test_select_is_the_engines():
    # Selection only applies rules to ConflictScores; the baseline shares it rather than copying it.
    assert baseline.select is shfcas_fast.select
