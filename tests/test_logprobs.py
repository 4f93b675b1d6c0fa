"""The host API of ``shfcas_fast.logprobs`` on its torch backend (the Triton kernels: test_kernels.py).

Every number is checked against a float64 transcription of the definition (``log_softmax`` in
float64, a masked sum), against TRL's ``selective_log_softmax``, or against ``shfcas_fast.score``.
The helpers ``reference_sequence_logprobs``, ``eager_sequence_logprobs`` and ``ragged_case`` are
shared with test_kernels.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from trl.trainer.utils import selective_log_softmax

import reference
import shfcas_fast
from shfcas_fast import logprobs as lp
from shfcas_fast.errors import ShfcasTypeError, ShfcasValueError
from shfcas_fast.ops import hidden_logprobs as hidden_op
from shfcas_fast.ops import logprobs as logits_op

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference_sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """float64 ``sum_t counted * log_softmax(logits / temperature)[label]`` per sequence."""
    log_probs = torch.log_softmax(logits.double() / temperature, dim=-1)
    picked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, picked, 0.0).sum(dim=1)


def eager_sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The plain PyTorch computation in the logits' own dtype: the error yardstick."""
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    picked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, picked.float(), 0.0).sum(dim=1)


def error_bound(logits, labels, counted, temperature) -> torch.Tensor:
    """Per sequence: twice the eager error at the same dtype (the flash-attention rule), plus a few
    fp32 ulps of the summed magnitude, since an fp32 eager error can be near 0 by luck."""
    expected = reference_sequence_logprobs(logits, labels, counted, temperature)
    eager = eager_sequence_logprobs(logits, labels, counted, temperature).double()
    log_probs = torch.log_softmax(logits.double() / temperature, dim=-1)
    magnitude = torch.where(counted, log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    return 2 * (eager - expected).abs() + 1e-6 * magnitude.abs().sum(dim=1)


def ragged_case(
    batch: int, positions: int, vocab: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sliced (non-contiguous) logits view, labels with ``ignore_index`` holes and a ragged mask
    with one all-masked row, like the shifted outputs of a causal LM on left-padded prompts."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, positions + 1, vocab, generator=generator)).to(dtype)[:, :-1]
    labels = torch.randint(0, vocab, (batch, positions), generator=generator)
    labels[0, -1] = -100
    starts = torch.randint(0, positions, (batch,), generator=generator)
    mask = torch.arange(positions) >= starts.unsqueeze(1)
    mask[1] = False
    return logits, labels, mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_torch_path_error_is_at_most_twice_eager(dtype, temperature):
    logits, labels, mask = ragged_case(4, 9, 1000, dtype)
    counted = mask & (labels != -100)
    got = lp.sequence_logprobs(logits, labels, mask=mask, temperature=temperature, backend="torch")
    expected = reference_sequence_logprobs(logits, labels, counted, temperature)
    assert got.dtype == torch.float32
    assert torch.all((got.double() - expected).abs() <= error_bound(logits, labels, counted, temperature))
    assert got[1] == 0.0  # the all-masked row adds nothing


@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_sum_matches_trl_selective_log_softmax(temperature):
    logits, labels, mask = ragged_case(3, 8, 4099, torch.float32, seed=1)
    counted = mask & (labels != -100)
    per_token = selective_log_softmax(logits, labels.clamp_min(0), temperature=temperature)
    expected = (per_token * counted).sum(dim=1)
    got = lp.sequence_logprobs(logits, labels, mask=mask, temperature=temperature, backend="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_mean_divides_by_counted_tokens_and_empty_rows_give_zero():
    logits, labels, mask = ragged_case(4, 7, 300, torch.float32, seed=2)
    counted = mask & (labels != -100)
    got = lp.sequence_logprobs(logits, labels, mask=mask, reduction="mean", backend="torch")
    totals = reference_sequence_logprobs(logits, labels, counted)
    expected = torch.where(counted.any(dim=1), totals / counted.sum(dim=1).clamp_min(1), 0.0)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_torch_path_is_exact_across_chunk_boundaries(monkeypatch):
    logits, labels, mask = ragged_case(3, 11, 257, torch.float32, seed=3)
    whole = lp.sequence_logprobs(logits, labels, mask=mask, backend="torch")
    monkeypatch.setattr(logits_op, "TORCH_CHUNK_ELEMENTS", 3 * 257)  # three rows per chunk
    chunked = lp.sequence_logprobs(logits, labels, mask=mask, backend="torch")
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hidden_path_matches_the_explicit_matmul(dtype, monkeypatch):
    # Chunks smaller than the problem: 3 token chunks and 3 vocabulary chunks, the last ones ragged.
    monkeypatch.setattr(hidden_op, "CHUNK_TOKENS", 8)
    monkeypatch.setattr(hidden_op, "CHUNK_VOCAB", 400)
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 9, 24, generator=generator).to(dtype)
    weight = (torch.randn(1000, 24, generator=generator) / 3).to(dtype)
    bias = torch.randn(1000, generator=generator).to(dtype)
    labels = torch.randint(0, 1000, (3, 9), generator=generator)
    mask = torch.rand(3, 9, generator=generator) > 0.2
    got = lp.sequence_logprobs_from_hidden(
        hidden, weight, labels, bias=bias, mask=mask, temperature=0.8, backend="torch"
    )
    logits = hidden.double() @ weight.double().T + bias.double()
    expected = reference_sequence_logprobs(logits, labels, mask, temperature=0.8)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_hidden_path_mean_reduction_and_ignore_index():
    generator = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(2, 6, 8, generator=generator), torch.randn(50, 8, generator=generator)
    labels = torch.randint(0, 50, (2, 6), generator=generator)
    labels[0, :4] = -1
    got = lp.sequence_logprobs_from_hidden(hidden, weight, labels, ignore_index=-1, reduction="mean", backend="torch")
    counted = labels != -1
    expected = reference_sequence_logprobs(hidden.double() @ weight.double().T, labels, counted) / counted.sum(1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_score_logits_equals_score_of_sequence_logprobs():
    logits, labels, mask = ragged_case(12, 6, 500, torch.bfloat16, seed=6)
    mask[1] = True  # keep every group non-degenerate but one
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(7))
    rewards[8:] = 0.5  # a constant-reward group: degenerate
    sizes = np.array([4, 4, 3, 1])
    got = lp.score_logits(logits, labels, rewards, sizes, mask=mask, backend="torch")
    sequence = reference_sequence_logprobs(logits, labels, mask & (labels != -100))
    expected = reference.score(sequence.numpy(), rewards.double().numpy(), sizes)
    np.testing.assert_allclose(got.pacs, expected.pacs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.group_conflict, expected.group_conflict, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.kendall_tau, expected.kendall_tau, rtol=1e-12)
    np.testing.assert_array_equal(got.degenerate, expected.degenerate)
    assert isinstance(got, shfcas_fast.ConflictScores)


def test_score_logits_with_prompt_keys_in_any_order_equals_the_contiguous_scores():
    logits, labels, mask = ragged_case(12, 6, 500, torch.float32, seed=8)
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(9))
    keys = np.repeat(["a", "b", "c"], [5, 4, 3])
    contiguous = lp.score_logits(logits, labels, rewards, [5, 4, 3], mask=mask, backend="torch")
    shuffle = np.random.default_rng(0).permutation(12)
    keyed = lp.score_logits(
        logits[shuffle], labels[shuffle], rewards[shuffle], groups=keys[shuffle], mask=mask[shuffle], backend="torch"
    )
    np.testing.assert_allclose(keyed.pacs, contiguous.pacs[shuffle], rtol=1e-12, atol=1e-12)
    prompts = keys[shuffle][keyed.groups.first_rows]  # per-prompt results in order of first appearance
    wanted = np.searchsorted(["a", "b", "c"], prompts)
    np.testing.assert_allclose(keyed.group_conflict, contiguous.group_conflict[wanted], rtol=1e-12)
    with pytest.raises(ShfcasValueError, match="group_sizes"):
        lp.score_logits(logits, labels, rewards, backend="torch")


META = torch.device("meta")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"logits": torch.zeros(2, 3)}, ShfcasValueError, "logits must have 3 dimensions"),
        ({"logits": torch.zeros(2, 3, 4, dtype=torch.float64)}, ShfcasTypeError, "logits must have dtype"),
        ({"logits": torch.zeros(2, 3, 4, device=META)}, ShfcasValueError, "logits is a meta tensor"),
        ({"labels": torch.zeros(2, 3)}, ShfcasTypeError, "labels must hold integers"),
        ({"labels": torch.zeros(2, 4, dtype=torch.long)}, ShfcasValueError, "labels must have shape"),
        ({"labels": torch.full((2, 3), 4)}, ShfcasValueError, r"labels\[0, 0\] is 4, outside the vocabulary"),
        ({"labels": torch.zeros(2, 3, dtype=torch.long, device=META)}, ShfcasValueError, "labels is a meta tensor"),
        ({"mask": torch.ones(3, 3, dtype=torch.bool)}, ShfcasValueError, "mask must have shape"),
        ({"temperature": 0.0}, ShfcasValueError, "temperature must be finite and positive"),
        ({"temperature": "1"}, ShfcasTypeError, "temperature must be a real number, got str"),
        ({"temperature": torch.tensor([1.0, 2.0])}, ShfcasTypeError, "temperature must be a real number"),
        ({"temperature": torch.tensor(1j)}, ShfcasTypeError, "temperature must be a real number"),
        ({"ignore_index": "x"}, ShfcasTypeError, "ignore_index must be an int, got str"),
        ({"ignore_index": -100.0}, ShfcasTypeError, "ignore_index must be an int, got float"),
        ({"reduction": "max"}, ShfcasValueError, "reduction must be"),
        ({"backend": "cuda"}, ShfcasValueError, "backend must be"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, message):
    arguments = {"logits": torch.zeros(2, 3, 4), "labels": torch.zeros(2, 3, dtype=torch.long)} | kwargs
    with pytest.raises(error, match=message):
        lp.sequence_logprobs(**arguments)


