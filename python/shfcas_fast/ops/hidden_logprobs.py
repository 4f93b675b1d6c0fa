"""Op: final hidden states x LM head -> per-sequence sum of the labels' log-probabilities, no logits.

The Triton kernel computes, for a tile of ``BLOCK_T`` tokens and one slice of the vocabulary, the
logits tile by tile (``BLOCK_T x BLOCK_V``, accumulated over ``H`` in fp32 with ``tl.dot``) and
folds each tile into an online log-sum-exp: a running max, a running sum of exponentials and the
label's logit when the label falls in the slice. Tokens go on grid axis 0 and vocabulary slices on
axis 1 (a handful), so few tokens still fill the device. The host combines the ``[slices, n]``
partials in a fixed order, which keeps the result deterministic (no atomics). The torch fallback
runs the same online log-sum-exp over fp32 logits tiles of ``CHUNK_TOKENS x CHUNK_VOCAB``. Only
counted positions are computed.

Example:
```python
>>> import torch
>>> from shfcas_fast.ops import hidden_logprobs
>>> hidden, weight = torch.randn(2, 5, 16), torch.randn(100, 16)
>>> labels, counted = torch.randint(0, 100, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
>>> sums = hidden_logprobs.sequence_logprob_sums(hidden, weight, None, labels, counted, 1.0, use_triton=False)
>>> expected = torch.log_softmax(hidden @ weight.T, -1).gather(-1, labels[..., None]).sum((1, 2))
>>> torch.allclose(sums, expected, atol=1e-4)
True

```
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ._jit import lazy_jit

if TYPE_CHECKING:
    import triton.language as tl

__all__ = [
    "CHUNK_TOKENS",
    "CHUNK_VOCAB",
    "GPU_BLOCKS",
    "GPU_LAUNCH",
    "INTERPRETER_BLOCKS",
    "hidden_partials_kernel",
    "sequence_logprob_sums",
]


@lazy_jit
def hidden_partials_kernel(
    hidden_ptr,
    weight_ptr,
    bias_ptr,
    rows_ptr,
    labels_ptr,
    max_ptr,
    sumexp_ptr,
    label_logit_ptr,
    num_tokens,
    vocab_size,
    hidden_size,
    stride_hidden_row,
    stride_weight_row,
    slice_size,
    temperature,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_TILES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Online log-sum-exp partials of ``hidden[rows] @ weight[slice].T (+ bias) / temperature``.

    ``rows`` (int64) selects the ``num_tokens`` counted rows of the 2-D ``hidden`` view and
    ``labels`` holds their labels; partial ``s`` of token ``i`` is written at ``s * num_tokens + i``.
    ``UPCAST_TILES`` converts the tiles to fp32 before ``tl.dot``: Triton's interpreter keeps bf16 as
    raw uint16 and its ``dot`` multiplies those bits, so the host sets it for bf16 under
    ``TRITON_INTERPRET=1`` only (bf16 products are exact in fp32, so the result is the same).
    """
    tile = tl.program_id(0).to(tl.int64)
    vocab_slice = tl.program_id(1).to(tl.int64)
    tokens = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = tokens < num_tokens
    rows = tl.load(rows_ptr + tokens, mask=token_ok, other=0).to(tl.int64)
    labels = tl.load(labels_ptr + tokens, mask=token_ok, other=-1).to(tl.int64)
    hidden_rows = hidden_ptr + rows[:, None] * stride_hidden_row

    slice_start = vocab_slice * slice_size
    slice_end = tl.minimum(slice_start + slice_size, vocab_size)
    running_max = tl.full([BLOCK_T], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_T], tl.float32)
    label_logit = tl.zeros([BLOCK_T], tl.float32)
    for vocab_start in range(slice_start, slice_end, BLOCK_V):
        cols = vocab_start + tl.arange(0, BLOCK_V).to(tl.int64)
        col_ok = cols < slice_end
        weight_cols = weight_ptr + cols[None, :] * stride_weight_row
        logits = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for hidden_start in range(0, hidden_size, BLOCK_H):
            dims = hidden_start + tl.arange(0, BLOCK_H)
            dim_ok = dims < hidden_size
            h = tl.load(hidden_rows + dims[None, :], mask=token_ok[:, None] & dim_ok[None, :], other=0.0)
            w = tl.load(weight_cols + dims[:, None], mask=dim_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST_TILES:
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            logits = tl.dot(h, w, logits, input_precision=INPUT_PRECISION)
        if HAS_BIAS:
            logits += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        logits = logits / temperature
        # Columns past the slice must be -inf, not 0, before the max and the sum of exponentials.
        logits = tl.where(col_ok[None, :], logits, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        # A -inf bias can make every tile seen so far -inf: shift by 0 then, not by -inf, which
        # would give exp(-inf - -inf) = NaN instead of the empty sum 0.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(logits - shift[:, None]), axis=1)
        running_max = new_max
        label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), axis=1)

    out = vocab_slice * num_tokens + tokens
    tl.store(max_ptr + out, running_max, mask=token_ok)
    tl.store(sumexp_ptr + out, running_sum, mask=token_ok)
    tl.store(label_logit_ptr + out, label_logit, mask=token_ok)


