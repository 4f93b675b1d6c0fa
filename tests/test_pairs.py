"""Preference pairs from oracle scores (docs/method.md, section 3, step 6) against a brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shfcas_fast.pairs import preference_pair_indices


def brute_force_pairs(scores: np.ndarray, sizes: list[int]) -> list[tuple[int, int, float]]:
    """Every pair of a group with different scores as (chosen, rejected, margin), in group then index order."""
    pairs, start = [], 0
    for size in sizes:
        for i, j in itertools.combinations(range(start, start + size), 2):
            if scores[i] != scores[j]:
                chosen, rejected = (i, j) if scores[i] > scores[j] else (j, i)
                pairs.append((chosen, rejected, float(scores[chosen] - scores[rejected])))
        start += size
    return pairs


def as_triples(chosen: np.ndarray, rejected: np.ndarray, margin: np.ndarray) -> list[tuple[int, int, float]]:
    assert chosen.dtype == rejected.dtype == np.int64 and margin.dtype == np.float64
    return list(zip(chosen.tolist(), rejected.tolist(), margin.tolist()))


def test_higher_score_is_chosen_and_ties_give_no_pair():
    chosen, rejected, margin = preference_pair_indices(np.array([0.0, 2.0, 2.0, -1.0]), 4)
    assert as_triples(chosen, rejected, margin) == [(1, 0, 2.0), (2, 0, 2.0), (0, 3, 1.0), (1, 3, 3.0), (2, 3, 3.0)]


def test_a_full_group_of_eight_distinct_scores_gives_28_pairs():
    chosen, _, margin = preference_pair_indices(np.arange(16.0), [8, 8])
    assert len(chosen) == 2 * 28 and (margin > 0).all()


def test_pairs_never_cross_groups():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    assert as_triples(*preference_pair_indices(scores, [2, 2])) == [(1, 0, 1.0), (3, 2, 1.0)]


@pytest.mark.parametrize(("scores", "group_sizes"), [([], []), ([1.0], [1]), ([3.0, 3.0], 2), ([1.0, 2.0], [1, 0, 1])])
def test_no_pairs(scores, group_sizes):
    chosen, rejected, margin = preference_pair_indices(np.array(scores, dtype=np.float64), group_sizes)
    assert as_triples(chosen, rejected, margin) == []


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), max_size=8), data=st.data())
def test_matches_brute_force(sizes, data):
    n = sum(sizes)
    scores = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=np.float32)
    assert as_triples(*preference_pair_indices(scores, sizes)) == brute_force_pairs(scores.astype(np.float64), sizes)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"oracle_scores\[1\] is nan"):
        preference_pair_indices(np.array([0.0, np.nan]), 2)
    with pytest.raises(ValueError, match="group_sizes sums to 3 but there are 2 items"):
        preference_pair_indices(np.array([0.0, 1.0]), [3])
    with pytest.raises(ValueError, match=r"oracle_scores must be 1-D"):
        preference_pair_indices(np.zeros((2, 2)), 2)
