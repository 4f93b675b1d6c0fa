"""The Triton kernels, through the public API with ``backend="triton"``.

On a machine without CUDA they run under Triton's interpreter on tiny odd shapes. Triton chooses
between compiling and interpreting when each ``@jit`` function is *defined*, its own ``tl.max``
included, so ``TRITON_INTERPRET=1`` must be set before triton is first imported: conftest.py does
so when there is no CUDA. Tests skip only when neither CUDA nor the interpreter is available, and
say which. The test marked ``gpu`` needs real hardware: the bf16 tensor-core matmul.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from trl.trainer.utils import selective_log_softmax

import reference
import shfcas_fast
from shfcas_fast import logprobs as lp
from shfcas_fast.errors import ShfcasValueError
from shfcas_fast.ops import hidden_logprobs as hidden_op
from shfcas_fast.ops import logprobs as logits_op
from shfcas_fast.ops import zscore
from test_logprobs import (
    DTYPES,
    error_bound,
    ragged_case,
    reference_sequence_logprobs,
)


def _kernels_runnable() -> tuple[bool, str]:
    if torch.cuda.is_available():
        return True, ""
    if not lp._triton_installed():
        return False, "no CUDA and triton is not installed"
    try:
        lp._use_triton("triton", torch.device("cpu"))
    except ValueError as err:  # the interpreter is off, or triton was imported before it was set
        return False, f"no CUDA and no Triton interpreter: {err}"
    return True, ""


_RUNNABLE, _WHY_NOT = _kernels_runnable()
pytestmark = pytest.mark.skipif(not _RUNNABLE, reason=_WHY_NOT)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("vocab", [1000, 4099])
@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_kernel_error_is_at_most_twice_eager(dtype, vocab):
    logits, labels, mask = ragged_case(3, 7, vocab, dtype)
    logits, labels, mask = logits.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
    counted = mask & (labels != -100)
    got = lp.sequence_logprobs(logits, labels, mask=mask, temperature=0.7, backend="triton")
    expected = reference_sequence_logprobs(logits, labels, counted, 0.7)
    assert got.dtype == torch.float32 and got.device == logits.device
    assert torch.all((got.double() - expected).abs() <= error_bound(logits, labels, counted, 0.7))
    assert got[1] == 0.0  # the all-masked row


@pytest.mark.parametrize("vocab", [1000, 4099])
def test_logits_kernel_lanes_past_the_vocabulary_add_nothing(vocab):
    # Uniform logits: each token's log-prob is -log(V) exactly when padded lanes are -inf; lanes
    # filled with 0 instead would give -log(next block multiple).
    logits = torch.zeros(1, 2, vocab, device=DEVICE)
    labels = torch.tensor([[0, vocab - 1]], device=DEVICE)
    got = lp.sequence_logprobs(logits, labels, backend="triton")
    torch.testing.assert_close(got.double().cpu(), torch.tensor([-2 * np.log(vocab)], dtype=torch.float64))


# Vocabulary 40 in blocks of 16: [0, 16), [16, 32), [32, 40).
@pytest.mark.parametrize("blocked", [(0, 16), (16, 32), (32, 40), (0, 32)], ids=["first", "middle", "last", "two"])
def test_logits_kernel_a_block_of_only_minus_inf_adds_nothing(blocked, monkeypatch):
    # Filtered (top-k, grammar) logits: a block whose max is -inf must not give exp(-inf - -inf) = NaN.
    monkeypatch.setattr(logits_op, "BLOCK_V", 16)
    generator = torch.Generator().manual_seed(22)
    logits = torch.randn(2, 3, 40, generator=generator)
    logits[..., blocked[0] : blocked[1]] = -torch.inf
    allowed = torch.tensor([v for v in range(40) if not blocked[0] <= v < blocked[1]])
    labels = allowed[torch.randint(0, allowed.numel(), (2, 3), generator=generator)]
    got = lp.sequence_logprobs(logits.to(DEVICE), labels.to(DEVICE), temperature=0.8, backend="triton")
    expected = reference_sequence_logprobs(logits, labels, torch.ones(2, 3, dtype=torch.bool), 0.8)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-5, atol=1e-5)


def test_logits_kernel_a_leading_vocabulary_block_of_minus_inf():
    logits = torch.zeros(1, 1, logits_op.BLOCK_V + 1, device=DEVICE)
    logits[..., : logits_op.BLOCK_V] = -torch.inf  # the only finite logit is the label's: log-prob 0
    got = lp.sequence_logprobs(logits, torch.tensor([[logits_op.BLOCK_V]], device=DEVICE), backend="triton")
    assert got.tolist() == [0.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_logits_kernel_refuses_nan_or_inf_at_a_counted_position(bad):
    logits = torch.zeros(2, 3, 50, device=DEVICE)
    logits[1, 2, 7] = bad
    labels = torch.ones(2, 3, dtype=torch.long, device=DEVICE)
    with pytest.raises(ShfcasValueError, match=r"logits give a NaN log-probability for sequence 1"):
        lp.sequence_logprobs(logits, labels, backend="triton")
    mask = torch.ones(2, 3, dtype=torch.bool, device=DEVICE)
    mask[1, 2] = False  # never read
    got = lp.sequence_logprobs(logits, labels, mask=mask, backend="triton")
    torch.testing.assert_close(got.cpu(), torch.tensor([-3 * np.log(50), -2 * np.log(50)], dtype=torch.float32))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logits_kernel_sum_matches_trl_selective_log_softmax(temperature):
    logits, labels, mask = ragged_case(2, 9, 4099, torch.float32, seed=11)
    logits, labels, mask = logits.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
    counted = mask & (labels != -100)
    per_token = selective_log_softmax(logits, labels.clamp_min(0), temperature=temperature)
    got = lp.sequence_logprobs(logits, labels, mask=mask, temperature=temperature, backend="triton")
    torch.testing.assert_close(got, (per_token * counted).sum(dim=1), rtol=1e-5, atol=1e-4)


def test_logits_kernel_mean_and_determinism():
    logits, labels, mask = ragged_case(3, 5, 1000, torch.bfloat16, seed=12)
    logits, labels, mask = logits.to(DEVICE), labels.to(DEVICE), mask.to(DEVICE)
    first = lp.sequence_logprobs(logits, labels, mask=mask, reduction="mean", backend="triton")
    second = lp.sequence_logprobs(logits, labels, mask=mask, reduction="mean", backend="triton")
    assert torch.equal(first, second)  # bitwise: no atomics in any reduction
    counted = mask & (labels != -100)
    expected = reference_sequence_logprobs(logits, labels, counted) / counted.sum(dim=1).clamp_min(1)
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [1000, 4099])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hidden_kernel_matches_the_explicit_matmul(dtype, vocab):
    generator = torch.Generator().manual_seed(vocab)
    hidden = torch.randn(2, 7, 40, generator=generator).to(dtype)
    weight = (torch.randn(vocab, 40, generator=generator) / 4).to(dtype)
    bias = torch.randn(vocab, generator=generator).to(dtype)
    labels = torch.randint(0, vocab, (2, 7), generator=generator)
    mask = torch.rand(2, 7, generator=generator) > 0.3
    tensors = [t.to(DEVICE) for t in (hidden, weight, bias, labels, mask)]
    got = lp.sequence_logprobs_from_hidden(
        *tensors[:2], tensors[3], bias=tensors[2], mask=tensors[4], temperature=0.7, backend="triton"
    )
    logits = hidden.double() @ weight.double().T + bias.double()
    expected = reference_sequence_logprobs(logits, labels, mask, 0.7)
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-5, atol=1e-4)


def test_hidden_kernel_without_bias_all_masked_row_and_determinism():
    generator = torch.Generator().manual_seed(13)
    hidden = torch.randn(3, 5, 24, generator=generator, device="cpu").to(DEVICE)
    weight = torch.randn(777, 24, generator=generator).to(DEVICE)
    labels = torch.randint(0, 777, (3, 5), generator=generator).to(DEVICE)
    mask = torch.ones(3, 5, dtype=torch.bool, device=DEVICE)
    mask[2] = False
    first = lp.sequence_logprobs_from_hidden(hidden, weight, labels, mask=mask, backend="triton")
    second = lp.sequence_logprobs_from_hidden(hidden, weight, labels, mask=mask, backend="triton")
    assert torch.equal(first, second)
    assert first[2] == 0.0
    expected = reference_sequence_logprobs(hidden.double() @ weight.double().T, labels, mask)
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=1e-4)


# Vocabulary 200 in tiles of 32, four slices of two tiles: [0, 64), [64, 128), [128, 192), [192, 200).
@pytest.mark.parametrize(
    "blocked",
    [(0, 32), (64, 96), (96, 128), (192, 200), (0, 128)],
    ids=["first-tile", "leading-tile-of-a-slice", "second-tile-of-a-slice", "last-tile", "two-slices"],
)
def test_hidden_kernel_a_tile_of_only_minus_inf_bias_adds_nothing(blocked, monkeypatch):
    for blocks in ("GPU_BLOCKS", "INTERPRETER_BLOCKS"):
        monkeypatch.setattr(hidden_op, blocks, (16, 32, 16))
    generator = torch.Generator().manual_seed(23)
    hidden, weight = torch.randn(2, 3, 8, generator=generator), torch.randn(200, 8, generator=generator)
    bias = torch.randn(200, generator=generator)
    bias[blocked[0] : blocked[1]] = -torch.inf
    allowed = torch.tensor([v for v in range(200) if not blocked[0] <= v < blocked[1]])
    labels = allowed[torch.randint(0, allowed.numel(), (2, 3), generator=generator)]
    got = lp.sequence_logprobs_from_hidden(
        *(t.to(DEVICE) for t in (hidden, weight, labels)), bias=bias.to(DEVICE), backend="triton"
    )
    logits = hidden.double() @ weight.double().T + bias.double()
    expected = reference_sequence_logprobs(logits, labels, torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-5, atol=1e-4)


def test_score_logits_on_the_device_matches_the_float64_reference():
    logits, labels, mask = ragged_case(13, 6, 1000, torch.float16, seed=14)
    mask[1] = True
    rewards = torch.randn(13, generator=torch.Generator().manual_seed(15))
    rewards[9:12] = -1.0  # constant rewards: a degenerate group
    sizes = np.array([5, 0, 4, 3, 1])  # an empty group and a lone completion too
    got = lp.score_logits(
        logits.to(DEVICE), labels.to(DEVICE), rewards.to(DEVICE), sizes, mask=mask.to(DEVICE), backend="triton"
    )
    sequence = reference_sequence_logprobs(logits, labels, mask & (labels != -100))
    expected = reference.score(sequence.numpy(), rewards.double().numpy(), sizes)
    for field in ("pacs", "z_logprob", "z_reward", "group_conflict"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.kendall_tau, expected.kendall_tau, rtol=1e-12)
    np.testing.assert_allclose(got.kendall_distance, expected.kendall_distance, rtol=1e-12)
    np.testing.assert_array_equal(got.degenerate, expected.degenerate)


def test_score_logits_kernel_sweeps_groups_larger_than_its_block():
    sizes = np.array([zscore.GROUP_BLOCK + 37, 3])
    n = int(sizes.sum())
    logits, labels, mask = (t.to(DEVICE) for t in ragged_case(n, 2, 64, torch.float32, seed=16))
    rewards = torch.randn(n, generator=torch.Generator().manual_seed(17))
    got = lp.score_logits(logits, labels, rewards, sizes, mask=mask, backend="triton")
    # Same sequence log-probs into the float64 reference, so only the z-score kernel is compared.
    sequence = lp.sequence_logprobs(logits, labels, mask=mask, backend="triton")
    expected = reference.score(sequence.double().cpu().numpy(), rewards.double().numpy(), sizes)
    np.testing.assert_allclose(got.pacs, expected.pacs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.group_conflict, expected.group_conflict, rtol=1e-9)


def _assert_same_scores(got, expected):
    """The Triton path's scores against the engine's, field by field (sums in another order: 1e-12)."""
    np.testing.assert_array_equal(got.degenerate, expected.degenerate)
    np.testing.assert_array_equal(got.group_sizes, expected.group_sizes)
    for field in ("pacs", "z_logprob", "z_reward", "group_conflict"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.kendall_tau, expected.kendall_tau)
    np.testing.assert_array_equal(got.kendall_distance, expected.kendall_distance)


@pytest.mark.parametrize("magnitude", [1e9, 1e12, 1e15, 1e100, 1e300])
def test_zscore_kernel_constant_prompts_are_degenerate_at_any_magnitude(magnitude):
    # The computed deviation of a constant prompt is the rounding error of its mean, which grows with
    # the magnitude: the rule std <= n * DEGENERATE_RELATIVE_STD * |mean| must flag it, as the engine does.
    rng = np.random.default_rng(24)
    sizes = np.array([7, zscore.GROUP_BLOCK + 5, 3, 4])
    logprobs, rewards = rng.normal(size=(2, int(sizes.sum())))
    logprobs[:7] = -1.2345678901234567 * magnitude
    rewards[7 : 7 + sizes[1]] = 0.7654321098765432 * magnitude
    logprobs[-4:] *= magnitude  # spread at the same magnitude: not degenerate
    got = zscore.conflict_scores(torch.from_numpy(logprobs).to(DEVICE), logprobs, rewards, sizes, use_triton=True)
    expected = shfcas_fast.score(logprobs, rewards, sizes)
    np.testing.assert_array_equal(expected.degenerate, [True, True, False, False])
    _assert_same_scores(got, expected)
    assert not np.any(got.z_logprob[:7]) and not np.any(got.z_reward[7 : 7 + sizes[1]])


def test_zscore_kernel_values_whose_sums_or_squares_overflow():
    # Group 0: the sum overflows; group 1: the squared deviations do; group 2 is just below 2^401,
    # group 3 at 2^401 (scaled); group 4 spans 1e308 to 1e-300 (the small values scale to subnormals).
    logprobs = np.array(
        [1.5e308, 1.7e308, -1e308, 0.0, 1e200, -1e200, 3e200, 2.0**401 * 0.75, 2.0**400, -(2.0**400),
         2.0**401, 2.0**400, 3.0, 1e308, 1e-300, -1e-300]
    )
    rewards = np.linspace(-2.0, 3.0, logprobs.size) ** 2
    sizes = np.array([4, 3, 3, 3, 3])
    got = zscore.conflict_scores(torch.from_numpy(logprobs).to(DEVICE), logprobs, rewards, sizes, use_triton=True)
    expected = shfcas_fast.score(logprobs, rewards, sizes)
    assert np.all(np.isfinite(expected.pacs)) and not np.any(expected.degenerate)
    _assert_same_scores(got, expected)


def test_policy_logprobs_on_the_triton_backend_matches_the_naive_logits():
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(config).eval().to(DEVICE)
    generator = torch.Generator().manual_seed(18)
    input_ids = torch.randint(0, 1000, (3, 8), generator=generator).to(DEVICE)
    attention_mask = torch.ones_like(input_ids)
    response_mask = (torch.arange(8, device=DEVICE) >= 4).expand(3, 8)
    got = lp.policy_logprobs(model, input_ids, attention_mask, response_mask, backend="triton")
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask).logits[:, :-1]
    expected = reference_sequence_logprobs(logits, input_ids[:, 1:], response_mask[:, 1:])
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_logits_kernel_offsets_past_2_to_the_31():
    # 16,400 positions x 131,072 vocabulary = 2.15e9 elements: with 32-bit offsets position * stride
    # wraps and the kernel reads outside the buffer (a wrong value or a crash). torch.empty leaves
    # the 4.3 GB unwritten (on the CPU, pages never touched stay virtual); only the last 64 rows are
    # filled and counted, and uncounted rows are never read.
    positions, vocab, tail = 16_400, 131_072, 64
    logits = torch.empty(1, positions, vocab, dtype=torch.bfloat16, device=DEVICE)
    generator = torch.Generator().manual_seed(20)
    logits[:, -tail:] = torch.randn(1, tail, vocab, generator=generator).to(DEVICE, torch.bfloat16)
    labels = torch.randint(0, vocab, (1, positions), generator=generator).to(DEVICE)
    mask = torch.zeros(1, positions, dtype=torch.bool, device=DEVICE)
    mask[0, -tail:] = True
    got = lp.sequence_logprobs(logits, labels, mask=mask, backend="triton")
    expected = reference_sequence_logprobs(logits[:, -tail:], labels[:, -tail:], mask[:, -tail:])
    torch.testing.assert_close(got.double().cpu(), expected.cpu(), rtol=1e-5, atol=1e-3)


def test_hidden_kernel_offsets_past_2_to_the_31():
    # 2**21 + 64 positions x 1024 hidden = 2.15e9 elements, unwritten but for the counted tail.
    positions, hidden_size, vocab, tail = 2**21 + 64, 1024, 300, 40
    hidden = torch.empty(1, positions, hidden_size, dtype=torch.bfloat16, device=DEVICE)
    generator = torch.Generator().manual_seed(21)
    hidden[:, -tail:] = torch.randn(1, tail, hidden_size, generator=generator).to(DEVICE, torch.bfloat16)
    weight = (torch.randn(vocab, hidden_size, generator=generator) / 32).to(DEVICE, torch.bfloat16)
    labels = torch.randint(0, vocab, (1, positions), generator=generator).to(DEVICE)
    mask = torch.zeros(1, positions, dtype=torch.bool, device=DEVICE)
    mask[0, -tail:] = True
    got = lp.sequence_logprobs_from_hidden(hidden, weight, labels, mask=mask, backend="triton")
    logits = hidden[:, -tail:].double() @ weight.double().T
    expected = reference_sequence_logprobs(logits, labels[:, -tail:], mask[:, -tail:])
    torch.testing.assert_close(got.double().cpu(), expected.cpu(), rtol=1e-5, atol=1e-3)


# Compiling (not interpreting) for sm_90 needs no GPU: Triton's front end, LLVM and ptxas run on the
# CPU. It catches what the interpreter lets through (loop-carried types, constexpr annotations).
_COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from shfcas_fast.ops import hidden_logprobs, logprobs, zscore

def compile_sm90(kernel, types, constexprs):
    fn = kernel.jitted
    signature = dict(zip(fn.arg_names, types.split())) | {name: "constexpr" for name in constexprs}
    keys = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    compiled = triton.compile(triton.compiler.ASTSource(fn, signature, keys), target=GPUTarget("cuda", 90, 32))
    print(fn.__name__, "cubin" in compiled.asm)

compile_sm90(logprobs.token_logprobs_kernel, "*bf16 *i64 *i8 *fp32 i32 i32 i64 i64 fp32", {"BLOCK_V": 4096})
compile_sm90(
    hidden_logprobs.hidden_partials_kernel,
    "*bf16 *bf16 *bf16 *i64 *i64 *fp32 *fp32 *fp32 i32 i32 i32 i64 i64 i64 fp32",
    {"HAS_BIAS": True, "INPUT_PRECISION": "ieee", "UPCAST_TILES": False, "BLOCK_T": 128, "BLOCK_V": 128, "BLOCK_H": 64},
)
compile_sm90(
    zscore.group_pacs_kernel,
    "*fp64 *fp64 *i64 *fp64 *fp64 *fp64 *fp64 *i8",
    {"STD_EPS": 1e-8, "DEGENERATE_STD": 1e-6, "DEGENERATE_RELATIVE_STD": 2.0**-52, "BLOCK": zscore.GROUP_BLOCK},
)
"""


@pytest.mark.slow
def test_every_kernel_compiles_to_a_cubin_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "token_logprobs_kernel", "True", "hidden_partials_kernel", "True", "group_pacs_kernel", "True"
    ]


@needs_cuda
@pytest.mark.gpu
def test_hidden_kernel_bf16_tensor_cores_match_the_explicit_matmul():
    generator = torch.Generator(device="cuda").manual_seed(19)
    hidden = torch.randn(4, 300, 512, device="cuda", generator=generator).to(torch.bfloat16)
    weight = (torch.randn(50_257, 512, device="cuda", generator=generator) / 16).to(torch.bfloat16)
    labels = torch.randint(0, 50_257, (4, 300), device="cuda", generator=generator)
    got = lp.sequence_logprobs_from_hidden(hidden, weight, labels, backend="triton")
    expected = reference_sequence_logprobs(hidden.double() @ weight.double().T, labels, labels >= 0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-2)
