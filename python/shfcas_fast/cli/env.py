"""``shfcas env``: versions, CUDA and Triton availability, the Rust core's build and its threads.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "core_threads" in CliRunner().invoke(app, ["env", "--json"]).output
True

```
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Annotated, Any

import typer

from .. import _core
from ..report import versions
from .app import app

__all__ = ["OPTIONAL_PACKAGES", "environment"]

#: Packages of the extras, reported with their version or as not installed.
OPTIONAL_PACKAGES = ("torch", "triton", "trl", "transformers", "datasets", "accelerate", "ray")
NOT_INSTALLED = "not installed"


def _installed_version(package: str) -> str:
    # The distribution's metadata, not an import: importing torch, trl or ray takes seconds.
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def environment() -> dict[str, Any]:
    """What a bug report needs: versions, accelerators and the engine's build and thread count."""
    found = versions()
    found.update({package: _installed_version(package) for package in OPTIONAL_PACKAGES})
    cuda_available = False
    if found["torch"] != NOT_INSTALLED:
        import torch

        cuda_available = torch.cuda.is_available()
        found["cuda_device"] = torch.cuda.get_device_name(0) if cuda_available else None
        found["torch_threads"] = torch.get_num_threads()
    found["cuda_available"] = cuda_available
    # Triton kernels need both the package and a CUDA device.
    found["triton_usable"] = cuda_available and found["triton"] != NOT_INSTALLED
    found["core_threads"] = _core.num_threads()
    return found


@app.command("env")
def env_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Show versions (optional packages too), CUDA and Triton availability, the Rust core's build and threads."""
    found = environment()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    build = found.pop("core_build")
    rows = {**found, **{f"core_{key}": value for key, value in build.items()}}
    width = max(map(len, rows))
    for key, value in rows.items():
        typer.echo(f"{key:<{width}}  {'-' if value is None else value}")
