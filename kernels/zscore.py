"""Per-prompt z-scores, PACS, conflict and the degenerate flag on the device.

One program per prompt (grid axis 0). A prompt's completions are contiguous, ``offsets[g]`` to
``offsets[g + 1]``; any group size works (the group is swept in ``BLOCK`` chunks). Statistics are
two-pass (mean, then squared deviations) in fp64: the inputs are only ``[B]`` values, and the
degenerate test ``std < 1e-6`` must not depend on cancellation.
"""

import triton
import triton.language as tl


@triton.jit
def group_pacs_kernel(
    logprobs_ptr,
    rewards_ptr,
    offsets_ptr,
    z_logprob_ptr,
    z_reward_ptr,
    pacs_ptr,
    conflict_ptr,
    degenerate_ptr,
    STD_EPS: tl.constexpr,
    DEGENERATE_STD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Fill ``z_logprob``, ``z_reward``, ``pacs`` ``[n]`` and ``conflict``, ``degenerate`` ``[g]``.

    ``logprobs``, ``rewards`` and all outputs but ``degenerate`` (int8) are float64. ``STD_EPS`` and
    ``DEGENERATE_STD`` are the engine's constants (SPEC section 2), passed in by the launcher.
    """
    group = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + group)
    end = tl.load(offsets_ptr + group + 1)
    size = (end - start).to(tl.float64)
    count = tl.maximum(size, 1.0)  # empty groups: no division by zero, flagged below
    lanes = tl.arange(0, BLOCK)

    sum_l = tl.zeros([BLOCK], tl.float64)
    sum_r = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        sum_l += tl.load(logprobs_ptr + items, mask=ok, other=0.0)
        sum_r += tl.load(rewards_ptr + items, mask=ok, other=0.0)
    mean_l = tl.sum(sum_l, axis=0) / count
    mean_r = tl.sum(sum_r, axis=0) / count

    squares_l = tl.zeros([BLOCK], tl.float64)
    squares_r = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        dev_l = tl.where(ok, tl.load(logprobs_ptr + items, mask=ok, other=0.0) - mean_l, 0.0)
        dev_r = tl.where(ok, tl.load(rewards_ptr + items, mask=ok, other=0.0) - mean_r, 0.0)
        squares_l += dev_l * dev_l
        squares_r += dev_r * dev_r
    std_l = tl.sqrt(tl.sum(squares_l, axis=0) / count)  # population std (ddof = 0)
    std_r = tl.sqrt(tl.sum(squares_r, axis=0) / count)
    degenerate = (size < 2.0) | (std_l < DEGENERATE_STD) | (std_r < DEGENERATE_STD)

    abs_pacs = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        z_l = (tl.load(logprobs_ptr + items, mask=ok, other=0.0) - mean_l) / (std_l + STD_EPS)
        z_r = (tl.load(rewards_ptr + items, mask=ok, other=0.0) - mean_r) / (std_r + STD_EPS)
        pacs = tl.where(degenerate, 0.0, z_r - z_l)
        tl.store(z_logprob_ptr + items, z_l, mask=ok)
        tl.store(z_reward_ptr + items, z_r, mask=ok)
        tl.store(pacs_ptr + items, pacs, mask=ok)
        abs_pacs += tl.where(ok, tl.abs(pacs), 0.0)
    tl.store(conflict_ptr + group, tl.sum(abs_pacs, axis=0) / count)
    tl.store(degenerate_ptr + group, degenerate.to(tl.int8))
