"""Time the ``shfcas`` command line end to end on generated Parquet files of up to 10M rows.

Usage:
```bash
python benches/bench_cli.py                  # 10M rows, prompts of 8, adjacent and shuffled
python benches/bench_cli.py --rows 1000000   # a quick check
python benches/bench_cli.py --grouped-scaling             # `score --grouped` at 1M, 5M and 10M rows
python benches/bench_cli.py --grouped-scaling --rows 2000000 --rows 4000000
python benches/bench_cli.py --shuffled-scaling            # two-pass `score` at 10M, 20M and 40M shuffled rows
python benches/bench_cli.py --sharded 200000000 --keep /tmp/shards   # 200M shuffled rows in 20 shards
```

``--grouped-scaling`` reports how the peak memory of the one-pass ``score --grouped`` grows with the
file: the bytes per prompt are the growth of the peak over the previous (smaller) file, divided by
the growth in prompts (everything that grows with the file, per prompt of 8 rows). A file of one or
two batches has not reached the steady state yet: compare files of several batches (5M and 10M).
``--shuffled-scaling`` does the same for the two-pass ``score`` of shuffled rows, whose peak grows
with every row (the scored columns and the grouping are held): the growth per prompt over the
previous file, divided by 8, is what each further row costs.

Each command runs as a real subprocess (start-up included) and reports its own peak resident memory. The scored columns (prompt, log-prob, reward) are what
``score`` must hold in memory; peak memory is reported as a multiple of their in-memory size.
"""

from __future__ import annotations

import argparse
import sys
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
    table = completions(ids, 0, rng)
    pq.write_table(table, path)
    return table.select(["prompt", "logprob", "reward"]).nbytes


def completions(prompt_ids: np.ndarray, first_row: int, rng: np.random.Generator) -> pa.Table:
    """Rows of the given prompt numbers, numbered from ``first_row``: prompt and completion strings,
    log-prob and reward."""
    ids = pa.array(prompt_ids.astype(np.int32))
    rows = prompt_ids.shape[0]
    return pa.table(
        {
            "prompt": pc.binary_join_element_wise(pa.scalar("a prompt about topic number "), pc.cast(ids, pa.string()), ""),
            "completion": pc.binary_join_element_wise(
                pa.scalar("completion "), pc.cast(pa.array(np.arange(first_row, first_row + rows)), pa.string()), ""
            ),
            "logprob": rng.normal(size=rows) * 10 - 50,
            "reward": rng.normal(size=rows),
        }
    )


def generate_shards(folder: Path, rows: int, shard_rows: int, seed: int = 0) -> None:
    """Write a data set of ``rows`` shuffled completions in prompts of 8 as Parquet shards of
    ``shard_rows``: the rows of a prompt are spread over the whole data set."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.repeat(np.arange(rows // 8, dtype=np.int32), 8))
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, rows, shard_rows)):
        pq.write_table(completions(ids[start : start + shard_rows], start, rng), folder / f"part-{shard:04d}.parquet")


# Runs the CLI and, at exit, writes its own peak resident memory (VmHWM, which starts afresh at exec;
# the child's ru_maxrss would instead include its parent's, inherited through fork).
_PEAK_WRAPPER = """
import atexit, sys
def _report_peak(path=sys.argv[1]):
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    open(path, "w").write(peak.split()[1])
atexit.register(_report_peak)
sys.argv = ["shfcas", *sys.argv[2:]]
from shfcas_fast.cli import main
main()
"""


def run(arguments: list[str], peak_file: Path) -> tuple[float, float]:
    """Wall seconds and peak resident GiB of ``shfcas ARGUMENTS`` in a child process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, str(peak_file), *arguments], check=True)
    seconds = time.perf_counter() - start
    return seconds, int(peak_file.read_text()) / 2**20


