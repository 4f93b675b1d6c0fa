"""Per-token label log-probabilities from logits in one pass over the vocabulary.

One program per token (tokens on grid axis 0, which has no 65,535 limit). A program whose token is
not counted (masked out, or labelled ``ignore_index``) reads nothing and leaves its output at 0, so
prompt and padding positions cost no memory traffic. A counted token streams its row of ``V`` logits
once in ``BLOCK_V`` chunks with an online log-sum-exp in fp32, whatever the input dtype.
"""

import triton
import triton.language as tl


@triton.jit
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

        # Lanes past V read -inf so they add exp(-inf) = 0 and never win the max.
        x = tl.load(row_ptr + lanes, mask=lanes < vocab_size, other=float("-inf")).to(tl.float32)
        x = x / temperature
        running_max = tl.max(x, axis=0)
        running_sum = tl.sum(tl.exp(x - running_max), axis=0)
        for start in range(BLOCK_V, vocab_size, BLOCK_V):
            cols = start + lanes
            x = tl.load(row_ptr + cols, mask=cols < vocab_size, other=float("-inf")).to(tl.float32)
            x = x / temperature
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
                tl.exp(x - new_max), axis=0
            )
            running_max = new_max

        label = tl.load(labels_ptr + token).to(tl.int64)
        label_logit = tl.load(row_ptr + label).to(tl.float32) / temperature
        tl.store(out_ptr + token, label_logit - running_max - tl.log(running_sum))
