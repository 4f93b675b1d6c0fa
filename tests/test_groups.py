"""Grouping by prompt key (``groups=``, ``group_keys``) and size-aware selection.

The reference for every keyed result is the contiguous engine (itself checked against scipy and a
float64 transcription in test_scoring.py) run on the rows sorted by prompt, with the prompts numbered
by a plain Python dict in order of first appearance; per-prompt tau is also checked against scipy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import torch
from scipy import stats

import shfcas_fast
from shfcas_fast import ShfcasSelectionWarning, ShfcasTypeError, ShfcasValueError
from shfcas_fast import _core
from shfcas_fast.grouping import _group, core_keys


def reference_grouping(keys: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, order, sizes) by a Python dict: prompts numbered by first appearance, stable order."""
    numbers: dict = {}
    index = np.array([numbers.setdefault(key, len(numbers)) for key in keys], dtype=np.int64)
    order = np.argsort(index, kind="stable")
    return index, order, np.bincount(index, minlength=len(numbers)).astype(np.int64)


def assert_grouping(groups: shfcas_fast.KeyGroups, keys: list) -> None:
    index, order, sizes = reference_grouping(keys)
    np.testing.assert_array_equal(groups.index, index)
    np.testing.assert_array_equal(groups.order, order)
    np.testing.assert_array_equal(groups.sizes, sizes)
    np.testing.assert_array_equal(groups.first_rows, order[np.concatenate([[0], np.cumsum(sizes)[:-1]])] if len(keys) else [])
    assert groups.contiguous == bool(np.all(order == np.arange(len(keys))))


def ragged_keys(rng: np.random.Generator, num_prompts: int) -> np.ndarray:
    """Shuffled prompt numbers 0..num_prompts-1, 1 to 9 rows each."""
    sizes = rng.integers(1, 10, size=num_prompts)
    return rng.permutation(np.repeat(np.arange(num_prompts), sizes))


def key_variants(numbers: np.ndarray) -> dict[str, tuple[object, list]]:
    """The same prompts as every supported key container: name -> (keys, the keys as Python values)."""
    strings = [f"prompt-{n}" for n in numbers]
    blobs = [s.encode() + b"\x00\xff" for s in strings]  # bytes with a zero byte inside
    arrow_strings = pa.array(strings)
    half = len(strings) // 2
    as_list = numbers.tolist()
    return {
        "numpy int64": (numbers.astype(np.int64), as_list),
        "numpy int32": (numbers.astype(np.int32), as_list),
        "numpy uint64 above 2**63": (numbers.astype(np.uint64) + np.uint64(2**63), as_list),
        "numpy uint32": (numbers.astype(np.uint32), as_list),
        "numpy int8 (widened)": ((numbers % 100).astype(np.int8), (numbers % 100).tolist()),
        "numpy S": (np.array(blobs, dtype="S"), [b.rstrip(b"\x00") for b in blobs]),
        "numpy U": (np.array(strings), strings),
        "numpy object str": (np.array(strings, dtype=object), strings),
        "list of str": (strings, strings),
        "list of bytes": (blobs, blobs),
        "list of int": (as_list, as_list),
        "arrow string": (arrow_strings, strings),
        "arrow large_string": (arrow_strings.cast(pa.large_string()), strings),
        "arrow binary": (pa.array(blobs, pa.binary()), blobs),
        "arrow large_binary": (pa.array(blobs, pa.large_binary()), blobs),
        "arrow dictionary": (arrow_strings.dictionary_encode(), strings),
        "arrow chunked, sliced": (
            pa.chunked_array([arrow_strings.slice(0, half), pa.array([], pa.string()), arrow_strings.slice(half)]),
            strings,
        ),
        "arrow chunked dictionary": (
            pa.chunked_array(
                [arrow_strings.slice(0, half).dictionary_encode(), arrow_strings.slice(half).dictionary_encode()]
            ),
            strings,
        ),
        "arrow int64": (pa.array(numbers), as_list),
        "pandas object": (pd.Series(strings, dtype=object), strings),
        "pandas category": (pd.Series(strings, dtype="category"), strings),
        "pandas string[pyarrow]": (pd.Series(strings, dtype="string[pyarrow]"), strings),
        "pandas int64": (pd.Series(numbers), as_list),
        "polars str": (pl.Series(strings), strings),
        "polars int": (pl.Series(numbers), as_list),
        "torch int64": (torch.from_numpy(numbers.astype(np.int64)), as_list),
    }


