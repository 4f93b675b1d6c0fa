"""The experiment's paired statistics and reward-model metrics against scipy and direct transcriptions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from shfcas_fast.experiments import reward_model_agreement, rso_pairs
from shfcas_fast.experiments.statistics import (
    bootstrap_mean_ci,
    holm,
    minimum_detectable_effect,
    paired_difference,
    t_mean_ci,
)
from shfcas_fast.loop.sampling import SampledCompletions


@pytest.fixture()
def differences():
    return np.random.default_rng(3).normal(0.05, 0.1, size=12)


def test_t_interval_matches_scipy(differences):
    expected = stats.ttest_1samp(differences, 0.0).confidence_interval(0.95)
    assert t_mean_ci(differences) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_bootstrap_interval_matches_scipy_percentile_bootstrap(differences):
    expected = stats.bootstrap((differences,), np.mean, method="percentile", n_resamples=50_000,
                               random_state=np.random.default_rng(1)).confidence_interval
    width = expected.high - expected.low
    low, high = bootstrap_mean_ci(differences, resamples=50_000)
    assert low == pytest.approx(expected.low, abs=0.03 * width)
    assert high == pytest.approx(expected.high, abs=0.03 * width)


def test_wilcoxon_and_the_paired_summary(differences):
    control = np.random.default_rng(4).normal(size=12)
    result = paired_difference(control + differences, control)
    np.testing.assert_allclose(result.differences, differences, rtol=1e-12)
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(differences).pvalue, rel=1e-12)
    assert result.mean == pytest.approx(differences.mean())
    assert result.positive == int(np.sum(differences > 0))
    assert paired_difference(control, control).wilcoxon_p == 1.0  # scipy refuses all-zero differences
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference([1.0], [0.0])


def test_minimum_detectable_effect_has_the_stated_power(differences):
    n, sd = differences.size, differences.std(ddof=1)
    mde = minimum_detectable_effect(differences)
    # Power of the two-sided paired t test at effect = mde, from the noncentral t distribution.
    critical = stats.t.ppf(0.975, n - 1)
    noncentrality = mde / (sd / np.sqrt(n))
    power = stats.nct.sf(critical, n - 1, noncentrality) + stats.nct.cdf(-critical, n - 1, noncentrality)
    assert power == pytest.approx(0.8, abs=0.02)


def test_holm_matches_its_definition():
    rng = np.random.default_rng(0)
    for m in (1, 2, 3, 5):
        p = rng.uniform(0, 0.2, size=m)
        order = np.argsort(p)
        # Definition: the k-th smallest p gets max over j <= k of min(1, (m - j + 1) p_(j)).
        expected = np.empty(m)
        for k in range(m):
            expected[order[k]] = max(min(1.0, (m - j) * p[order[j]]) for j in range(k + 1))
        assert holm(p.tolist()) == pytest.approx(expected.tolist(), rel=1e-12)


def test_reward_model_agreement_against_loops():
    rng = np.random.default_rng(1)
    rewards, gold = rng.normal(size=24), rng.integers(0, 3, size=24).astype(float)
    agree, total, best = 0.0, 0, []
    for g in range(4):
        r, s = rewards[6 * g : 6 * g + 6], gold[6 * g : 6 * g + 6]
        for i, j in itertools.combinations(range(6), 2):
            if s[i] != s[j]:
                total += 1
                agree += 1.0 if (r[i] - r[j]) * (s[i] - s[j]) > 0 else 0.0
        best.append(s[np.argmax(r)])
    assert reward_model_agreement(rewards, gold, 6) == pytest.approx((agree / total, np.mean(best)))


def test_rso_accepts_by_reward_and_ranks_pairs_by_it():
    samples = SampledCompletions(["q ", "r "], [f"a{i}" for i in range(8)], np.zeros(8), 4)
    rewards = np.array([0.0, 3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0])
    # A temperature far above the reward range accepts every candidate: all C(4, 2) pairs per prompt.
    loose = rso_pairs(samples, rewards, accepted=4, beta=1e9, seed=0)
    assert len(loose) == 12
    by_text = dict(zip(samples.completions, rewards))
    assert all(by_text[c] > by_text[r] for c, r in zip(loose["chosen"], loose["rejected"]))
    # A temperature far below it accepts only each prompt's best candidate: no pair.
    assert len(rso_pairs(samples, rewards, accepted=4, beta=1e-9, seed=0)) == 0
