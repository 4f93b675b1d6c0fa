"""Triton kernels of shfcas-fast, shipped inside the wheel as ``shfcas_fast.kernels``.

Each submodule imports Triton at import time, so load them only where a kernel is about to run
(``shfcas_fast.logprobs`` does). Kernels are plain ``@triton.jit`` functions; the host-side
launchers, argument checks and torch fallbacks live in ``shfcas_fast.logprobs``.

- ``logprobs``: per-token log-probabilities of the labels straight from the logits, one program per
  token, online log-sum-exp over the vocabulary, uncounted tokens never read.
- ``hidden_logprobs``: the same from final hidden states and the LM head weight, a tiled matmul with
  an online log-sum-exp that never builds the logits.
- ``zscore``: per-prompt z-scores, PACS, conflict and the degenerate flag over ``[B]`` sequences.

Triton decides when each ``@jit`` function is defined (its own ``tl.max`` included) whether it is
compiled or interpreted: to run these kernels on CPU tensors, set ``TRITON_INTERPRET=1`` before
triton is first imported.
"""