def scaling(sizes: list[int], shuffled: bool) -> None:
    """Peak memory of one ``score`` at each row count, and its growth per prompt and per row.

    Adjacent files are scored in one pass (``--grouped``); shuffled ones in two passes, holding the
    scored columns and the grouping of every row.
    """
    command_name = "score" if shuffled else "score --grouped"
    print(f"`shfcas {command_name}`, {'shuffled' if shuffled else 'adjacent'} rows:\n")
    print(
        "| rows | prompts | wall | peak memory | bytes per row | bytes per prompt over the previous row |\n"
        "|---:|---:|---:|---:|---:|---:|"
    )
    previous: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sizes:
            source, scored = Path(tmp) / "in.parquet", Path(tmp) / "scored.parquet"
            generate(source, rows, shuffle=shuffled)
            command = ["score", str(source), "-o", str(scored), "-q", "--overwrite"]
            if not shuffled:
                command.append("--grouped")
            seconds, peak_gib = run(command, Path(tmp) / "peak_kib")
            prompts = rows // 8
            growth = "-" if previous is None else f"{(peak_gib - previous[1]) * 2**30 / (prompts - previous[0]):.1f}"
            previous = (prompts, peak_gib)
            per_row = peak_gib * 2**30 / rows
            print(f"| {rows:,} | {prompts:,} | {seconds:.2f} s | {peak_gib:.3f} GiB | {per_row:.0f} | {growth} |", flush=True)
            source.unlink()
            scored.unlink()


def sharded(rows: int, keep: Path | None) -> None:
    """``shfcas score`` on a shuffled data set of Parquet shards: wall time and peak memory."""
    with tempfile.TemporaryDirectory(dir=keep.parent if keep else None) as tmp:
        folder = keep or Path(tmp) / "shards"
        start = time.perf_counter()
        if not (folder / "part-0000.parquet").exists():
            generate_shards(folder, rows, 10_000_000)
            print(f"generated {rows:,} rows in {time.perf_counter() - start:.0f} s", flush=True)
        scored = Path(tmp) / "scored.parquet"
        seconds, peak_gib = run(["score", str(folder), "-o", str(scored), "-q"], Path(tmp) / "peak_kib")
        print("| rows | prompts | command | wall | peak memory | bytes per row |\n|---:|---:|---|---:|---:|---:|")
        print(
            f"| {rows:,} | {rows // 8:,} | `shfcas score` (shuffled, {len(list(folder.glob('*.parquet')))} shards) "
            f"| {seconds:.1f} s | {peak_gib:.2f} GiB | {peak_gib * 2**30 / rows:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, action="append", help="completions (a multiple of 8); repeatable with --grouped-scaling"
    )
    parser.add_argument("--grouped-scaling", action="store_true", help="peak memory of score --grouped by file size")
    parser.add_argument("--shuffled-scaling", action="store_true", help="peak memory of score on shuffled rows by file size")
    parser.add_argument(
        "--sharded", type=int, metavar="ROWS", help="score a shuffled data set of ROWS rows in 10M-row shards"
    )
    parser.add_argument("--keep", type=Path, help="with --sharded: generate into (or reuse) this folder")
    args = parser.parse_args()
    if args.sharded:
        sharded(args.sharded, args.keep)
        return
    if args.grouped_scaling or args.shuffled_scaling:
        default = [10_000_000, 20_000_000, 40_000_000] if args.shuffled_scaling else [1_000_000, 5_000_000, 10_000_000]
        scaling(sorted(args.rows or default), shuffled=args.shuffled_scaling)
        return
    args.rows = (args.rows or [10_000_000])[-1]
    print("| input | command | wall | peak memory | x scored columns |\n|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for shuffle in (False, True):
            label = "shuffled" if shuffle else "adjacent"
            source, scored, selected = (Path(tmp) / f"{label}_{name}.parquet" for name in ("in", "scored", "sel"))
            needed = generate(source, args.rows, shuffle)
            commands = {
                "score": ["score", str(source), "-o", str(scored), "-q", "--overwrite"],
                "select --budget 10000": ["select", str(scored), "-o", str(selected), "--budget", "10000", "-q"],
            }
            if not shuffle:
                grouped = ["score", str(source), "-o", str(scored), "-q", "--overwrite", "--grouped"]
                commands = {"score --grouped": grouped, **commands}
            for name, command in commands.items():
                seconds, peak_gib = run(command, Path(tmp) / "peak_kib")
                ratio = peak_gib * 2**30 / needed
                print(f"| {args.rows:,} rows, {label} | `shfcas {name}` | {seconds:.2f} s | {peak_gib:.2f} GiB | {ratio:.1f} |")


if __name__ == "__main__":
    main()
