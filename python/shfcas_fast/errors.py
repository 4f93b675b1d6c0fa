"""The errors the package raises for bad user input.

Every user-facing input problem (a wrong argument, a malformed file, a refused configuration) raises a
subclass of :class:`ShfcasError`. The concrete classes also derive from the builtin exception that
callers caught before they existed (``ValueError``, ``TypeError``), so ``except ValueError`` keeps
working. The command line turns exactly these into one-line messages; anything else is a bug in the
package and keeps its traceback.

Example:
```python
>>> import shfcas_fast
>>> try:
...     shfcas_fast.score([0.0, 1.0], [1.0, float("nan")], group_sizes=2)
... except shfcas_fast.ShfcasError as err:
...     print(type(err).__name__, isinstance(err, ValueError))
ShfcasValueError True

```
"""

from __future__ import annotations

__all__ = ["ShfcasError", "ShfcasSelectionWarning", "ShfcasTypeError", "ShfcasValueError"]


class ShfcasError(Exception):
    """Base class of every input error the package raises on purpose."""


class ShfcasValueError(ShfcasError, ValueError):
    """An argument, file or configuration has the right type but an unusable value."""


class ShfcasTypeError(ShfcasError, TypeError):
    """An argument or column has a type the package cannot use."""


class ShfcasSelectionWarning(UserWarning):
    """A selection ran but deserves a look: its threshold selected more than half of the prompts (it
    barely tells conflicted prompts apart), or the scores carry no prompt sizes, so small prompts
    could not be left out."""
