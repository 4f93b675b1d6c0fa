"""The ``shfcas`` command line.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "score" in CliRunner().invoke(app, ["--help"]).output
True

```

Each command lives in its own module, registers itself on the Typer application of
:mod:`shfcas_fast.cli.app` when imported, and makes one call into the library
(:mod:`shfcas_fast.tables`, :mod:`shfcas_fast.report`, ...). The commands are imported on first use of
:data:`app`, so that :func:`main` can turn Ctrl-C during start-up into a one-line message.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]

# 128 + SIGINT: the shell's exit status of an interrupted command.
_INTERRUPTED = 130


def _application() -> Any:
    """The application with every command registered (importing a command module registers it)."""
    from . import bench, demo, env, export, pairs, report, score, select  # noqa: F401
    from .app import app

    # Importing the submodule ``app`` bound it as this package's attribute: bind the application instead.
    globals()["app"] = app
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _application()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Entry point of the ``shfcas`` console script."""
    try:
        application = _application()
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        raise SystemExit(_INTERRUPTED) from None
    application()
