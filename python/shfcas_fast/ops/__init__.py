"""The GPU ops behind :mod:`shfcas_fast.logprobs`, one module per op.

Each module holds the op's Triton kernel(s), then the host launcher with its block-size constants,
the torch (or compiled-engine) fallback, and last the op's no-grad entry point, which takes inputs
the public API has already checked and a ``use_triton`` flag the public API has resolved:

- :mod:`~shfcas_fast.ops.logprobs`: logits -> masked per-sequence sum of the labels' log-probs.
- :mod:`~shfcas_fast.ops.hidden_logprobs`: the same from final hidden states and the LM head,
  without building the logits.
- :mod:`~shfcas_fast.ops.zscore`: sequence log-probs and rewards -> per-prompt z-scores, PACS,
  conflict and degenerate flags.

Importing an op imports torch but not Triton: kernels are jitted on their first launch
(:mod:`~shfcas_fast.ops._jit`).

Example:
```python
>>> from shfcas_fast.ops import hidden_logprobs, logprobs, zscore
>>> logprobs.BLOCK_V
4096

```
"""