def test_out_of_range_labels_at_uncounted_positions_are_fine():
    labels = torch.tensor([[7, 1, 2]])
    got = lp.sequence_logprobs(torch.zeros(1, 3, 4), labels, mask=labels < 4, backend="torch")
    torch.testing.assert_close(got, torch.tensor([2 * np.log(0.25)], dtype=torch.float32))


def test_hidden_path_checks_weight_and_bias():
    hidden, labels = torch.zeros(1, 2, 8), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ShfcasValueError, match=r"weight must be \[V, 8\]"):
        lp.sequence_logprobs_from_hidden(hidden, torch.zeros(5, 7), labels)
    with pytest.raises(ShfcasTypeError, match="weight must have dtype float32"):
        lp.sequence_logprobs_from_hidden(hidden, torch.zeros(5, 8, dtype=torch.bfloat16), labels)
    with pytest.raises(ShfcasValueError, match="bias must have 5 entries"):
        lp.sequence_logprobs_from_hidden(hidden, torch.zeros(5, 8), labels, bias=torch.zeros(4))
    with pytest.raises(ShfcasValueError, match="hidden has a hidden size of 0"):
        lp.sequence_logprobs_from_hidden(torch.zeros(1, 2, 0), torch.zeros(5, 0), labels)
    with pytest.raises(ShfcasValueError, match="hidden is a meta tensor"):
        lp.sequence_logprobs_from_hidden(hidden.to(META), torch.zeros(5, 8, device=META), labels.to(META))
    with pytest.raises(ShfcasTypeError, match="ignore_index must be an int"):
        lp.sequence_logprobs_from_hidden(hidden, torch.zeros(5, 8), labels, ignore_index="x")


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        lp.sequence_logprobs(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long), backend="triton")


