"""The engine and the baseline (the ``impl`` fixture) against scipy and the float64 transcription of the definitions."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
import shfcas_fast

# Room for a different summation order, far below any formula error (ddof = 1 moves z by 7% at N = 8).
TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


def assert_scores_match(scores, expected) -> None:
    for field in reference.ReferenceScores._fields:
        actual = getattr(scores, field)
        np.testing.assert_allclose(actual, getattr(expected, field), **TOLERANCE, err_msg=field)
    assert scores.degenerate.dtype == np.bool_
    assert scores.pacs.dtype == scores.group_conflict.dtype == scores.kendall_tau.dtype == np.float64


def ragged_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero-size, size-1, all-tied, heavily tied, near-constant and ordinary groups, one after another."""
    sizes = np.array([0, 1, 2, 3, 8, 8, 8, 8, 5, 0, 1, 17, 40, 2, 8], dtype=np.int64)
    n = int(sizes.sum())
    logprobs = -50.0 + rng.normal(size=n) * 5.0
    rewards = rng.integers(0, 4, size=n).astype(np.float64)  # heavy ties everywhere
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    all_tied, constant_rewards, tiny_spread = (slice(bounds[i], bounds[i + 1]) for i in (4, 5, 6))
    logprobs[all_tied], rewards[all_tied] = -7.0, 1.0
    rewards[constant_rewards] = 3.0
    logprobs[tiny_spread] = 1e-8 * np.arange(8)  # std ~2e-8 < 1e-6: degenerate
    return logprobs, rewards, sizes


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_score_matches_reference_on_ragged_groups(impl, rng, dtype):
    logprobs, rewards, sizes = ragged_case(rng)
    logprobs, rewards = logprobs.astype(dtype), rewards.astype(dtype)
    expected = reference.score(logprobs, rewards, sizes)
    assert expected.degenerate[[0, 1, 4, 5, 6, 9, 10]].all() and not expected.degenerate.all()
    assert_scores_match(impl.score(logprobs, rewards, sizes), expected)


def test_score_matches_reference_with_int_group_size(impl, rng):
    logprobs, rewards = rng.normal(size=800) * 30.0 - 200.0, rng.normal(size=800)
    scores = impl.score(logprobs, rewards, 8)
    assert_scores_match(scores, reference.score(logprobs, rewards, 8))
    assert (scores.num_groups, scores.num_items) == (100, 800)


def test_score_accepts_torch_tensors(impl, rng):
    logprobs, rewards, sizes = ragged_case(rng)
    scores = impl.score(torch.from_numpy(logprobs).float(), torch.from_numpy(rewards).float(), torch.from_numpy(sizes))
    expected = reference.score(logprobs.astype(np.float32), rewards.astype(np.float32), sizes)
    assert_scores_match(scores, expected)
    assert isinstance(scores.pacs, np.ndarray)


@pytest.mark.parametrize(
    ("logprobs", "rewards", "group_sizes"),
    [
        ([], [], []),
        ([], [], [0, 0]),
        ([-1.0], [2.0], [1]),
        ([-1.0], [2.0], 1),
        ([-1.0, -2.0], [2.0, 1.0], 2),
        ([-1.0, -2.0], [1.0, 2.0], [2]),
        ([-1.0, -2.0], [1.0, 2.0], [1, 1]),
    ],
    ids=["n0", "n0-two-empty-groups", "n1", "n1-int", "n2-agree", "n2-disagree", "n2-singletons"],
)
def test_score_on_tiny_inputs(impl, logprobs, rewards, group_sizes):
    logprobs, rewards = np.array(logprobs, dtype=np.float64), np.array(rewards, dtype=np.float64)
    expected = reference.score(logprobs, rewards, group_sizes)
    assert_scores_match(impl.score(logprobs, rewards, group_sizes), expected)


def test_pacs_is_the_pacs_of_score(impl, rng):
    logprobs, rewards, sizes = ragged_case(rng)
    np.testing.assert_allclose(impl.pacs(logprobs, rewards, sizes), reference.score(logprobs, rewards, sizes).pacs, **TOLERANCE)
    np.testing.assert_array_equal(impl.pacs(logprobs, rewards, sizes), impl.score(logprobs, rewards, sizes).pacs)


def test_pacs_of_two_items_is_plus_minus_two(impl):
    # z = +-1 exactly for two distinct values, so disagreeing ranks give PACS = +-2.
    np.testing.assert_allclose(impl.pacs(np.array([-3.0, -1.0]), np.array([1.0, 0.0]), 2), [2.0, -2.0], rtol=1e-7)


