"""Score and select a sharded data set: one process versus Ray Data with 1 and 2 workers.

Usage:
```bash
python benches/bench_ray.py                  # 10M rows in 16 Parquet shards, prompts of 8 scattered
python benches/bench_ray.py --rows 1000000   # a quick check
```

All three runs read the same generated shards (every prompt's 8 completions are spread over the
shards) and do the same work: conflict scores of every completion, then the ``--budget`` prompts of
highest mean |PACS| with all their rows.

- single process: the shards' scored columns read with ``pyarrow.dataset``, grouped by prompt
  (``shfcas score``'s grouping), scored with one engine call, top-k by the engine's ``select``,
  and the chosen rows filtered from the shards.
- "select" is timed from the raw shards to the chosen rows, scoring included (as ``select_dataset``
  scores on the way).
- Ray, N workers (a local Ray with N CPUs, started before the clock): ``score_dataset`` (every
  row with its scores, in the object store) and ``select_dataset`` (its rows consumed).

Reported: seconds and rows per second of each step, and the shuffle volume of the Ray runs (bytes of
the narrow rows that are hash-partitioned, and of the per-row scores sorted back to the input
order), measured from the blocks' sizes.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

import shfcas_fast
from shfcas_fast.cli._groups import group_rows

COLUMNS = ["prompt", "logprob", "reward"]


def generate(folder: Path, rows: int, shards: int, seed: int = 0) -> list[str]:
    """Write ``rows`` completions (prompts of 8, rows shuffled) as ``shards`` Parquet files."""
    rng = np.random.default_rng(seed)
    ids = pa.array(rng.permutation(np.repeat(np.arange(rows // 8), 8)).astype(np.int32))
    table = pa.table(
        {
            "prompt": pc.binary_join_element_wise(pa.scalar("a prompt about topic number "), pc.cast(ids, pa.string()), ""),
            "completion": pc.binary_join_element_wise(
                pa.scalar("completion "), pc.cast(pa.array(np.arange(len(ids))), pa.string()), ""
            ),
            "logprob": rng.normal(size=len(ids)) * 10 - 50,
            "reward": rng.normal(size=len(ids)),
        }
    )
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    paths = []
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        path = folder / f"part-{shard:04d}.parquet"
        pq.write_table(table.slice(start, stop - start), path)
        paths.append(str(path))
    return paths


def single_process(paths: list[str], budget: int) -> dict[str, float]:
    """Seconds to score every row and to select (filtering the chosen rows), in this process."""
    start = time.perf_counter()
    narrow = pads.dataset(paths).to_table(columns=COLUMNS)
    groups = group_rows(narrow["prompt"], "prompt")
    logprob = groups.contiguous(narrow["logprob"].to_numpy())
    reward = groups.contiguous(narrow["reward"].to_numpy())
    scores = shfcas_fast.score(logprob, reward, groups.sizes)
    scored = time.perf_counter()
    chosen = shfcas_fast.select(scores, budget=budget)
    keep = np.isin(groups.ids, chosen)
    rows = pads.dataset(paths).to_table().filter(pa.array(keep))
    assert rows.num_rows == 8 * budget
    return {"score": scored - start, "select": time.perf_counter() - start}


def ray_run(paths: list[str], budget: int, workers: int) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds of score_dataset and select_dataset on a local Ray with ``workers`` CPUs, and the shuffle bytes."""
    import ray

    from shfcas_fast import ray as shfcas_ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ray.data.range(workers).map_batches(lambda batch: batch).count()  # start the workers first
        start = time.perf_counter()
        scored = shfcas_ray.score_dataset(ray.data.read_parquet(paths))
        assert scored.count() == sum(pq.read_metadata(path).num_rows for path in paths)
        score_seconds = time.perf_counter() - start
        del scored
        start = time.perf_counter()
        selected = shfcas_ray.select_dataset(ray.data.read_parquet(paths), budget=budget).count()
        assert selected == 8 * budget
        times = {"score": score_seconds, "select": time.perf_counter() - start}
        volume = shuffle_volume(paths, shfcas_ray) if workers > 1 else {}
    finally:
        ray.shutdown()
    return times, volume


def shuffle_volume(paths: list[str], shfcas_ray: Any) -> dict[str, int]:
    """Bytes of the narrow rows (hash-partitioned) and of the per-row scores (sorted back), untimed."""
    import ray

    columns = shfcas_ray._Columns(*COLUMNS)
    blocks = shfcas_ray._Blocks.of(ray.data.read_parquet(paths).select_columns(COLUMNS))
    narrow = shfcas_ray._narrow_rows(blocks, columns).materialize()
    scores = shfcas_ray._Blocks.of(
        narrow.repartition(shfcas_ray._num_partitions(None, blocks.num_rows), keys=[shfcas_ray._HASH]).map_batches(
            functools.partial(shfcas_ray._score_partition, starts=blocks.starts, per_prompt=False),
            batch_format="pyarrow",
            batch_size=None,
        )
    )
    return {"narrow": narrow.size_bytes(), "scores": ray.data.from_arrow_refs(scores.refs).size_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="completions (a multiple of 8)")
    parser.add_argument("--shards", type=int, default=16, help="Parquet files")
    parser.add_argument("--budget", type=int, default=1000, help="prompts selected")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray CPU counts to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = generate(Path(folder), args.rows, args.shards)
        results = {"single process": single_process(paths, args.budget)}
        volume: dict[str, int] = {}
        for workers in args.workers:
            times, measured = ray_run(paths, args.budget, workers)
            results[f"Ray, {workers} worker{'s' if workers > 1 else ''}"] = times
            volume = volume or measured
    print(f"{args.rows:,} rows in {args.shards} shards, prompts of 8 scattered over the shards; budget {args.budget}")
    print(f"{'run':<18} {'score s':>9} {'rows/s':>12} {'select s':>9} {'rows/s':>12}")
    for name, times in results.items():
        print(
            f"{name:<18} {times['score']:>9.2f} {args.rows / times['score']:>12,.0f} "
            f"{times['select']:>9.2f} {args.rows / times['select']:>12,.0f}"
        )
    if volume:
        print(
            f"shuffle volume: narrow rows {volume['narrow'] / 1e6:,.1f} MB ({volume['narrow'] / args.rows:.1f} B/row, "
            f"score and select); per-row scores sorted back {volume['scores'] / 1e6:,.1f} MB "
            f"({volume['scores'] / args.rows:.1f} B/row, score only)"
        )


if __name__ == "__main__":
    main()
