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


def test_invalid_thread_count_is_a_named_user_error_not_a_crash():
    code = (
        "import numpy as np, shfcas_fast\n"
        "try:\n"
        "    shfcas_fast.top_k(np.arange(3.0), 1)\n"
        "except shfcas_fast.ShfcasValueError as err:\n"
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


def test_scoring_imports_no_module_on_first_use():
    # A module imported by the first call would be mid-import in one thread while another forks, and
    # the child would wait forever on its import lock (numpy.ma, loaded lazily by numpy, did that).
    code = (
        "import sys, numpy as np, shfcas_fast\n"
        "before = set(sys.modules)\n"
        "x = np.arange(64.0)\n"
        "scores = shfcas_fast.score(x, x[::-1].copy(), 8)\n"
        "shfcas_fast.select(scores, budget=2)\n"
        "shfcas_fast.kendall_tau(x, x)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    assert _run_python(code).strip() == "[]"


# Runs in a fresh interpreter (a hang must fail the test, not freeze the test run). Each forked child
# scores 100k items and exits; the parent kills a child that is not done after CHILD_TIMEOUT seconds.
_FORK_SCRIPT = r"""
import os, signal, sys, threading, time
import numpy as np
import shfcas_fast

CHILD_TIMEOUT = 5.0
OUTCOMES = ("ok", "wrong", "hung")
rng = np.random.default_rng(0)
logprobs, rewards = rng.normal(size=100_000), rng.normal(size=100_000)
# float64 numpy transcription of mean |z_r - z_l| per prompt of 8, summed.
l, r = logprobs.reshape(-1, 8), rewards.reshape(-1, 8)
z = lambda v: (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-8)
expected = float(np.abs(z(r) - z(l)).mean(1).sum())


def fork_and_score():
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            got = float(shfcas_fast.score(logprobs, rewards, 8).group_conflict.sum())
            code = 0 if abs(got - expected) <= 1e-9 * abs(expected) else 3
        finally:
            os._exit(code)
    give_up = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "ok" if os.waitstatus_to_exitcode(status) == 0 else "wrong"
        # Checked after the look above: a parent starved of the interpreter may wake past the deadline.
        if time.monotonic() > give_up:
            break
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


if sys.argv[1] == "during-build":
    # Fork while another thread is starting the pool's workers (SHFCAS_NUM_THREADS is large, so that
    # takes milliseconds): the moment the engine's own bookkeeping is busiest.
    tasks = lambda: len(os.listdir("/proc/self/task"))
    before = tasks()
    builder = threading.Thread(target=shfcas_fast.score, args=(logprobs, rewards, 8))
    builder.start()
    while tasks() < before + 8:
        pass
    print(fork_and_score())
    builder.join()
elif sys.argv[1] == "during-first-call":
    # Fork while another thread makes the process's first call into the core. With a long switch
    # interval the main thread gets the interpreter back only when that thread lets go of it, which
    # the bindings can do inside a lazily initialised global (numpy's C API): the child must not
    # inherit that global half-initialised. Each attempt runs in a fresh fork of this process, which
    # has not called the core yet; the window is narrow, so attempts go on until one fails.
    sys.setswitchinterval(1.0)
    outcomes = []
    while len(outcomes) < int(sys.argv[2]) and "hung" not in outcomes:
        attempt = os.fork()
        if attempt == 0:
            first = threading.Thread(target=shfcas_fast.score, args=(logprobs[:1000], rewards[:1000], 8))
            first.start()
            spin_until = time.perf_counter() + 0.005
            while time.perf_counter() < spin_until:
                pass
            outcome = fork_and_score()
            first.join()
            os._exit(OUTCOMES.index(outcome))
        _, status = os.waitpid(attempt, 0)
        outcomes.append(OUTCOMES[os.waitstatus_to_exitcode(status)])
    print(" ".join(f"{o}={outcomes.count(o)}" for o in OUTCOMES))
else:
    # Five threads score 200k and 16 items in a loop while the main thread forks repeatedly.
    duration = float(sys.argv[2])
    big, small = rng.normal(size=200_000), rng.normal(size=16)
    stop = threading.Event()

    def hammer(values):
        while not stop.is_set():
            shfcas_fast.score(values, values[::-1].copy(), 8)

    threads = [threading.Thread(target=hammer, args=(v,)) for v in (big, big, small, small, small)]
    for thread in threads:
        thread.start()
    outcomes = []
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        outcomes.append(fork_and_score())
    stop.set()
    for thread in threads:
        thread.join()
    print(" ".join(f"{o}={outcomes.count(o)}" for o in OUTCOMES))
"""


def _run_fork_script(*args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="needs os.fork and /proc/self/task")
def test_a_child_forked_while_another_thread_starts_the_pool_does_not_hang():
    assert _run_fork_script("during-build", SHFCAS_NUM_THREADS="256") == "ok"


@pytest.mark.skipif(sys.platform != "linux", reason="needs os.fork")
def test_a_child_forked_during_another_threads_first_call_does_not_hang():
    # Before the bindings set their lazy globals at import, four runs hung after 28, 24, 2 and 2 attempts.
    assert _run_fork_script("during-first-call", "150") == "ok=150 wrong=0 hung=0"


@pytest.mark.skipif(sys.platform != "linux", reason="needs os.fork")
def test_children_forked_while_five_threads_score_never_hang():
    outcome = _run_fork_script("race", "2.0")
    counts = dict(item.split("=") for item in outcome.split())
    assert counts["hung"] == counts["wrong"] == "0", outcome
    assert int(counts["ok"]) > 0, outcome
