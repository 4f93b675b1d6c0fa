"""From a model's output to conflict scores on the device: sequence log-probs, z-scores, PACS.

Torch tensors in, torch tensors out on the same device. Every entry point is autograd-free (scoring
data, not training) and accumulates in fp32 whatever the input dtype. ``backend`` picks the
implementation: ``"auto"`` runs the Triton kernels of the ops in :mod:`shfcas_fast.ops` on CUDA and
torch elsewhere, ``"triton"`` forces the kernels (on CPU tensors only under ``TRITON_INTERPRET=1``, set
before triton is first imported), ``"torch"`` forces the chunked torch path; the torch path never
imports triton.

Non-finite values: a logit of ``-inf`` is a token the sampler could not pick (top-k, top-p or
grammar filtering) and adds nothing to the normaliser; a label whose logit is ``-inf`` has
probability 0 and gives a sequence log-probability of ``-inf``. A NaN or ``+inf`` logit at a
counted position (or a counted position whose logits are all ``-inf``) has no log-probability: it
makes the sequence's result NaN, and every entry point then raises a
:class:`~shfcas_fast.errors.ShfcasValueError` naming the input and the sequence. Uncounted
positions are never read, so what they hold does not matter. Arguments are checked before any
work and bad ones raise :class:`~shfcas_fast.errors.ShfcasTypeError` or ``ShfcasValueError``.

Example:
```python
>>> import torch, shfcas_fast.logprobs as lp
>>> logits = torch.randn(4, 6, 50)
>>> labels = torch.randint(0, 50, (4, 6))
>>> lp.sequence_logprobs(logits, labels, backend="torch").shape
torch.Size([4])

```
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._validation import as_float_pair
from .errors import ShfcasTypeError, ShfcasValueError
from .ops import hidden_logprobs, zscore
from .ops import logprobs as logits_logprobs
from .scoring import ConflictScores, score

if TYPE_CHECKING:  # transformers is only needed by the caller that passes a model
    from transformers import PreTrainedModel

__all__ = [
    "sequence_logprobs",
    "sequence_logprobs_from_hidden",
    "score_logits",
    "policy_logprobs",
]

Backend = Literal["auto", "triton", "torch"]
Reduction = Literal["sum", "mean"]

_LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Config attributes of architectures whose final logits are not ``lm_head(hidden)``.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "sum",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Masked per-sequence sum (or mean) of the labels' log-probabilities, read straight off the logits.

    Example:
    ```python
    >>> import torch, shfcas_fast.logprobs as lp
    >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: each counted token adds log(1/4)
    >>> labels = torch.tensor([[1, 2, -100]])
    >>> lp.sequence_logprobs(logits, labels, backend="torch")
    tensor([-2.7726])

    ```

    Args:
        logits: ``[B, T, V]`` float32, bfloat16 or float16; only the last dimension must be contiguous,
            so a view such as ``outputs.logits[:, :-1]`` is read in place.
        labels: ``[B, T]`` integers aligned with ``logits`` (``logits[b, t]`` scores ``labels[b, t]``,
            as in TRL's ``selective_log_softmax``).
        mask: optional ``[B, T]`` bool or 0/1 tensor; positions where it is False add nothing.
        temperature: the logits are divided by it before the log-softmax; any positive real scalar
            (a Python or numpy number, or a 0-d tensor).
        ignore_index: label value of positions that add nothing (an integer).
        reduction: ``"sum"`` (the paper's ``l``) or ``"mean"`` (divided by the number of counted tokens;
            0 for a sequence with none).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see the module docstring).

    Returns:
        float32 ``[B]`` on the logits' device.
    """
    _check_tensor(logits, "logits", ndim=3, dtypes=_LOGITS_DTYPES)
    batch, positions, vocab = logits.shape
    if vocab == 0:
        raise ShfcasValueError("logits has an empty vocabulary dimension")
    temperature = _as_temperature(temperature)
    _check_reduction(reduction)
    counted = _counted_positions(labels, mask, (batch, positions), vocab, ignore_index, logits.device)
    use_triton = _use_triton(backend, logits.device)
    total = logits_logprobs.sequence_logprob_sums(logits, labels, counted, temperature, use_triton=use_triton)
    _refuse_nan(total, "logits")
    return _reduce(total, counted, reduction)


