"""Op: logits -> per-sequence sum of the labels' log-probabilities, in one pass over the vocabulary.

The Triton kernel runs one program per token (tokens on grid axis 0, which has no 65,535 limit). A
program whose token is not counted (masked out, or labelled ``ignore_index``) reads nothing and
leaves its output at 0, so prompt and padding positions cost no memory traffic. A counted token
streams its row of ``V`` logits once in ``BLOCK_V`` chunks with an online log-sum-exp in fp32,
whatever the input dtype; chunks of only ``-inf`` (filtered logits) add nothing. The torch fallback gathers the counted rows in bounded fp32 chunks.

Example:
```python
>>> import torch
>>> from shfcas_fast.ops import logprobs
>>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: each counted token adds log(1/4)
>>> labels, counted = torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]])
>>> logprobs.sequence_logprob_sums(logits, labels, counted, 1.0, use_triton=False)
tensor([-2.7726])

```
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._jit import lazy_jit

if TYPE_CHECKING:
    import triton.language as tl

__all__ = ["BLOCK_V", "TORCH_CHUNK_ELEMENTS", "sequence_logprob_sums", "token_logprobs_kernel"]


@lazy_jit
def token_logprobs_kernel(
    logits_ptr,
    labels_ptr,
    counted_ptr,
    out_ptr,
    num_positions,
    vocab_size,
    stride_batch,
    stride_position,
    temperature,
    BLOCK_V: tl.constexpr,
):
    """``out[token] = log_softmax(logits[token] / temperature)[labels[token]]`` for counted tokens.

    ``labels``, ``counted`` (int8) and ``out`` (float32, zero-filled by the caller) are contiguous
    ``[B * T]``; ``logits`` is ``[B, T, V]`` with unit stride along ``V`` and any batch/position
    strides, so sliced views such as ``logits[:, :-1]`` need no copy.
    """
    # int64 before any multiplication: token * stride passes 2**31 once tokens x vocab does.
    token = tl.program_id(0).to(tl.int64)
    counted = tl.load(counted_ptr + token)
    if counted != 0:
        batch = token // num_positions
        position = token % num_positions
        row_ptr = logits_ptr + batch * stride_batch + position * stride_position
        lanes = tl.arange(0, BLOCK_V)
        running_max = tl.full([], float("-inf"), tl.float32)
        running_sum = tl.zeros([], tl.float32)
        for start in range(0, vocab_size, BLOCK_V):
            cols = start + lanes
            # Lanes past V read -inf so they add exp(-inf) = 0 and never win the max.
            x = tl.load(row_ptr + cols, mask=cols < vocab_size, other=float("-inf")).to(tl.float32)
            x = x / temperature
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            # Filtered logits can make every block seen so far -inf: shift by 0 then, not by -inf,
            # which would give exp(-inf - -inf) = NaN instead of the empty sum 0.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
            running_max = new_max

        label = tl.load(labels_ptr + token).to(tl.int64)
        label_logit = tl.load(row_ptr + label).to(tl.float32) / temperature
        tl.store(out_ptr + token, label_logit - running_max - tl.log(running_sum))


#: Vocabulary chunk one program of the kernel streams at a time.
BLOCK_V = 4096


def _token_logprobs_triton(
    logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Flat float32 ``[B * T]`` label log-probs from the kernel, 0 where not counted."""
    batch, positions, vocab = logits.shape
    if logits.stride(-1) != 1:  # the kernel needs unit stride along the vocabulary only
        logits = logits.contiguous()
    out = torch.zeros(batch * positions, dtype=torch.float32, device=logits.device)
    block_v = min(BLOCK_V, 1 << (vocab - 1).bit_length())
    token_logprobs_kernel[(batch * positions,)](
        logits,
        labels.reshape(-1).contiguous(),
        counted.reshape(-1).to(torch.int8),
        out,
        positions,
        vocab,
        logits.stride(0),
        logits.stride(1),
        float(temperature),
        BLOCK_V=block_v,
        num_warps=8 if block_v >= 2048 else 4,
    )
    return out


#: The torch fallback upcasts at most this many logits to fp32 at once (64 MiB).
TORCH_CHUNK_ELEMENTS = 1 << 24


def _token_logprobs_torch(
    logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Flat float32 ``[B * T]`` label log-probs, 0 where not counted, in bounded fp32 chunks."""
    batch, positions, vocab = logits.shape
    out = torch.zeros(batch * positions, dtype=torch.float32, device=logits.device)
    rows = counted.reshape(-1).nonzero().squeeze(1)
    chunk = max(1, TORCH_CHUNK_ELEMENTS // vocab)
    for start in range(0, rows.numel(), chunk):
        row = rows[start : start + chunk]
        b, t = row // positions, row % positions
        x = logits[b, t].float() / temperature
        label_logits = x.gather(1, labels[b, t].long().unsqueeze(1)).squeeze(1)
        log_normaliser = torch.logsumexp(x, dim=1)
        # A +inf logit has no log-softmax: NaN, as the kernel gives (torch would give -inf).
        out[row] = (label_logits - log_normaliser).masked_fill_(log_normaliser == torch.inf, torch.nan)
    return out


@torch.no_grad()
def sequence_logprob_sums(
    logits: torch.Tensor, labels: torch.Tensor, counted: torch.Tensor, temperature: float, *, use_triton: bool
) -> torch.Tensor:
    """float32 ``[B]``: ``sum_t counted[b, t] * log_softmax(logits[b, t] / temperature)[labels[b, t]]``.

    Inputs are trusted (the public API checks them): ``logits`` ``[B, T, V]`` with a unit last
    stride or any layout, ``labels`` integer ``[B, T]`` inside the vocabulary wherever the bool
    ``counted`` is true. The sum over positions is torch's, which is deterministic.
    """
    token_logprobs = (_token_logprobs_triton if use_triton else _token_logprobs_torch)(
        logits, labels, counted, temperature
    )
    return token_logprobs.view(counted.shape).sum(dim=1)
