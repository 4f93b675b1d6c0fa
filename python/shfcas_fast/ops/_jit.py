"""Triton kernels that import Triton only when first launched.

The op modules hold each kernel beside its torch fallback, and the fallback must run where Triton is
absent or unwanted, so importing an op module must not import Triton. A kernel is written as a plain
function decorated with :func:`lazy_jit`; its source names ``triton.language`` as the module global
``tl`` (imported under ``TYPE_CHECKING`` for the type checker), which the first launch binds before
handing the function to ``triton.jit``. Triton chooses between compiling and interpreting at that
moment, from ``TRITON_INTERPRET``.

Example:
```python
>>> from shfcas_fast.ops import logprobs
>>> type(logprobs.token_logprobs_kernel).__name__  # not jitted until launched
'LazyKernel'

```
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["LazyKernel", "lazy_jit"]


class LazyKernel:
    """A kernel source launched as ``kernel[grid](*args)``, jitted by Triton on the first launch."""

    def __init__(self, source: Callable[..., None]) -> None:
        self.source = source

    @functools.cached_property
    def jitted(self) -> Any:
        import triton
        import triton.language

        self.source.__globals__["tl"] = triton.language
        return triton.jit(self.source)

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., Any]:
        return self.jitted[grid]  # type: ignore[no-any-return]


def lazy_jit(source: Callable[..., None]) -> LazyKernel:
    """Decorator: ``@lazy_jit`` in place of ``@triton.jit``."""
    return LazyKernel(source)