NUMBERS = ragged_keys(np.random.default_rng(5), 60)
VARIANTS = key_variants(NUMBERS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_key_container_groups_like_a_python_dict(variant):
    keys, python_keys = VARIANTS[variant]
    assert_grouping(shfcas_fast.group_keys(keys), python_keys)


@pytest.mark.parametrize("variant", ["numpy int64", "numpy U", "arrow string", "arrow dictionary", "pandas category"])
def test_keyed_scores_equal_contiguous_scores_of_the_sorted_rows(variant, rng):
    keys, python_keys = VARIANTS[variant]
    n = len(python_keys)
    logprobs, rewards = rng.normal(size=n), rng.normal(size=n)
    _, order, sizes = reference_grouping(python_keys)

    keyed = shfcas_fast.score(logprobs, rewards, groups=keys)
    sorted_scores = shfcas_fast.score(logprobs[order], rewards[order], group_sizes=sizes)
    assert isinstance(keyed, shfcas_fast.KeyedConflictScores)
    for name in ("group_conflict", "kendall_tau", "kendall_distance", "degenerate", "group_sizes"):
        np.testing.assert_array_equal(getattr(keyed, name), getattr(sorted_scores, name), err_msg=name)
    for name in ("pacs", "z_logprob", "z_reward"):  # per row, back in input order
        back = np.empty(n)
        back[order] = getattr(sorted_scores, name)
        np.testing.assert_array_equal(getattr(keyed, name), back, err_msg=name)
    np.testing.assert_array_equal(keyed.prompt_index, reference_grouping(python_keys)[0])

    np.testing.assert_array_equal(shfcas_fast.pacs(logprobs, rewards, groups=keys), keyed.pacs)
    tau = shfcas_fast.kendall_tau(logprobs, rewards, groups=keys)
    np.testing.assert_array_equal(tau, keyed.kendall_tau)
    np.testing.assert_array_equal(shfcas_fast.kendall_distance(logprobs, rewards, groups=keys), (1 - tau) / 2)
    index = reference_grouping(python_keys)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input
        scipy_tau = [stats.kendalltau(logprobs[index == p], rewards[index == p]).statistic for p in range(len(sizes))]
    np.testing.assert_allclose(tau, scipy_tau, rtol=1e-12, atol=1e-12)


def test_float32_inputs_and_a_reused_grouping(rng):
    keys = ragged_keys(rng, 40)
    groups = shfcas_fast.group_keys(keys)
    logprobs, rewards = rng.normal(size=keys.shape[0]).astype(np.float32), rng.normal(size=keys.shape[0]).astype(np.float32)
    sorted_scores = shfcas_fast.score(logprobs[groups.order], rewards[groups.order], groups.sizes)
    keyed = shfcas_fast.score(logprobs, rewards, groups=groups)
    assert keyed.groups is groups
    np.testing.assert_array_equal(keyed.group_conflict, sorted_scores.group_conflict)
    np.testing.assert_array_equal(groups.grouped(keyed.pacs), sorted_scores.pacs)
    np.testing.assert_array_equal(groups.per_row(keyed.group_conflict), keyed.group_conflict[groups.index])


def test_contiguous_keys_take_the_fast_path_and_agree(rng):
    keys = np.repeat(np.array(["x", "a", "m"]), [3, 5, 2])
    groups = shfcas_fast.group_keys(keys)
    assert groups.contiguous
    logprobs, rewards = rng.normal(size=10), rng.normal(size=10)
    keyed = shfcas_fast.score(logprobs, rewards, groups=keys)
    plain = shfcas_fast.score(logprobs, rewards, [3, 5, 2])
    np.testing.assert_array_equal(keyed.pacs, plain.pacs)
    np.testing.assert_array_equal(keyed.kendall_tau, plain.kendall_tau)


@pytest.mark.parametrize("mask", [0, 0xF, 0xFFC0_0000_0000_0000])
@pytest.mark.parametrize("variant", ["numpy int64", "arrow string", "arrow chunked, sliced", "numpy U", "numpy S"])
def test_forced_hash_collisions_are_told_apart_by_exact_comparison(variant, mask):
    # A narrow hash mask puts many distinct keys on one hash; only the exact comparison separates them.
    keys, python_keys = VARIANTS[variant]
    assert_grouping(_group(keys, "keys", hash_mask=mask), python_keys)


@pytest.mark.parametrize("mask", [0, 0xF, 0xFFC0_0000_0000_0000])
@pytest.mark.parametrize("variant", ["numpy int64", "arrow string", "arrow chunked, sliced", "numpy U", "numpy S"])
def test_scoring_by_key_tells_forced_collisions_apart(rng, variant, mask):
    # The one-call keyed scoring numbers keys by hash, then checks every row's key; a collision sends
    # it back to numbering with exact comparisons. Its scores must equal the contiguous engine's on
    # rows sorted by the dict-made grouping.
    keys, python_keys = VARIANTS[variant]
    index, order, sizes = reference_grouping(python_keys)
    logprobs, rewards = rng.normal(size=len(python_keys)), rng.normal(size=len(python_keys))
    (z_l, z_r, pacs, conflict, tau, degenerate), (keyed_index, keyed_sizes, _, _) = _core.score_keys(
        core_keys(keys, "keys"), logprobs, rewards, "all", mask
    )
    expected = shfcas_fast.score(logprobs[order], rewards[order], sizes)
    np.testing.assert_array_equal(keyed_index, index)
    np.testing.assert_array_equal(keyed_sizes, sizes)
    np.testing.assert_array_equal(pacs[order], expected.pacs)
    np.testing.assert_array_equal(z_l[order], expected.z_logprob)
    np.testing.assert_array_equal(z_r[order], expected.z_reward)
    np.testing.assert_array_equal(conflict, expected.group_conflict)
    np.testing.assert_array_equal(tau, expected.kendall_tau)
    np.testing.assert_array_equal(degenerate, expected.degenerate)


def test_large_shuffled_tables(rng):
    numbers = ragged_keys(rng, 40_000)  # about 200k rows
    strings = pa.array([f"prompt-{n}" for n in numbers.tolist()])
    groups = shfcas_fast.group_keys(strings)
    assert_grouping(groups, strings.to_pylist())
    collided = _group(strings, "keys", hash_mask=0xFFF0_0000_0000_0000)
    np.testing.assert_array_equal(collided.index, groups.index)
    np.testing.assert_array_equal(shfcas_fast.group_keys(numbers).index, groups.index)

    logprobs, rewards = rng.normal(size=numbers.shape[0]), rng.normal(size=numbers.shape[0])
    keyed = shfcas_fast.score(logprobs, rewards, groups=strings)
    sorted_scores = shfcas_fast.score(logprobs[groups.order], rewards[groups.order], groups.sizes)
    np.testing.assert_array_equal(keyed.group_conflict, sorted_scores.group_conflict)
    np.testing.assert_array_equal(keyed.kendall_tau, sorted_scores.kendall_tau)
    np.testing.assert_array_equal(keyed.z_reward[groups.order], sorted_scores.z_reward)


def test_numpy_padding_is_not_part_of_the_key():
    # numpy compares S and U values without their trailing zero padding; so does the grouping.
    assert shfcas_fast.group_keys(np.array([b"ab", b"ab\x00", b"a\x00b", b""], dtype="S4")).index.tolist() == [0, 0, 1, 2]
    assert shfcas_fast.group_keys(np.array(["é", "éé", "é", ""])).index.tolist() == [0, 1, 0, 2]


def test_empty_and_single_row_inputs():
    for keys in ([], np.zeros(0, dtype=np.int64), pa.array([], pa.string()), np.array([], dtype="U3")):
        groups = shfcas_fast.group_keys(keys)
        assert groups.num_rows == 0 and groups.num_groups == 0 and groups.offsets.tolist() == [0]
    scores = shfcas_fast.score([1.0], [2.0], groups=["only"])
    assert scores.degenerate.tolist() == [True] and scores.pacs.tolist() == [0.0]


def test_grouping_arrays_are_read_only():
    groups = shfcas_fast.group_keys([1, 2, 1])
    with pytest.raises(ValueError, match="read-only"):
        groups.order[0] = 2


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["a", None, "b"], r"groups\[1\] is null"),
        (pa.chunked_array([["a", "b"], ["c", None]]), r"groups\[3\] is null"),
        (pd.Series(["a", "b", np.nan]), r"groups\[2\] is null"),
        (np.array(["2025-01-01", "NaT", "2025-01-02"], dtype="datetime64[D]"), r"groups\[1\] is NaT"),
        (np.zeros((3, 1), dtype=np.int64), r"groups must be 1-D"),
        (np.array([1, 2], dtype=np.int64), "groups has 2 keys but there are 3 items"),
    ],
)
def test_bad_key_values_are_refused(keys, message):
    with pytest.raises(ShfcasValueError, match=message):
        shfcas_fast.score([0.0, 1.0, 2.0], [1.0, 0.0, 2.0], groups=keys)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (np.array([0.5, 1.5, 0.5]), "dtype float64; prompt keys must be integers, strings or bytes"),
        (pa.array([0.5, 1.5, 0.5]), "Arrow type double"),
        (["a", 1, "b"], "must be a 1-D array of prompt keys"),
        (8, "got a single int; for contiguous prompts of equal size pass group_sizes"),
        ("abc", "got a single str"),
    ],
)
def test_bad_key_types_are_refused(keys, message):
    with pytest.raises(ShfcasTypeError, match=message):
        shfcas_fast.pacs([0.0, 1.0, 2.0], [1.0, 0.0, 2.0], groups=keys)


