"""Time the cases of ``bench_engine.py`` with ``time.perf_counter`` and print a Markdown table of speed-ups.

Usage:
```bash
python benches/report_engine.py                  # 10M pairs, best of 3: the README's numbers
python benches/report_engine.py --pairs 100000   # a quick check of the script
```
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from bench_engine import COMPARISONS, DEFAULT_PAIRS, Inputs


def best_time(function: Callable[[Inputs], Any], inputs: Inputs, repeats: int) -> float:
    """Best wall-clock seconds of ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(inputs)
        times.append(time.perf_counter() - start)
    return min(times)


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1.0 else f"{seconds:,.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="completions, in prompts of 8")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many calls")
    args = parser.parse_args()

    inputs = Inputs.generate(args.pairs)
    engine_seconds: dict[Callable[[Inputs], Any], float] = {}  # cases that share an engine call time it once
    print(
        f"{inputs.num_pairs:,} pairs ({inputs.num_groups:,} prompts x 8), {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} on {torch.get_num_threads()} threads, "
        f"best of {args.repeats}\n"
    )
    print("| Case | Engine | Yardstick | Yardstick time | Speed-up | Target |")
    print("|---|---:|---|---:|---:|---:|")
    for comparison in COMPARISONS:
        if comparison.engine not in engine_seconds:
            engine_seconds[comparison.engine] = best_time(comparison.engine, inputs, args.repeats)
        engine = engine_seconds[comparison.engine]
        yardstick = best_time(comparison.yardstick, inputs, args.repeats) * comparison.yardstick_scale(inputs)
        speedup = yardstick / engine
        if comparison.target is None:
            target = "-"
        else:
            target = f">= {comparison.target:,.0f}x {'met' if speedup >= comparison.target else 'MISSED'}"
        yardstick_name = comparison.yardstick_name
        if comparison.sampled:
            yardstick_name += f" ({inputs.sample_groups:,} prompts, extrapolated)"
        print(
            f"| {comparison.name} | {format_seconds(engine)} | {yardstick_name} | {format_seconds(yardstick)} "
            f"| {speedup:,.1f}x | {target} |"
        )


if __name__ == "__main__":
    main()