def test_score_logits_refuses_non_finite_log_probs():
    logits = torch.zeros(2, 2, 3)
    logits[0, 0, 1] = -torch.inf  # the label has probability 0: l = -inf
    labels = torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"logprobs\[0\] is -inf"):
        lp.score_logits(logits, labels, [0.0, 1.0], 2, backend="torch")


@pytest.mark.parametrize(
    "temperature", [np.float32(0.7), np.float64(0.7), torch.tensor(0.7), torch.tensor(0.7, dtype=torch.float64)]
)
def test_temperature_may_be_any_real_scalar(temperature):
    logits, labels, mask = ragged_case(2, 4, 30, torch.float32, seed=8)
    got = lp.sequence_logprobs(logits, labels, mask=mask, temperature=temperature, backend="torch")
    expected = lp.sequence_logprobs(logits, labels, mask=mask, temperature=float(temperature), backend="torch")
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(lp.sequence_logprobs(logits, labels, temperature=np.int64(2)), lp.sequence_logprobs(logits, labels, temperature=2.0))


def test_ignore_index_may_be_a_numpy_integer():
    logits, labels, _ = ragged_case(2, 4, 30, torch.float32, seed=9)
    got = lp.sequence_logprobs(logits, labels, ignore_index=np.int64(-100), backend="torch")
    torch.testing.assert_close(got, lp.sequence_logprobs(logits, labels, backend="torch"), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_logits_at_a_counted_position_are_refused(bad):
    logits = torch.zeros(2, 3, 50)
    logits[1, 2, 7] = bad
    labels = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ShfcasValueError, match=r"logits give a NaN log-probability for sequence 1"):
        lp.sequence_logprobs(logits, labels, backend="torch")
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False  # an uncounted position is never read
    got = lp.sequence_logprobs(logits, labels, mask=mask, backend="torch")
    torch.testing.assert_close(got, torch.tensor([-3 * np.log(50), -2 * np.log(50)], dtype=torch.float32))