def test_group_sizes_and_groups_exclude_each_other():
    with pytest.raises(ShfcasValueError, match="either group_sizes= .* or groups= .*, not both"):
        shfcas_fast.score([0.0, 1.0], [1.0, 0.0], 2, groups=["a", "a"])
    with pytest.raises(ShfcasValueError, match="pass group_sizes= .* or groups="):
        shfcas_fast.pacs([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ShfcasValueError, match="not both"):
        shfcas_fast.kendall_tau([0.0, 1.0], [1.0, 0.0], [2], groups=["a", "a"])
    assert shfcas_fast.kendall_tau([0.0, 1.0, 2.0], [1.0, 0.0, 2.0]) == pytest.approx(1 / 3)  # neither: global


def test_a_tampered_row_order_is_refused():
    groups = shfcas_fast.group_keys(["a", "b", "a"])
    forged = shfcas_fast.KeyGroups(
        order=np.array([0, 0, 1]), sizes=groups.sizes, first_rows=groups.first_rows, contiguous=False
    )
    with pytest.raises(ValueError, match=r"order\[1\] is 0, which appears twice"):
        shfcas_fast.score([0.0, 1.0, 2.0], [1.0, 0.0, 2.0], groups=forged)


class TestMinGroupSize:
    @pytest.fixture
    def scores(self, rng):
        # 300 prompts of 2 completions, 300 of 3 and 300 of 8, rows shuffled; log-prob and reward unrelated.
        keys = rng.permutation(np.repeat(np.arange(900), np.repeat([2, 3, 8], 300)))
        return shfcas_fast.score(rng.normal(size=keys.shape[0]), rng.normal(size=keys.shape[0]), groups=keys)

    @pytest.mark.parametrize("strategy", ["pacs", "kendall"])
    def test_small_prompts_are_never_chosen_by_default(self, scores, strategy):
        sizes = scores.group_sizes
        chosen = shfcas_fast.select(scores, budget=900, strategy=strategy)
        assert sizes[chosen].min() >= 3
        assert len(chosen) == np.count_nonzero(~scores.degenerate & (sizes >= 3))
        # Prompts of two are all-or-nothing: mean |PACS| is 0 or 2 (up to the 1e-8 added to each std)
        # and tau is +-1.
        pairs = ~scores.degenerate & (sizes == 2)
        conflict = scores.group_conflict[pairs]
        np.testing.assert_allclose(np.minimum(conflict, 2 - conflict), 0, atol=1e-4)
        np.testing.assert_array_equal(np.abs(scores.kendall_tau[pairs]), 1.0)

    def test_the_limit_can_be_changed(self, scores):
        sizes = scores.group_sizes
        everything = shfcas_fast.select(scores, budget=900, min_group_size=1)
        assert len(everything) == np.count_nonzero(~scores.degenerate)
        assert sizes[shfcas_fast.select(scores, budget=900, min_group_size=8)].min() == 8
        random = shfcas_fast.select(scores, budget=900, strategy="random")
        assert len(random) == np.count_nonzero(~scores.degenerate)
        assert sizes[shfcas_fast.select(scores, budget=900, strategy="random", min_group_size=3)].min() == 3
        with pytest.raises(ShfcasValueError, match="min_group_size must be >= 0"):
            shfcas_fast.select(scores, budget=3, min_group_size=-1)

    def test_a_threshold_selecting_more_than_half_warns(self, scores):
        with pytest.warns(ShfcasSelectionWarning, match=r"selected .* of 900 prompts \(more than half\)"):
            shfcas_fast.select(scores, threshold=0.0, min_group_size=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            shfcas_fast.select(scores)  # the default threshold on unrelated data selects fewer
            shfcas_fast.select(scores, budget=800)  # a budget is the user's own choice

    def test_scores_without_sizes(self, scores):
        fields = {name: getattr(scores, name) for name in ("group_conflict", "kendall_tau", "kendall_distance", "degenerate")}
        unsized = shfcas_fast.scoring.PromptScores(**fields)
        with pytest.warns(ShfcasSelectionWarning, match="carry no group_sizes"):
            chosen = shfcas_fast.select(unsized, budget=900)
        assert len(chosen) == np.count_nonzero(~scores.degenerate)
        with pytest.raises(ShfcasValueError, match="min_group_size needs the prompt sizes"):
            shfcas_fast.select(unsized, budget=900, min_group_size=3)
