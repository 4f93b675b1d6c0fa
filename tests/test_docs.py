"""Every docstring example of the package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import shfcas_fast

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(shfcas_fast.__path__, prefix="shfcas_fast.")
    # __main__ runs the CLI on import.
    if not name.endswith("__main__")
)


@pytest.mark.parametrize("module_name", ["shfcas_fast", *MODULES])
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"
