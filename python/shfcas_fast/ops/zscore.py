"""Op: sequence log-probabilities and rewards -> per-prompt z-scores, PACS, conflict, degenerate flags.

The Triton kernel runs one program per prompt (grid axis 0). A prompt's completions are contiguous,
``offsets[g]`` to ``offsets[g + 1]``; any group size works (the group is swept in ``BLOCK`` chunks).
Statistics are two-pass (mean, then squared deviations) in fp64, the mean corrected by the mean
deviation, and values too large to sum or square scaled by a power of two: the inputs are only
``[B]`` values, and the degenerate test must not depend on cancellation or overflow. For a prompt of
``n`` completions with population standard deviations ``s_l`` and ``s_r``:
``z = (x - mean) / (s + Z_EPSILON)``, ``PACS = z_reward - z_logprob`` (0 for a degenerate prompt:
fewer than two completions, or ``s < DEGENERATE_STD`` or ``s <= n * DEGENERATE_RELATIVE_STD * |mean|``
for the log-probs or the rewards), conflict = mean ``|PACS|``. Kendall tau-b always runs
in the compiled engine; without Triton the whole computation does (:func:`shfcas_fast.score`).

Example:
```python
>>> import numpy as np, torch
>>> from shfcas_fast.ops import zscore
>>> logprobs, rewards = np.array([-3.0, -1.0, -2.0, -5.0]), np.array([0.1, 0.9, 0.3, 0.2])
>>> scores = zscore.conflict_scores(torch.from_numpy(logprobs), logprobs, rewards, 2, use_triton=False)
>>> scores.kendall_tau
array([1., 1.])

```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import _core
from .._validation import group_offsets
from ..scoring import ConflictScores, kendall_tau, score
from ._jit import lazy_jit

if TYPE_CHECKING:
    import triton.language as tl

__all__ = ["GROUP_BLOCK", "conflict_scores", "group_pacs_kernel"]


@lazy_jit
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
    DEGENERATE_RELATIVE_STD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Fill ``z_logprob``, ``z_reward``, ``pacs`` ``[n]`` and ``conflict``, ``degenerate`` ``[g]``.

    ``logprobs``, ``rewards`` and all outputs but ``degenerate`` (int8) are float64. ``STD_EPS``,
    ``DEGENERATE_STD`` and ``DEGENERATE_RELATIVE_STD`` are the engine's constants of the same names
    (``Z_EPSILON`` for the first), passed in by the launcher.
    """
    group = tl.program_id(0).to(tl.int64)
    start = tl.load(offsets_ptr + group)
    end = tl.load(offsets_ptr + group + 1)
    size = (end - start).to(tl.float64)
    count = tl.maximum(size, 1.0)  # empty groups: no division by zero, flagged below
    lanes = tl.arange(0, BLOCK)

    # A group whose largest magnitude is at least 2^401 is scaled by a power of two (exact) into
    # [2^400, 2^401), where sums and squares of any number of values stay finite; every moment below
    # is in scaled units. With e the binary exponent of the largest magnitude (max < 2^e, the biased
    # exponent field minus 1022), the scale is 2^min(0, 401 - e), built from its exponent bits.
    max_l = tl.zeros([BLOCK], tl.float64)
    max_r = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        max_l = tl.maximum(max_l, tl.abs(tl.load(logprobs_ptr + items, mask=ok, other=0.0)))
        max_r = tl.maximum(max_r, tl.abs(tl.load(rewards_ptr + items, mask=ok, other=0.0)))
    exponent_l = ((tl.max(max_l, axis=0).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1022
    exponent_r = ((tl.max(max_r, axis=0).to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1022
    scale_l = ((1023 + tl.minimum(401 - exponent_l, 0)) << 52).to(tl.float64, bitcast=True)
    scale_r = ((1023 + tl.minimum(401 - exponent_r, 0)) << 52).to(tl.float64, bitcast=True)

    sum_l = tl.zeros([BLOCK], tl.float64)
    sum_r = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        sum_l += tl.load(logprobs_ptr + items, mask=ok, other=0.0) * scale_l
        sum_r += tl.load(rewards_ptr + items, mask=ok, other=0.0) * scale_r
    first_mean_l = tl.sum(sum_l, axis=0) / count
    first_mean_r = tl.sum(sum_r, axis=0) / count

    # Two passes (one-pass E[x^2] - E[x]^2 cancels badly), and the mean corrected by the mean
    # deviation, so that a constant group gets its exact value and z-scores of exactly 0.
    deviations_l = tl.zeros([BLOCK], tl.float64)
    deviations_r = tl.zeros([BLOCK], tl.float64)
    squares_l = tl.zeros([BLOCK], tl.float64)
    squares_r = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        dev_l = tl.where(ok, tl.load(logprobs_ptr + items, mask=ok, other=0.0) * scale_l - first_mean_l, 0.0)
        dev_r = tl.where(ok, tl.load(rewards_ptr + items, mask=ok, other=0.0) * scale_r - first_mean_r, 0.0)
        deviations_l += dev_l
        deviations_r += dev_r
        squares_l += dev_l * dev_l
        squares_r += dev_r * dev_r
    mean_l = first_mean_l + tl.sum(deviations_l, axis=0) / count
    mean_r = first_mean_r + tl.sum(deviations_r, axis=0) / count
    std_l = tl.sqrt(tl.sum(squares_l, axis=0) / count)  # population std (ddof = 0)
    std_r = tl.sqrt(tl.sum(squares_r, axis=0) / count)
    # The relative bound is the rounding error of a computed mean: a constant group of large values
    # has a computed std of about that size, and must not pass for a group with spread.
    degenerate = (
        (size < 2.0)
        | (std_l < DEGENERATE_STD * scale_l)
        | (std_l <= size * DEGENERATE_RELATIVE_STD * tl.abs(mean_l))
        | (std_r < DEGENERATE_STD * scale_r)
        | (std_r <= size * DEGENERATE_RELATIVE_STD * tl.abs(mean_r))
    )

    abs_pacs = tl.zeros([BLOCK], tl.float64)
    for block_start in range(start, end, BLOCK):
        items = block_start + lanes
        ok = items < end
        z_l = (tl.load(logprobs_ptr + items, mask=ok, other=0.0) * scale_l - mean_l) / (std_l + STD_EPS * scale_l)
        z_r = (tl.load(rewards_ptr + items, mask=ok, other=0.0) * scale_r - mean_r) / (std_r + STD_EPS * scale_r)
        pacs = tl.where(degenerate, 0.0, z_r - z_l)
        tl.store(z_logprob_ptr + items, z_l, mask=ok)
        tl.store(z_reward_ptr + items, z_r, mask=ok)
        tl.store(pacs_ptr + items, pacs, mask=ok)
        abs_pacs += tl.where(ok, tl.abs(pacs), 0.0)
    tl.store(conflict_ptr + group, tl.sum(abs_pacs, axis=0) / count)
    tl.store(degenerate_ptr + group, degenerate.to(tl.int8))


#: Block of the kernel (groups larger than this are swept in chunks).
GROUP_BLOCK = 128


def _group_pacs_triton(
    logprobs: torch.Tensor, rewards: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z_logprob, z_reward, pacs, group_conflict, degenerate)`` of float64 ``[n]`` inputs."""
    n, groups = logprobs.shape[0], offsets.shape[0] - 1
    z_logprob, z_reward, pacs = (torch.empty(n, dtype=torch.float64, device=logprobs.device) for _ in range(3))
    conflict = torch.empty(groups, dtype=torch.float64, device=logprobs.device)
    degenerate = torch.empty(groups, dtype=torch.int8, device=logprobs.device)
    if groups:
        group_pacs_kernel[(groups,)](
            logprobs,
            rewards,
            offsets,
            z_logprob,
            z_reward,
            pacs,
            conflict,
            degenerate,
            STD_EPS=_core.Z_EPSILON,
            DEGENERATE_STD=_core.DEGENERATE_STD,
            DEGENERATE_RELATIVE_STD=_core.DEGENERATE_RELATIVE_STD,
            BLOCK=GROUP_BLOCK,
        )
    return z_logprob, z_reward, pacs, conflict, degenerate


@torch.no_grad()
def conflict_scores(
    sequence: torch.Tensor,
    logprobs_host: np.ndarray,
    rewards_host: np.ndarray,
    group_sizes: Any,
    *,
    use_triton: bool,
) -> ConflictScores:
    """Every conflict measure of ``sequence`` (``[B]`` on its device) and the rewards.

    ``logprobs_host`` is ``sequence`` on the host and ``rewards_host`` the checked rewards, both 1-D
    finite float arrays; ``group_sizes`` as in :func:`shfcas_fast.score`. With ``use_triton`` the
    per-prompt statistics run on ``sequence``'s device, else all of it runs in the compiled engine.
    """
    if not use_triton:
        return score(logprobs_host, rewards_host, group_sizes)
    offsets = group_offsets(group_sizes, logprobs_host.shape[0])
    z_logprob, z_reward, pacs, conflict, degenerate = _group_pacs_triton(
        sequence.double(),
        torch.from_numpy(rewards_host).to(sequence.device, torch.float64),
        torch.from_numpy(offsets).to(sequence.device),
    )
    tau = kendall_tau(logprobs_host, rewards_host, offsets[1:] - offsets[:-1])
    return ConflictScores(
        pacs=pacs.cpu().numpy(),
        z_logprob=z_logprob.cpu().numpy(),
        z_reward=z_reward.cpu().numpy(),
        group_conflict=conflict.cpu().numpy(),
        kendall_tau=tau,
        kendall_distance=(1.0 - tau) / 2.0,
        degenerate=degenerate.cpu().numpy().astype(bool),
        group_sizes=np.diff(offsets),
    )
