"""The ``shfcas`` command line.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "score" in CliRunner().invoke(app, ["--help"]).output
True

```

Each command lives in its own module and registers itself on :data:`app` when imported.
"""

from __future__ import annotations

# Importing a command module registers its command on ``app``.
from . import bench, demo, env, export, pairs, report, score, select  # noqa: F401
from .app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``shfcas`` console script."""
    app()
