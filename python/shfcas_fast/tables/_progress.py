"""A row counter on stderr for the file-level functions (off unless they are asked for progress)."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int | None, description: str, *, enabled: bool) -> tqdm:
    """A row counter on stderr that only appears once the work has taken more than two seconds."""
    return tqdm(
        total=total,
        desc=description,
        unit="rows",
        unit_scale=True,
        file=sys.stderr,
        disable=not enabled,
        delay=2.0,
        leave=False,
    )