def test_a_label_of_probability_zero_gives_minus_inf():
    logits = torch.zeros(1, 2, 5)
    logits[0, 1, 3] = -torch.inf  # filtered out, and then sampled: log-probability -inf, not an error
    got = lp.sequence_logprobs(logits, torch.tensor([[0, 3]]), backend="torch")
    assert got.tolist() == [-np.inf]


def test_nan_hidden_states_are_refused():
    hidden, weight = torch.randn(2, 3, 8), torch.randn(20, 8)
    hidden[0, 1, 2] = torch.nan
    labels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ShfcasValueError, match=r"hidden, weight or bias give a NaN log-probability for sequence 0"):
        lp.sequence_logprobs_from_hidden(hidden, weight, labels, backend="torch")


def test_hidden_path_a_leading_vocabulary_chunk_of_minus_inf_bias():
    # The whole first chunk of the torch path (8192 entries) is -inf: a running max of -inf must
    # not give exp(-inf - -inf) = NaN. The only finite logit is the label's: log-prob 0.
    vocab = hidden_op.CHUNK_VOCAB + 1
    generator = torch.Generator().manual_seed(10)
    weight, bias = torch.randn(vocab, 8, generator=generator), torch.zeros(vocab)
    bias[: hidden_op.CHUNK_VOCAB] = -torch.inf
    got = lp.sequence_logprobs_from_hidden(
        torch.randn(1, 1, 8, generator=generator), weight, torch.tensor([[vocab - 1]]), bias=bias, backend="torch"
    )
    assert got.tolist() == [0.0]


@pytest.mark.parametrize("blocked", [(0, 16), (16, 32), (32, 40), (0, 32)], ids=["first", "middle", "last", "two"])
def test_hidden_path_a_chunk_of_only_minus_inf_bias_adds_nothing(blocked, monkeypatch):
    monkeypatch.setattr(hidden_op, "CHUNK_VOCAB", 16)  # chunks [0, 16), [16, 32), [32, 40)
    monkeypatch.setattr(hidden_op, "CHUNK_TOKENS", 4)
    generator = torch.Generator().manual_seed(11)
    hidden, weight = torch.randn(2, 3, 8, generator=generator), torch.randn(40, 8, generator=generator)
    bias = torch.randn(40, generator=generator)
    bias[blocked[0] : blocked[1]] = -torch.inf
    allowed = torch.tensor([v for v in range(40) if not blocked[0] <= v < blocked[1]])
    labels = allowed[torch.randint(0, allowed.numel(), (2, 3), generator=generator)]
    got = lp.sequence_logprobs_from_hidden(hidden, weight, labels, bias=bias, backend="torch")
    logits = hidden.double() @ weight.double().T + bias.double()
    expected = reference_sequence_logprobs(logits, labels, torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_the_torch_backend_never_imports_triton():
    code = (
        "import sys, torch, shfcas_fast\n"
        "x, y = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)\n"
        "shfcas_fast.sequence_logprobs(x, y, backend='torch')\n"
        "shfcas_fast.sequence_logprobs_from_hidden(x, torch.zeros(4, 5), y, backend='torch')\n"
        "shfcas_fast.score_logits(x, y, [0.0, 1.0], 2, backend='torch')\n"
        "print('triton' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False"]