def sequence_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "sum",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Sequence log-probabilities from final hidden states and the LM head, never building the logits.

    Equal to ``sequence_logprobs(hidden @ weight.T + bias, labels, ...)`` but never holds more than a
    tile of logits: on a GPU a tiled matmul with an online log-sum-exp (Triton), elsewhere a torch
    loop over bounded chunks of tokens x vocabulary entries (:mod:`shfcas_fast.ops.hidden_logprobs`).
    Only counted positions are computed.

    Example:
    ```python
    >>> import torch, shfcas_fast.logprobs as lp
    >>> hidden, weight = torch.randn(2, 5, 16), torch.randn(100, 16)
    >>> labels = torch.randint(0, 100, (2, 5))
    >>> from_hidden = lp.sequence_logprobs_from_hidden(hidden, weight, labels, backend="torch")
    >>> torch.allclose(from_hidden, lp.sequence_logprobs(hidden @ weight.T, labels, backend="torch"))
    True

    ```

    Args:
        hidden: ``[B, T, H]`` float32, bfloat16 or float16.
        weight: ``[V, H]`` LM head weight, same dtype and device as ``hidden``.
        labels: ``[B, T]`` integers; ``hidden[b, t]`` scores ``labels[b, t]``.
        bias: optional ``[V]`` LM head bias.
        mask, temperature, ignore_index, reduction, backend: as in :func:`sequence_logprobs`.

    Returns:
        float32 ``[B]`` on the hidden states' device.
    """
    _check_tensor(hidden, "hidden", ndim=3, dtypes=_LOGITS_DTYPES)
    _check_tensor(weight, "weight", ndim=2, dtypes=(hidden.dtype,), device=hidden.device)
    batch, positions, hidden_size = hidden.shape
    vocab = weight.shape[0]
    if hidden_size == 0:
        raise ShfcasValueError(f"hidden has a hidden size of 0 (shape {tuple(hidden.shape)}); there is nothing to score")
    if weight.shape[1] != hidden_size:
        raise ShfcasValueError(f"weight must be [V, {hidden_size}] to match hidden, got {tuple(weight.shape)}")
    if vocab == 0:
        raise ShfcasValueError("weight has an empty vocabulary dimension")
    if bias is not None:
        _check_tensor(bias, "bias", ndim=1, dtypes=_LOGITS_DTYPES, device=hidden.device)
        if bias.shape[0] != vocab:
            raise ShfcasValueError(f"bias must have {vocab} entries to match weight, got {bias.shape[0]}")
    temperature = _as_temperature(temperature)
    _check_reduction(reduction)
    counted = _counted_positions(labels, mask, (batch, positions), vocab, ignore_index, hidden.device)
    use_triton = _use_triton(backend, hidden.device)
    total = hidden_logprobs.sequence_logprob_sums(
        hidden, weight, bias, labels, counted, temperature, use_triton=use_triton
    )
    _refuse_nan(total, "hidden, weight or bias")
    return _reduce(total, counted, reduction)


def score_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    rewards: Any,
    group_sizes: Any = None,
    *,
    groups: Any = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: Reduction = "sum",
    backend: Backend = "auto",
) -> ConflictScores:
    """Every SHF-CAS conflict measure straight from a batch of logits.

    Sequence log-probabilities (:func:`sequence_logprobs`), per-prompt z-scores, PACS and prompt
    conflict run on the logits' device (one Triton program per prompt with the Triton backend; the
    compiled engine on the CPU otherwise); Kendall tau-b runs in the compiled engine. The result is
    :func:`shfcas_fast.score` of the sequence log-probabilities, as numpy arrays.

    Example:
    ```python
    >>> import torch, shfcas_fast.logprobs as lp
    >>> logits, labels = torch.randn(16, 5, 30), torch.randint(0, 30, (16, 5))
    >>> scores = lp.score_logits(logits, labels, torch.randn(16), group_sizes=8, backend="torch")
    >>> scores.group_conflict.shape
    (2,)

    ```

    Args:
        logits, labels, mask, temperature, ignore_index, reduction, backend: as in
            :func:`sequence_logprobs`.
        rewards: ``[B]`` proxy rewards (higher is better), any array-like or tensor.
        group_sizes: completions per prompt, an int or ``g`` sizes summing to ``B``; the completions of a
            prompt are contiguous.
        groups: instead of ``group_sizes``, a prompt key per sequence (rows in any order), as in
            :func:`shfcas_fast.score`; the z-scores are then computed by the compiled engine on the
            CPU (``B`` numbers), after the log-probabilities on the logits' device.
    """
    sequence = sequence_logprobs(
        logits,
        labels,
        mask=mask,
        temperature=temperature,
        ignore_index=ignore_index,
        reduction=reduction,
        backend=backend,
    )
    if isinstance(rewards, torch.Tensor):
        rewards = rewards.detach().to("cpu")
    logprobs_host, rewards_host = as_float_pair(sequence.cpu(), rewards, "logprobs", "rewards")
    if groups is not None or group_sizes is None:  # keyed (or neither: score names the arguments)
        return score(logprobs_host, rewards_host, group_sizes, groups=groups)
    use_triton = _use_triton(backend, logits.device)
    return zscore.conflict_scores(sequence, logprobs_host, rewards_host, group_sizes, use_triton=use_triton)


def policy_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    batch_size: int = 8,
    temperature: float = 1.0,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Sequence log-probability of each response under a transformers causal LM, without its logits.

    Runs the model's decoder for the last hidden state, then :func:`sequence_logprobs_from_hidden` on
    the output embeddings (tied or not). Token ``t + 1`` is scored from position ``t``; it counts when
    ``response_mask`` and ``attention_mask`` are both true at ``t + 1`` and ``attention_mask`` is true
    at ``t``. So the first real token of a row is never scored, padded or not: it has no context
    (there is no prediction for token 0 of an unpadded row, and a pad position is no context). Position
    ids come from the attention mask as in ``generate``; padding never changes a sequence's
    log-probability.
    Equal to the naive ``model(input_ids, attention_mask=..., position_ids=...).logits`` computation.
    Put the model in eval mode first: dropout would make the log-probabilities random.

    Example:
    ```python
    >>> import torch, transformers, shfcas_fast.logprobs as lp
    >>> config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    >>> model = transformers.GPT2LMHeadModel(config).eval()
    >>> input_ids = torch.randint(0, 50, (2, 6))
    >>> response_mask = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    >>> lp.policy_logprobs(model, input_ids, torch.ones_like(input_ids), response_mask).shape
    torch.Size([2])

    ```

    Args:
        model: a transformers causal LM (``get_decoder`` and ``get_output_embeddings``) whose final
            logits are a plain linear map of the last hidden state (GPT-2, Llama, Qwen, Mistral...).
        input_ids, attention_mask, response_mask: ``[B, T]`` on the model's device.
        batch_size: sequences per forward pass.
        temperature: sampling temperature the log-probabilities are taken at.
        backend: as in :func:`sequence_logprobs`.

    Returns:
        float32 ``[B]`` on the model's device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ShfcasValueError(f"batch_size must be a positive int, got {batch_size!r}")
    temperature = _as_temperature(temperature)
    _check_no_logit_transform(model)
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ShfcasTypeError(f"model's output embeddings must be a torch.nn.Linear, got {type(head).__name__}")
    _check_tensor(head.weight, "model's output embedding weight", ndim=2, dtypes=_LOGITS_DTYPES)
    use_triton = _use_triton(backend, head.weight.device)
    _check_tensor(input_ids, "input_ids", ndim=2)
    _check_integer_dtype(input_ids, "input_ids")
    _check_in_vocabulary(input_ids, "input_ids", head.weight.shape[0])
    for name, tensor in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        _check_tensor(tensor, name, ndim=2, device=input_ids.device)
        if tensor.shape != input_ids.shape:
            raise ShfcasValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(tensor.shape)}"
            )
    decoder = model.get_decoder()
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    attended = attention_mask.bool()
    counted = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    # Position t scores token t + 1 only when t itself is attended: a pad position is no context.
    counted[:, :-1] = response_mask[:, 1:].bool() & attended[:, 1:] & attended[:, :-1]
    # As generate computes them (GenerationMixin._prepare_position_ids_for_generation): each token's
    # position counts only the attended tokens before it, so left padding shifts nothing.
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

    chunks = [torch.zeros(0, dtype=torch.float32, device=head.weight.device)]  # an empty batch gives [0]
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            batch = slice(start, start + batch_size)
            hidden = decoder(
                input_ids=input_ids[batch],
                attention_mask=attention_mask[batch],
                position_ids=position_ids[batch],
                use_cache=False,
            ).last_hidden_state
            chunks.append(
                hidden_logprobs.sequence_logprob_sums(
                    hidden.to(head.weight.dtype),
                    head.weight,
                    head.bias,
                    labels[batch],
                    counted[batch],
                    temperature,
                    use_triton=use_triton,
                )
            )
    total = torch.cat(chunks)
    _refuse_nan(total, "the model's hidden states or output embeddings")
    return total


# --- checks -------------------------------------------------------------------------------------


def _check_tensor(
    value: Any,
    name: str,
    *,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] | None = None,
    device: torch.device | None = None,
) -> None:
    if not isinstance(value, torch.Tensor):
        raise ShfcasTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ShfcasValueError(f"{name} is a meta tensor: it has a shape but no data to score")
    if value.ndim != ndim:
        raise ShfcasValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ShfcasTypeError(f"{name} must have dtype {allowed}, got {str(value.dtype).removeprefix('torch.')}")
    if device is not None and value.device != device:
        raise ShfcasValueError(f"{name} is on {value.device} but the other inputs are on {device}")


def _as_temperature(temperature: Any) -> float:
    """Any positive finite real scalar (Python, numpy, or a one-element real tensor) as a float."""
    if isinstance(temperature, torch.Tensor):
        real = not (temperature.dtype.is_complex or temperature.dtype == torch.bool)
        if temperature.numel() != 1 or temperature.ndim > 1 or not real or temperature.device.type == "meta":
            raise ShfcasTypeError(
                f"temperature must be a real number, got a {str(temperature.dtype).removeprefix('torch.')} "
                f"tensor of shape {tuple(temperature.shape)} on {temperature.device}"
            )
        value = float(temperature.item())
    elif isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        value = float(temperature)
    else:
        raise ShfcasTypeError(f"temperature must be a real number, got {type(temperature).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ShfcasValueError(f"temperature must be finite and positive, got {value}")
    return value


def _as_ignore_index(ignore_index: Any) -> int:
    if isinstance(ignore_index, bool):
        raise ShfcasTypeError("ignore_index must be an int, got bool")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise ShfcasTypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}") from None


def _check_reduction(reduction: Any) -> None:
    if reduction not in ("sum", "mean"):
        raise ShfcasValueError(f'reduction must be "sum" or "mean", got {reduction!r}')


def _counted_positions(
    labels: Any,
    mask: Any,
    shape: tuple[int, int],
    vocab: int,
    ignore_index: Any,
    device: torch.device,
) -> torch.Tensor:
    """Bool ``[B, T]``: positions that add their label's log-probability; checks labels and mask."""
    _check_tensor(labels, "labels", ndim=2, device=device)
    _check_integer_dtype(labels, "labels")
    if tuple(labels.shape) != shape:
        raise ShfcasValueError(f"labels must have shape {shape} to match the inputs, got {tuple(labels.shape)}")
    counted = labels != _as_ignore_index(ignore_index)
    if mask is not None:
        _check_tensor(mask, "mask", ndim=2, device=device)
        if tuple(mask.shape) != shape:
            raise ShfcasValueError(f"mask must have shape {shape} to match the inputs, got {tuple(mask.shape)}")
        counted &= mask.bool()
    _check_in_vocabulary(labels, "labels", vocab, where=counted)
    return counted


