"""Run directories: one experiment's artefacts, claimed by the configuration that produced them.

Example:
```python
>>> import json, tempfile
>>> from pathlib import Path
>>> from shfcas_fast.loop.run_directory import claim_output_dir, write_text_atomic
>>> run = Path(tempfile.mkdtemp()) / "run"
>>> claim_output_dir(run, {"budget": 4, "progress": True})
>>> claim_output_dir(run, {"budget": 4, "progress": False}, cosmetic=("progress",))  # same run: accepted
>>> try:
...     claim_output_dir(run, {"budget": 5, "progress": True})
... except ValueError as err:
...     print(str(err).split(":")[0].endswith("holds a run with another config (budget=4 there, 5 now)"))
True

```
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import ShfcasValueError

__all__ = ["claim_output_dir", "write_text_atomic"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a crash leaves the old file
    or the new one, never half of it."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temporary:
            temporary.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def claim_output_dir(output_dir: Path, config: dict[str, Any], cosmetic: Sequence[str] = ()) -> None:
    """Record ``config`` in ``output_dir/config.json``, or, when a run is already recorded there, check that
    it had the same config (``cosmetic`` keys aside).

    Resuming under another config would silently reuse artefacts that the new config would not have
    produced, so a difference raises :class:`~shfcas_fast.errors.ShfcasValueError` naming the first key
    that differs.
    """
    path = output_dir / "config.json"
    current = json.loads(json.dumps(config))  # tuples -> lists, as they were stored
    if not path.exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(current, indent=2))
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    for key in dict.fromkeys([*current, *stored]):
        if key not in cosmetic and stored.get(key) != current.get(key):
            raise ShfcasValueError(
                f"{output_dir} holds a run with another config ({key}={stored.get(key)!r} there, "
                f"{current.get(key)!r} now): choose another output directory, or delete this one to start over"
            )
