"""The compiled core as a Python extension: its thread pool, fork safety, packaging.

The hand-written stub is checked by ``mypy.stubtest`` in ``.ci/run`` (it takes too long for a test).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

import shfcas_fast
from shfcas_fast import _core


def test_build_info_describes_an_optimised_abi3_build():
    info = _core.build_info()
    assert info["version"] == shfcas_fast.__version__
    assert info["abi3"] is True
    assert info["profile"] in {"release", "debug"}


def _run_python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_thread_count_follows_the_environment():
    code = "import shfcas_fast; print(shfcas_fast._core.num_threads())"
    assert _run_python(code, SHFCAS_NUM_THREADS="3") == "3"


def test_invalid_thread_count_is_a_python_error_not_a_crash():
    code = (
        "import numpy as np, shfcas_fast\n"
        "try:\n"
        "    shfcas_fast.top_k(np.arange(3.0), 1)\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    assert "SHFCAS_NUM_THREADS" in _run_python(code, SHFCAS_NUM_THREADS="zero")


def _score_in_child(queue):
    rng = np.random.default_rng(1)
    result = shfcas_fast.score(rng.normal(size=400_000), rng.normal(size=400_000), 8)
    queue.put(float(result.group_conflict.sum()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method is Linux-only here")
def test_pool_works_in_a_forked_child():
    # Warm the pool in the parent first: a child that inherited it must not wait on its workers.
    rng = np.random.default_rng(1)
    expected = float(shfcas_fast.score(rng.normal(size=400_000), rng.normal(size=400_000), 8).group_conflict.sum())
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_score_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the forked child hung or crashed"
    assert queue.get(timeout=5) == expected


def test_the_repository_holds_no_symbolic_links():
    # Links break on checkouts without symlink support and get copied twice into an sdist: the GPU ops
    # live as real files inside the package (shfcas_fast/ops).
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
    links = [
        os.path.relpath(os.path.join(folder, name), root)
        for folder, dirs, files in os.walk(root)
        if not os.path.relpath(folder, root).startswith(("target", ".git"))
        for name in dirs + files
        if os.path.islink(os.path.join(folder, name))
    ]
    assert links == []
    assert os.path.isfile(os.path.join(root, "python", "shfcas_fast", "ops", "logprobs.py"))


def test_the_engine_imports_without_torch_and_loads_the_gpu_api_on_use():
    code = (
        "import sys, shfcas_fast\n"
        "print('torch' in sys.modules)\n"
        "print(callable(shfcas_fast.score_logits), 'torch' in sys.modules)\n"
    )
    assert _run_python(code).splitlines() == ["False", "True True"]
