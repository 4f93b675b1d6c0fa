"""Time the ``shfcas`` command line end to end on a generated Parquet file (issue 5's scale target).

Usage:
```bash
python benches/bench_cli.py                  # 10M rows, prompts of 8, adjacent and shuffled
python benches/bench_cli.py --rows 1000000   # a quick check
```

Each command runs as a real subprocess (start-up included); wall time and peak resident memory come
from the child's own resource usage (``os.wait4``). The scored columns (prompt, log-prob, reward) are what
``score`` must hold in memory; peak memory is reported as a multiple of their in-memory size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def generate(path: Path, rows: int, shuffle: bool, seed: int = 0) -> int:
    """Write a file of ``rows`` completions in prompts of 8; returns the scored columns' bytes."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(rows // 8), 8)
    if shuffle:
        ids = rng.permutation(ids)
    ids = pa.array(ids.astype(np.int32))
    table = pa.table(
        {
            "prompt": pc.binary_join_element_wise(pa.scalar("a prompt about topic number "), pc.cast(ids, pa.string()), ""),
            "completion": pc.binary_join_element_wise(
                pa.scalar("completion "), pc.cast(pa.array(np.arange(rows)), pa.string()), ""
            ),
            "logprob": rng.normal(size=rows) * 10 - 50,
            "reward": rng.normal(size=rows),
        }
    )
    pq.write_table(table, path)
    return table.select(["prompt", "logprob", "reward"]).nbytes


def run(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident GiB of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, unlike RUSAGE_CHILDREN
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return seconds, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="completions (a multiple of 8)")
    args = parser.parse_args()
    print("| input | command | wall | peak memory | x scored columns |\n|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for shuffle in (False, True):
            label = "shuffled" if shuffle else "adjacent"
            source, scored, selected = (Path(tmp) / f"{label}_{name}.parquet" for name in ("in", "scored", "sel"))
            needed = generate(source, args.rows, shuffle)
            commands = {
                "score": ["shfcas", "score", str(source), "-o", str(scored), "-q"],
                "select --budget 10000": ["shfcas", "select", str(scored), "-o", str(selected), "--budget", "10000", "-q"],
            }
            for name, command in commands.items():
                seconds, peak_gib = run(command)
                ratio = peak_gib * 2**30 / needed
                print(f"| {args.rows:,} rows, {label} | `shfcas {name}` | {seconds:.2f} s | {peak_gib:.2f} GiB | {ratio:.1f} |")


if __name__ == "__main__":
    main()