#: Tile of the kernel on a GPU (tokens, vocabulary, hidden) and its launch settings.
GPU_BLOCKS = (128, 128, 64)
GPU_LAUNCH = {"num_warps": 8, "num_stages": 3}
#: Small tiles under the interpreter, so test shapes still span several tiles and slices.
INTERPRETER_BLOCKS = (16, 32, 16)


def _counted_logprobs_triton(
    hidden_rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Label log-probs of ``hidden_rows[rows]`` from the kernel's per-slice partials."""
    num_tokens, vocab = rows.numel(), weight.shape[0]
    if num_tokens == 0:
        return torch.zeros(0, dtype=torch.float32, device=hidden_rows.device)
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    on_gpu = hidden_rows.device.type == "cuda"
    block_t, block_v, block_h = GPU_BLOCKS if on_gpu else INTERPRETER_BLOCKS
    token_tiles = -(-num_tokens // block_t)
    # Split the vocabulary so that few tokens still give every SM two programs; the interpreter gets
    # several slices too, so the tests cover the combination of partials.
    target_programs = 2 * torch.cuda.get_device_properties(hidden_rows.device).multi_processor_count if on_gpu else 4
    vocab_tiles = -(-vocab // block_v)
    slices = min(vocab_tiles, max(1, -(-target_programs // token_tiles)))
    slice_size = -(-vocab_tiles // slices) * block_v
    slices = -(-vocab // slice_size)
    partials = torch.empty(3, slices, num_tokens, dtype=torch.float32, device=hidden_rows.device)
    hidden_partials_kernel[(token_tiles, slices)](
        hidden_rows,
        weight,
        weight if bias is None else bias,  # never read without bias (HAS_BIAS=False)
        rows,
        labels,
        partials[0],
        partials[1],
        partials[2],
        num_tokens,
        vocab,
        hidden_rows.shape[1],
        hidden_rows.stride(0),
        weight.stride(0),
        slice_size,
        float(temperature),
        HAS_BIAS=bias is not None,
        # fp32 inputs take the exact fp32 dot, not TF32 (16-bit inputs ignore this).
        INPUT_PRECISION="ieee",
        UPCAST_TILES=not on_gpu and hidden_rows.dtype == torch.bfloat16,
        BLOCK_T=block_t,
        BLOCK_V=block_v,
        BLOCK_H=block_h,
        **(GPU_LAUNCH if on_gpu else {}),
    )
    slice_max, slice_sum, slice_label = partials
    shift = _finite_shift(slice_max.max(dim=0).values)
    log_normaliser = shift + torch.log((slice_sum * torch.exp(slice_max - shift)).sum(dim=0))
    return slice_label.sum(dim=0) - log_normaliser


#: The torch fallback builds fp32 logits tiles of at most this many tokens x vocabulary entries.
CHUNK_TOKENS = 2048
CHUNK_VOCAB = 8192


def _counted_logprobs_torch(
    hidden_rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rows: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Label log-probs of ``hidden_rows[rows]`` with an online log-sum-exp over fp32 logits tiles."""
    num_tokens, vocab = rows.numel(), weight.shape[0]
    device = hidden_rows.device
    running_max = torch.full((num_tokens,), -math.inf, dtype=torch.float32, device=device)
    running_sum = torch.zeros(num_tokens, dtype=torch.float32, device=device)
    label_logit = torch.zeros(num_tokens, dtype=torch.float32, device=device)
    for vocab_start in range(0, vocab, CHUNK_VOCAB):
        weight_chunk = weight[vocab_start : vocab_start + CHUNK_VOCAB].float()
        bias_chunk = None if bias is None else bias[vocab_start : vocab_start + CHUNK_VOCAB].float()
        chunk_vocab = weight_chunk.shape[0]
        for token_start in range(0, num_tokens, CHUNK_TOKENS):
            tokens = slice(token_start, token_start + CHUNK_TOKENS)
            logits = torch.nn.functional.linear(hidden_rows[rows[tokens]].float(), weight_chunk, bias_chunk)
            logits /= temperature
            local = labels[tokens] - vocab_start
            inside = (local >= 0) & (local < chunk_vocab)
            picked = logits.gather(1, local.clamp(0, chunk_vocab - 1).unsqueeze(1)).squeeze(1)
            label_logit[tokens] += torch.where(inside, picked, 0.0)
            new_max = torch.maximum(running_max[tokens], logits.max(dim=1).values)
            shift = _finite_shift(new_max)
            tile_sum = logits.sub_(shift.unsqueeze(1)).exp_().sum(dim=1)  # in place: one tile alive
            running_sum[tokens] = running_sum[tokens] * torch.exp(running_max[tokens] - shift) + tile_sum
            running_max[tokens] = new_max
    shift = _finite_shift(running_max)
    return label_logit - shift - torch.log(running_sum)


def _finite_shift(running_max: torch.Tensor) -> torch.Tensor:
    """The max to subtract before ``exp``, 0 where it is -inf (every logit so far -inf): shifting by
    -inf would give ``exp(-inf - -inf) = NaN`` instead of the empty sum 0."""
    return running_max.masked_fill(running_max == -math.inf, 0.0)


@torch.no_grad()
def sequence_logprob_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    counted: torch.Tensor,
    temperature: float,
    *,
    use_triton: bool,
) -> torch.Tensor:
    """float32 ``[B]``: the sums of the logits op on ``hidden @ weight.T + bias``, logits never built.

    Inputs are trusted (the public API checks them): ``hidden`` ``[B, T, H]``, ``weight`` ``[V, H]``
    and ``bias`` ``[V]`` (or None) of one dtype, ``labels`` integer ``[B, T]`` inside the vocabulary
    wherever the bool ``counted`` is true.
    """
    batch, positions, hidden_size = hidden.shape
    rows = counted.reshape(-1).nonzero().squeeze(1)
    row_labels = labels.reshape(-1)[rows].to(torch.int64)
    hidden_rows = hidden.reshape(-1, hidden_size)
    if hidden_rows.stride(-1) != 1:
        hidden_rows = hidden_rows.contiguous()
    counted_logprobs = (_counted_logprobs_triton if use_triton else _counted_logprobs_torch)(
        hidden_rows, weight, bias, rows, row_labels, temperature
    )
    token_logprobs = torch.zeros(batch * positions, dtype=torch.float32, device=hidden.device)
    token_logprobs[rows] = counted_logprobs
    return token_logprobs.view(batch, positions).sum(dim=1)
