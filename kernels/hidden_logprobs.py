"""Label log-probabilities from final hidden states and the LM head, never building the logits.

``hidden_partials_kernel`` computes, for a tile of ``BLOCK_T`` tokens and one slice of the
vocabulary, the logits tile by tile (``BLOCK_T x BLOCK_V``, accumulated over ``H`` in fp32 with
``tl.dot``) and folds each tile into an online log-sum-exp: a running max, a running sum of
exponentials and the label's logit when the label falls in the slice. Tokens go on grid axis 0 and
vocabulary slices on axis 1 (a handful), so few tokens still fill the device. The host combines the
``[num_slices, n]`` partials in a fixed order, which keeps the result deterministic (no atomics).
"""

import triton
import triton.language as tl


@triton.jit
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
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(
            tl.exp(logits - new_max[:, None]), axis=1
        )
        running_max = new_max
        label_logit += tl.sum(tl.where(cols[None, :] == labels[:, None], logits, 0.0), axis=1)

    out = vocab_slice * num_tokens + tokens
    tl.store(max_ptr + out, running_max, mask=token_ok)
    tl.store(sumexp_ptr + out, running_sum, mask=token_ok)
    tl.store(label_logit_ptr + out, label_logit, mask=token_ok)