def extreme_case(rng: np.random.Generator, groups: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs and rewards of magnitude 1e250 to 1.79e308 (a per-group exponent), mixed signs.

    Their sums, squares and differences overflow float64 unless the values are scaled first.
    """

    def values() -> np.ndarray:
        magnitude = 10.0 ** rng.uniform(250.0, 308.0, size=(groups, 1))
        return (rng.uniform(-1.79, 1.79, size=(groups, size)) * magnitude).ravel()

    logprobs, rewards = values(), values()
    logprobs[:size] = rng.uniform(1.7, 1.79, size=size) * 1e308  # the sum overflows, no square does
    return logprobs, rewards


def test_extreme_magnitudes_match_a_reference_that_scales_first(impl, rng):
    logprobs, rewards = extreme_case(rng, groups=30, size=8)
    expected = reference.score(logprobs, rewards, 8)
    assert not expected.degenerate.any()
    assert_scores_match(impl.score(logprobs, rewards, 8), expected)
    np.testing.assert_allclose(impl.pacs(logprobs, rewards, 8), expected.pacs, **TOLERANCE)


def test_kendall_at_extreme_magnitudes_matches_scipy(impl, rng):
    # Groups of 60 take the sorting path of the engine (the score test covers the pairwise one).
    x, y = extreme_case(rng, groups=5, size=60)
    np.testing.assert_allclose(impl.kendall_tau(x, y, 60), reference.grouped_scipy_tau(x, y, 60), rtol=1e-12)
    assert impl.kendall_tau(x, y) == pytest.approx(reference.scipy_tau(x, y), rel=1e-12)


@pytest.mark.parametrize("exponent", [6, 9, 12, 15, 50, 300])
def test_constant_prompts_are_degenerate_at_any_magnitude(impl, rng, exponent):
    # Each prompt holds one value repeated; rounding its mean must not look like spread.
    sizes = np.arange(2, 21, dtype=np.int64)
    constant = np.repeat(rng.uniform(-9.9, 9.9, size=sizes.shape[0]) * 10.0**exponent, sizes)
    varying = rng.normal(size=constant.shape[0])
    for logprobs, rewards in [(constant, varying), (varying, constant)]:
        scores = impl.score(logprobs, rewards, sizes)
        expected = reference.score(logprobs, rewards, sizes)
        assert expected.degenerate.all()
        assert_scores_match(scores, expected)
        assert len(impl.select(scores, budget=5)) == 0


def test_the_degenerate_rule_is_std_below_1e_6_at_ordinary_magnitudes(impl):
    # Population std 0.9e-6, 1.1e-6 and 2^-19 (1.9e-6, around 1000: exact in float64, so the
    # z-scores are too); the bound relative to |mean| is far below 1e-6 here.
    spread = np.array([-1.0, 1.0, -1.0, 1.0])
    logprobs = np.concatenate([0.9e-6 * spread, 1.1e-6 * spread, 1e3 + 2.0**-19 * spread])
    rewards = np.tile([0.0, 1.0, 2.0, 3.0], 3)
    scores = impl.score(logprobs, rewards, 4)
    np.testing.assert_array_equal(scores.degenerate, [True, False, False])
    assert_scores_match(scores, reference.score(logprobs, rewards, 4))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_tau_matches_scipy_including_nan(impl, rng, dtype):
    logprobs, rewards, sizes = ragged_case(rng)
    x, y = logprobs.astype(dtype), rewards.astype(dtype)
    expected = reference.grouped_scipy_tau(x, y, sizes)
    tau = impl.kendall_tau(x, y, sizes)
    np.testing.assert_array_equal(np.isnan(tau), np.isnan(expected))
    np.testing.assert_allclose(tau, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(impl.kendall_distance(x, y, sizes), (1.0 - expected) / 2.0, rtol=1e-12, atol=1e-12)


def test_grouped_tau_of_wide_heavily_tied_groups(impl, rng):
    sizes = np.array([300, 2, 1000, 7], dtype=np.int64)
    x = rng.integers(0, 3, size=sizes.sum()).astype(np.float64)
    y = rng.integers(0, 2, size=sizes.sum()).astype(np.float64)
    np.testing.assert_allclose(impl.kendall_tau(x, y, sizes), reference.grouped_scipy_tau(x, y, sizes), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [3000, 4096, 5001])
def test_global_tau_matches_scipy_with_ties(impl, rng, n):
    x = rng.integers(0, 40, size=n).astype(np.float64)
    y = x + rng.integers(-5, 5, size=n)  # correlated, with ties in x, y and jointly
    expected = reference.scipy_tau(x, y)
    assert impl.kendall_tau(x, y) == pytest.approx(expected, rel=1e-12)
    assert impl.kendall_distance(x, y) == pytest.approx((1.0 - expected) / 2.0, rel=1e-12)


def test_global_tau_needs_64_bit_pair_counts(impl, rng):
    # 200k items make 2e10 pairs: 32-bit concordance or tie counts would overflow.
    n = 200_000
    x = rng.integers(0, 3, size=n).astype(np.float32)
    y = (x + rng.integers(0, 2, size=n)).astype(np.float32)
    assert impl.kendall_tau(x, y) == pytest.approx(reference.scipy_tau(x, y), rel=1e-12)


@pytest.mark.parametrize(
    ("x", "y"),
    [([], []), ([1.0], [2.0]), ([1.0, 2.0], [3.0, 3.0]), ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]), ([1.0, 2.0], [2.0, 1.0])],
    ids=["n0", "n1", "n2-constant-y", "constant-x", "n2-reversed"],
)
def test_global_tau_on_tiny_and_constant_inputs(impl, x, y):
    expected = reference.scipy_tau(np.array(x), np.array(y))
    tau = impl.kendall_tau(np.array(x, dtype=np.float64), np.array(y, dtype=np.float64))
    assert isinstance(tau, float)
    np.testing.assert_equal(tau, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_top_k_orders_by_score_then_index_and_skips_nan(impl, dtype):
    values = np.array([0.5, np.nan, 2.0, 0.5, -np.inf, 2.0, np.nan, 0.5, np.inf], dtype=dtype)
    for k in range(len(values) + 3):
        np.testing.assert_array_equal(impl.top_k(values, k), reference.top_k(values, k), err_msg=f"k={k}")
    assert impl.top_k(values, 4).dtype == np.int64


def test_top_k_breaks_ties_at_the_cut_by_lower_index(impl, rng):
    values = rng.integers(0, 5, size=5000).astype(np.float64)
    values[rng.choice(5000, size=100, replace=False)] = np.nan
    for k in (0, 1, 999, 1000, 4900, 6000):
        np.testing.assert_array_equal(impl.top_k(values, k), reference.top_k(values, k))


def test_top_k_of_nothing(impl):
    assert impl.top_k(np.array([], dtype=np.float64), 3).shape == (0,)
    assert impl.top_k(np.full(4, np.nan), 2).shape == (0,)


def test_top_k_accepts_torch_tensors(impl):
    np.testing.assert_array_equal(impl.top_k(torch.tensor([1.0, 3.0, 2.0]), 2), [1, 2])


class TestSelect:
    @pytest.fixture
    def scores(self, impl, rng):
        logprobs, rewards, sizes = ragged_case(rng)
        logprobs = np.concatenate([logprobs, rng.normal(size=4000)])
        rewards = np.concatenate([rewards, rng.normal(size=4000)])
        return impl.score(logprobs, rewards, np.concatenate([sizes, np.full(500, 8)]))

    @staticmethod
    def eligible(scores) -> np.ndarray:
        """Prompts pacs/kendall selection may choose: not degenerate, at least 3 completions."""
        return ~scores.degenerate & (scores.group_sizes >= 3)

    @classmethod
    def expected_ranking(cls, values: np.ndarray, scores, threshold: float) -> np.ndarray:
        masked = np.where(cls.eligible(scores) & (values > threshold), values, np.nan)
        return reference.top_k(masked, len(masked))

    def test_default_is_the_papers_threshold_of_one(self, impl, scores):
        chosen = impl.select(scores)
        np.testing.assert_array_equal(chosen, self.expected_ranking(scores.group_conflict, scores, 1.0))
        assert 0 < len(chosen) < scores.num_groups

    def test_budget_takes_the_highest_conflict(self, impl, scores):
        ranking = self.expected_ranking(scores.group_conflict, scores, -np.inf)
        np.testing.assert_array_equal(impl.select(scores, budget=25), ranking[:25])
        np.testing.assert_array_equal(impl.select(scores, budget=10**6), ranking)
        assert impl.select(scores, budget=0).shape == (0,)

    def test_budget_and_threshold_together(self, impl, scores):
        ranking = self.expected_ranking(scores.group_conflict, scores, 1.5)
        np.testing.assert_array_equal(impl.select(scores, budget=len(ranking) + 5, threshold=1.5), ranking)
        np.testing.assert_array_equal(impl.select(scores, budget=3, threshold=1.5), ranking[:3])

    def test_kendall_strategy_uses_the_distance(self, impl, scores):
        np.testing.assert_array_equal(
            impl.select(scores, strategy="kendall"),
            self.expected_ranking(scores.kendall_distance, scores, 0.5),
        )
        np.testing.assert_array_equal(
            impl.select(scores, strategy="kendall", budget=7),
            self.expected_ranking(scores.kendall_distance, scores, -np.inf)[:7],
        )

    def test_random_is_uniform_over_eligible_groups_and_seeded(self, impl, scores):
        chosen = impl.select(scores, budget=50, strategy="random", seed=3)
        np.testing.assert_array_equal(chosen, impl.select(scores, budget=50, strategy="random", seed=3))
        assert not np.array_equal(chosen, impl.select(scores, budget=50, strategy="random", seed=4))
        assert len(np.unique(chosen)) == 50 and np.all(np.diff(chosen) > 0)
        assert not scores.degenerate[chosen].any()
        eligible = np.flatnonzero(~scores.degenerate)
        np.testing.assert_array_equal(impl.select(scores, budget=10**6, strategy="random"), eligible)

    @pytest.mark.parametrize("strategy", ["pacs", "kendall", "random"])
    def test_degenerate_groups_are_never_chosen(self, impl, scores, strategy):
        chosen = impl.select(scores, budget=scores.num_groups, strategy=strategy)
        eligible = ~scores.degenerate if strategy == "random" else self.eligible(scores)
        assert len(chosen) == np.count_nonzero(eligible)
        assert not scores.degenerate[chosen].any()

    def test_random_without_budget_is_refused(self, impl, scores):
        with pytest.raises(ValueError, match='strategy="random" needs a budget'):
            impl.select(scores, strategy="random")


def test_kendall_ranks_integers_beyond_2_to_the_53_exactly(impl):
    x = [2**53, 2**53 + 1, 2**53 + 2]
    assert impl.kendall_tau(x, [1, 2, 3]) == reference.scipy_tau(x, [1, 2, 3])
    assert impl.kendall_distance(x, [1, 2, 3]) == (1.0 - reference.scipy_tau(x, [1, 2, 3])) / 2.0


@pytest.mark.parametrize("signed", [True, False], ids=["int64", "uint64"])
def test_grouped_and_global_kendall_of_large_integers_match_scipy(impl, rng, signed):
    # Values a few units apart near 2^62 or 2^64 - 1: float64 would merge most of them into ties.
    sizes = np.array([3, 8, 60, 1, 0, 20], dtype=np.int64)
    offsets = rng.integers(0, 40, size=(2, int(sizes.sum())))
    if signed:
        x, y = (2**62 + offsets).astype(np.int64)
        x[:10] = -(2**62) + offsets[0, :10]  # and far below -2^53
        as_int64 = x, y
    else:
        x, y = np.uint64(2**64 - 100) + offsets.astype(np.uint64)
        # scipy gives NaN on uint64 above 2^63: compare with it on int64 of the same order.
        as_int64 = tuple((v ^ np.uint64(1 << 63)).view(np.int64) for v in (x, y))
    np.testing.assert_allclose(
        impl.kendall_tau(x, y, sizes), reference.grouped_scipy_tau(*as_int64, sizes), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        impl.kendall_distance(torch.from_numpy(as_int64[0]), as_int64[1], sizes),
        (1.0 - reference.grouped_scipy_tau(*as_int64, sizes)) / 2.0,
        rtol=1e-12,
        atol=1e-12,
    )
    assert impl.kendall_tau(x, y) == pytest.approx(reference.scipy_tau(*as_int64), rel=1e-12)


# Small integer ranges make ties, all-tied groups and degenerate groups frequent.
group_sizes_strategy = st.lists(st.integers(0, 9), min_size=0, max_size=12)


@st.composite
def grouped_pairs(draw):
    sizes = np.array(draw(group_sizes_strategy), dtype=np.int64)
    n = int(sizes.sum())
    values = st.integers(-4, 4)
    x = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    y = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    return x, y, sizes


@PROPERTY_SETTINGS
@given(case=grouped_pairs())
def test_property_score_matches_reference(impl, case):
    x, y, sizes = case
    assert_scores_match(impl.score(x, y, sizes), reference.score(x, y, sizes))


@PROPERTY_SETTINGS
@given(case=grouped_pairs())
def test_property_tau_is_bounded_and_exact_on_itself(impl, case):
    x, y, sizes = case
    tau = impl.kendall_tau(x, y, sizes)
    assert np.all(np.isnan(tau) | ((tau >= -1.0) & (tau <= 1.0)))
    self_tau = impl.kendall_tau(x, x, sizes)
    anti_tau = impl.kendall_tau(x, -x, sizes)
    non_constant = ~np.isnan(reference.grouped_scipy_tau(x, x, sizes))
    # scipy's own formula, c / sqrt(a) / sqrt(a), can land one ulp below 1 as well.
    np.testing.assert_allclose(self_tau[non_constant], 1.0, rtol=1e-15, atol=0)
    np.testing.assert_allclose(anti_tau[non_constant], -1.0, rtol=1e-15, atol=0)
    assert np.isnan(self_tau[~non_constant]).all()
    global_tau = impl.kendall_tau(x, y)
    assert np.isnan(global_tau) or -1.0 <= global_tau <= 1.0
    np.testing.assert_allclose(global_tau, reference.scipy_tau(x, y), rtol=1e-12, atol=1e-12)


@PROPERTY_SETTINGS
@given(case=grouped_pairs())
def test_property_pacs_sums_to_zero_and_matches_pearson(impl, case):
    x, y, sizes = case
    scores = impl.score(x, y, sizes)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for group in np.flatnonzero(~scores.degenerate):
        items = slice(bounds[group], bounds[group + 1])
        pacs = scores.pacs[items]
        assert abs(pacs.sum()) < 1e-9
        # With ddof = 0: mean(PACS^2) = 2 - 2 rho (up to the 1e-8 added to each std).
        rho = np.corrcoef(x[items], y[items])[0, 1]
        assert np.mean(pacs**2) == pytest.approx(2.0 - 2.0 * rho, abs=1e-6)


@PROPERTY_SETTINGS
@given(case=grouped_pairs(), seed=st.integers(0, 2**32 - 1))
def test_property_permuting_within_groups_permutes_pacs_only(impl, case, seed):
    x, y, sizes = case
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(seed)
    permutation = np.concatenate([np.zeros(0, np.int64)] + [a + rng.permutation(b - a) for a, b in zip(bounds[:-1], bounds[1:])])
    original, permuted = impl.score(x, y, sizes), impl.score(x[permutation], y[permutation], sizes)
    np.testing.assert_allclose(permuted.pacs, original.pacs[permutation], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(permuted.group_conflict, original.group_conflict, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(permuted.kendall_tau, original.kendall_tau, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(permuted.degenerate, original.degenerate)


@PROPERTY_SETTINGS
@given(
    values=st.lists(st.sampled_from([np.nan, -np.inf, np.inf, -1.0, 0.0, 0.5, 2.0]), max_size=30),
    k=st.integers(0, 35),
)
def test_property_top_k_matches_a_full_stable_sort(impl, values, k):
    values = np.array(values, dtype=np.float64)
    np.testing.assert_array_equal(impl.top_k(values, k), reference.top_k(values, k))


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    return int(fields["MemAvailable"].split()[0]) * 1024


@pytest.mark.slow
def test_engine_on_arrays_longer_than_2_to_the_31():
    # Engine only: the baseline's temporaries alone would need more than 20 GiB here.
    if not os.path.exists("/proc/meminfo") or available_memory_bytes() < 20 * 2**30:
        pytest.skip("needs 20 GiB of free memory")
    group_size = 16
    n = 2**31 + group_size
    values = np.empty(n, dtype=np.float32)
    values.reshape(-1, group_size)[:] = np.arange(group_size, dtype=np.float32)
    values[-group_size:] = 100.0  # the last group, wholly past index 2^31: the maximum, and constant
    np.testing.assert_array_equal(shfcas_fast.top_k(values, 2), [n - group_size, n - group_size + 1])
    tau = shfcas_fast.kendall_tau(values, values, group_size)
    assert tau.shape == (n // group_size,)
    assert np.isnan(tau[-1]) and tau[0] == tau[-2] == pytest.approx(1.0, abs=1e-15)