def _check_integer_dtype(ids: torch.Tensor, name: str) -> None:
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ShfcasTypeError(f"{name} must hold integers, got dtype {str(ids.dtype).removeprefix('torch.')}")


def _check_in_vocabulary(ids: torch.Tensor, name: str, vocab: int, where: torch.Tensor | None = None) -> None:
    """ShfcasValueError naming the first ``[b, t]`` (among ``where``, if given) whose id is outside ``[0, vocab)``."""
    out_of_range = (ids < 0) | (ids >= vocab)
    if where is not None:
        out_of_range &= where
    if out_of_range.any():
        b, t = (int(i) for i in out_of_range.nonzero()[0])
        raise ShfcasValueError(f"{name}[{b}, {t}] is {int(ids[b, t])}, outside the vocabulary [0, {vocab})")


def _check_no_logit_transform(model: torch.nn.Module) -> None:
    """Refuse models whose final logits are not ``lm_head(hidden)``: the hidden path would be wrong."""
    config = getattr(model, "config", None)
    for attribute in _LOGIT_TRANSFORMS:
        value = getattr(config, attribute, None)
        if value is not None:
            raise ShfcasValueError(
                f"model config sets {attribute}={value!r}, a final-logit transform that policy_logprobs "
                f"does not apply; score this model with sequence_logprobs on its logits"
            )


