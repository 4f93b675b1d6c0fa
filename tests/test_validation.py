"""Bad input gives a ValueError or TypeError naming the argument and the problem, in the engine and the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shfcas_fast import _core, _validation
from shfcas_fast.errors import ShfcasError, ShfcasTypeError, ShfcasValueError

GOOD = np.linspace(-1.0, 1.0, 20)


def with_value_at(index: int, value: float) -> np.ndarray:
    array = GOOD.copy()
    array[index] = value
    return array


@pytest.mark.parametrize("function", ["pacs", "score"])
class TestScoreInputs:
    def test_lengths_differ(self, impl, function):
        with pytest.raises(ValueError, match="logprobs and rewards must have the same length, got 20 and 19"):
            getattr(impl, function)(GOOD, GOOD[:19], 1)

    @pytest.mark.parametrize(
        ("group_sizes", "message"),
        [
            ([5, 5, 5], r"group_sizes sums to 15 but there are 20 items"),
            ([10, 15, -5], r"group_sizes\[2\] is -5; group sizes must be >= 0"),
            (3, r"group_sizes=3 does not divide the number of items 20"),
            (0, r"group_sizes must be positive when given as an int, got 0"),
            (-4, r"group_sizes must be positive when given as an int, got -4"),
            (np.array([10.0, 10.0]), r"group_sizes must hold integers, got dtype float64"),
            (True, r"group_sizes must be an int or a 1-D integer array, got bool"),
            (np.array([[10, 10]]), r"group_sizes must be an int or a 1-D array, got shape \(1, 2\)"),
        ],
    )
    def test_bad_group_sizes(self, impl, function, group_sizes, message):
        with pytest.raises((ValueError, TypeError), match=message):
            getattr(impl, function)(GOOD, GOOD, group_sizes)

    @pytest.mark.parametrize(
        ("rewards", "message"),
        [
            (with_value_at(17, np.nan), r"rewards\[17\] is nan; every value must be finite"),
            (with_value_at(3, np.inf), r"rewards\[3\] is inf"),
            (with_value_at(0, -np.inf), r"rewards\[0\] is -inf"),
            (torch.from_numpy(with_value_at(17, np.nan)).float(), r"rewards\[17\] is nan"),
        ],
        ids=["nan", "inf", "-inf", "torch-nan"],
    )
    def test_non_finite_values_are_located(self, impl, function, rewards, message):
        with pytest.raises(ValueError, match=message):
            getattr(impl, function)(GOOD, rewards, 4)

    @pytest.mark.parametrize(
        ("logprobs", "error", "message"),
        [
            (GOOD.astype(np.complex128), TypeError, r"logprobs has complex dtype complex128; pass real numbers"),
            (GOOD > 0, TypeError, r"logprobs has dtype bool; pass real numbers"),
            (GOOD.astype(str), TypeError, r"logprobs must be numeric, got dtype <U"),
            (GOOD.astype(object), TypeError, r"logprobs must be numeric, got dtype object"),
            ("-1.0, 2.0", TypeError, r"logprobs must be a 1-D numeric array, got str"),
            (GOOD.reshape(4, 5), ValueError, r"logprobs must be 1-D, got shape \(4, 5\)"),
            (np.float64(1.0), ValueError, r"logprobs must be 1-D, got shape \(\)"),
            ([[1.0], [2.0, 3.0]], TypeError, r"logprobs must be a 1-D numeric array"),
            (torch.zeros(20, device="meta"), TypeError, r"logprobs is a torch tensor on meta; move it to the CPU"),
        ],
        ids=["complex", "bool", "str-array", "object", "str", "2-D", "0-D", "ragged-list", "non-cpu-tensor"],
    )
    def test_bad_arrays(self, impl, function, logprobs, error, message):
        with pytest.raises(error, match=message):
            getattr(impl, function)(logprobs, GOOD, 4)


class TestKendallInputs:
    def test_lengths_differ(self, impl):
        with pytest.raises(ValueError, match="x and y must have the same length, got 20 and 3"):
            impl.kendall_tau(GOOD, GOOD[:3])
        with pytest.raises(ValueError, match="x and y must have the same length"):
            impl.kendall_distance(GOOD, GOOD[:3], 1)

    def test_non_finite(self, impl):
        with pytest.raises(ValueError, match=r"y\[5\] is nan"):
            impl.kendall_tau(GOOD, with_value_at(5, np.nan), [20])
        with pytest.raises(ValueError, match=r"x\[19\] is inf"):
            impl.kendall_tau(with_value_at(19, np.inf), GOOD)

    def test_bad_group_sizes(self, impl):
        with pytest.raises(ValueError, match="group_sizes sums to 21 but there are 20 items"):
            impl.kendall_tau(GOOD, GOOD, [1, 20])

    def test_complex(self, impl):
        with pytest.raises(TypeError, match="y has complex dtype"):
            impl.kendall_tau(GOOD, GOOD + 1j)


class TestTopKInputs:
    def test_negative_k(self, impl):
        with pytest.raises(ValueError, match="k must be >= 0, got -1"):
            impl.top_k(GOOD, -1)

    @pytest.mark.parametrize("k", [2.0, True, "3", None])
    def test_k_must_be_an_int(self, impl, k):
        with pytest.raises(TypeError, match="k must be an int"):
            impl.top_k(GOOD, k)

    @pytest.mark.parametrize("k", [2**63, 10**30, np.uint64(2**64 - 1)])
    def test_k_beyond_64_bits_is_named(self, impl, k):
        with pytest.raises(ShfcasValueError, match=r"k must be at most 2\*\*63 - 1, got a \d+-bit integer"):
            impl.top_k(GOOD, k)

    def test_scores_must_be_1d_real(self, impl):
        with pytest.raises(ValueError, match=r"scores must be 1-D, got shape \(4, 5\)"):
            impl.top_k(GOOD.reshape(4, 5), 2)
        with pytest.raises(TypeError, match="scores has complex dtype"):
            impl.top_k(GOOD + 0j, 2)

    def test_infinite_scores_are_allowed(self, impl):
        np.testing.assert_array_equal(impl.top_k(np.array([1.0, np.inf, -np.inf]), 3), [1, 0, 2])


class TestSelectInputs:
    @pytest.fixture
    def scores(self, impl):
        return impl.score(np.arange(16.0), np.arange(16.0)[::-1].copy(), 4)

    def test_scores_must_be_conflict_scores(self, impl):
        with pytest.raises(TypeError, match="scores must be a ConflictScores from shfcas_fast.score, got ndarray"):
            impl.select(GOOD, budget=2)

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"budget": -1}, ValueError, "budget must be >= 0, got -1"),
            ({"budget": 2.5}, TypeError, "budget must be an int, got float"),
            ({"threshold": float("nan")}, ValueError, "threshold must be finite, got nan"),
            ({"threshold": "high"}, TypeError, "threshold must be a number, got str"),
            ({"strategy": "entropy"}, ValueError, "strategy must be \"pacs\", \"kendall\" or \"random\", got 'entropy'"),
            ({"strategy": "random"}, ValueError, 'strategy="random" needs a budget'),
            ({"strategy": "random", "budget": 1, "threshold": 1.0}, ValueError, 'strategy="random" takes no threshold'),
            ({"budget": 10**30}, ValueError, r"budget must be at most 2\*\*63 - 1, got a 100-bit integer"),
            ({"threshold": 10**400}, ValueError, "threshold must be finite, got an int beyond the float range"),
            ({"strategy": "random", "budget": 1, "seed": -1}, ValueError, "seed must be a non-negative int, got -1"),
            ({"strategy": "random", "budget": 1, "seed": 1.5}, TypeError, "seed must be a non-negative int, got float"),
            ({"strategy": "random", "budget": 1, "seed": "7"}, TypeError, "seed must be a non-negative int, got str"),
        ],
    )
    def test_bad_arguments(self, impl, scores, kwargs, error, message):
        with pytest.raises(error, match=message) as raised:
            impl.select(scores, **kwargs)
        assert isinstance(raised.value, ShfcasError)

    def test_any_non_negative_int_seeds_the_draw(self, impl, scores):
        chosen = impl.select(scores, strategy="random", budget=2, seed=2**100)
        assert len(chosen) == 2 and set(chosen) <= set(np.flatnonzero(~scores.degenerate))


class TestTensorInputs:
    def test_sparse_tensors_are_refused_by_name(self, impl):
        sparse = torch.from_numpy(GOOD).to_sparse()
        with pytest.raises(ShfcasTypeError, match=r"rewards is a torch\.sparse_coo torch tensor; pass a dense one"):
            impl.score(GOOD, sparse, 4)


class TestMaskedArrays:
    """A masked array's mask would be dropped by every conversion to a plain array: refused unless nothing is masked."""

    MASKED = np.ma.masked_array(GOOD, mask=np.arange(20) % 7 == 3)  # rows 3, 10 and 17

    @pytest.mark.parametrize(
        ("call", "name"),
        [
            (lambda impl, masked: impl.score(masked, GOOD, 4), "logprobs"),
            (lambda impl, masked: impl.pacs(GOOD, masked, 4), "rewards"),
            (lambda impl, masked: impl.kendall_tau(GOOD, masked, [20]), "y"),
            (lambda impl, masked: impl.kendall_distance(masked, GOOD, 4), "x"),
            (lambda impl, masked: impl.top_k(masked, 2), "scores"),
        ],
        ids=["score", "pacs", "kendall_tau", "kendall_distance", "top_k"],
    )
    def test_masked_values_are_refused_by_name(self, impl, call, name):
        message = rf"{name} is a masked array with 3 masked values \(the first at index 3\).*\.filled\(.*\.compressed\(\)"
        with pytest.raises(ShfcasTypeError, match=message):
            call(impl, self.MASKED)

    def test_masked_group_sizes_are_refused_by_name(self, impl):
        sizes = np.ma.masked_array([4, 4, 4, 8], mask=[False, True, False, False])
        with pytest.raises(ShfcasTypeError, match=r"group_sizes is a masked array with 1 masked value \(the first at index 1\)"):
            impl.score(GOOD, GOOD, sizes)

    def test_a_masked_2d_array_names_the_first_masked_position(self, impl):
        masked = np.ma.masked_array(GOOD.reshape(4, 5), mask=GOOD.reshape(4, 5) > 0.5)
        with pytest.raises(ShfcasTypeError, match=r"scores is a masked array with 5 masked values \(the first at index \(3, 0\)\)"):
            impl.top_k(masked, 2)

    @pytest.mark.parametrize("mask", [np.ma.nomask, np.zeros(20, dtype=bool)], ids=["nomask", "all-false"])
    def test_nothing_masked_is_accepted(self, impl, mask):
        rewards = GOOD[::-1].copy()
        got = impl.score(np.ma.masked_array(GOOD, mask=mask), np.ma.masked_array(rewards, mask=mask), 4)
        expected = impl.score(GOOD, rewards, 4)
        np.testing.assert_array_equal(got.pacs, expected.pacs)
        np.testing.assert_array_equal(got.kendall_tau, expected.kendall_tau)


class TestCoreErrors:
    def test_bad_input_to_the_compiled_core_raises_the_package_error(self):
        with pytest.raises(ShfcasValueError, match="group sizes sum to 5 but there are 3 items"):
            _core.pacs(np.arange(3.0), np.arange(3.0), np.array([0, 5]))
        with pytest.raises(ShfcasValueError, match="x and y must have the same dtype"):
            _core.kendall_tau(np.arange(3.0), np.arange(3.0, dtype=np.float32))


class TestHelpers:
    def test_float32_and_float64_pass_without_copy(self):
        for dtype in (np.float32, np.float64):
            array = GOOD.astype(dtype)
            assert _validation.as_float_vector(array, "values") is array

    def test_torch_tensors_share_memory(self):
        tensor = torch.linspace(0.0, 1.0, 5)
        array = _validation.as_float_vector(tensor, "values")
        assert array.dtype == np.float32 and np.shares_memory(array, tensor.numpy())

    def test_integers_half_and_bfloat16_become_float(self):
        np.testing.assert_array_equal(_validation.as_float_vector(np.arange(3), "values"), [0.0, 1.0, 2.0])
        assert _validation.as_float_vector(np.ones(3, np.float16), "values").dtype == np.float64
        bf16 = _validation.as_float_vector(torch.tensor([0.5, 1.5], dtype=torch.bfloat16), "values")
        np.testing.assert_array_equal(bf16, [0.5, 1.5])

    def test_mixed_precision_pair_is_promoted(self):
        x, y = _validation.as_float_pair(GOOD.astype(np.float32), GOOD, "x", "y")
        assert x.dtype == y.dtype == np.float64

    def test_non_finite_check_can_be_skipped(self):
        values = with_value_at(2, np.nan)
        assert np.isnan(_validation.as_float_vector(values, "scores", finite=False)[2])

    def test_group_offsets(self):
        np.testing.assert_array_equal(_validation.group_offsets(4, 12), [0, 4, 8, 12])
        offsets = _validation.group_offsets(np.array([0, 3, 0, 2], dtype=np.int32), 5)
        np.testing.assert_array_equal(offsets, [0, 0, 3, 3, 5])
        assert offsets.dtype == np.int64
        np.testing.assert_array_equal(_validation.group_offsets([], 0), [0])
        np.testing.assert_array_equal(_validation.group_offsets(8, 0), [0])