def _use_triton(backend: Any, device: torch.device) -> bool:
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and _triton_installed()
    if backend != "triton":
        raise ShfcasValueError(f'backend must be "auto", "triton" or "torch", got {backend!r}')
    if not _triton_installed():
        raise ShfcasValueError('backend="triton" needs the triton package (pip install "shfcas-fast[gpu]")')
    if device.type != "cuda":
        _check_interpreter(device)
    return True


def _check_interpreter(device: torch.device) -> None:
    """Triton runs on non-CUDA tensors only in its interpreter, which it picks when each ``@jit``
    function is defined, its own ``tl.max``/``tl.sum`` included: the variable must be set before
    triton is first imported, not just before our kernels are."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise ShfcasValueError(
            f'backend="triton" on {device} tensors needs TRITON_INTERPRET=1 set before triton is imported; '
            f'use backend="torch" or CUDA tensors'
        )
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.max, InterpretedFunction):
        raise ShfcasValueError(
            f'backend="triton" on {device} tensors: triton was imported before TRITON_INTERPRET=1 was set, '
            f"so it compiles instead of interpreting; export TRITON_INTERPRET=1 before starting Python"
        )


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _refuse_nan(total: torch.Tensor, source: str) -> None:
    """Raise naming ``source`` if a sequence's log-probability is NaN. NaN propagates through the
    log-sum-exp and the sum, so testing the ``[B]`` result finds every NaN or +inf counted logit
    for one reduction over ``B`` values."""
    nan = torch.isnan(total)
    if bool(nan.any()):
        sequence = int(nan.nonzero()[0, 0])
        raise ShfcasValueError(
            f"{source} give a NaN log-probability for sequence {sequence}: a counted position's logits "
            f"hold NaN or +inf, or are all -inf"
        )


def _reduce(total: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sequence sums to the requested reduction; a sequence with no counted token gives 0."""
    if reduction == "mean":
        return total / counted.sum(dim=1).clamp_min(1).to(torch.float32)
    return total
