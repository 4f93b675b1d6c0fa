"""Time the cases of ``bench_engine.py`` with ``time.perf_counter`` and print a Markdown table of speed-ups.

Usage:
```bash
python benches/report_engine.py                  # 10M pairs, best of 3: the README's numbers
python benches/report_engine.py --pairs 100000   # a quick check of the script
python benches/report_engine.py --only keys       # only the cases whose label contains "keys"
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
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()

    inputs = Inputs.generate(args.pairs)
    seconds: dict[Callable[[Inputs], Any], float] = {}  # engine calls that several cases share are timed once
    engines = {comparison.engine for comparison in COMPARISONS}

    def engine_time(function: Callable[[Inputs], Any]) -> float:
        if function not in seconds:
            seconds[function] = best_time(function, inputs, args.repeats)
        return seconds[function]

    print(
        f"{inputs.num_pairs:,} pairs ({inputs.num_groups:,} prompts x 8), {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} on {torch.get_num_threads()} threads, "
        f"best of {args.repeats}\n"
    )
    print("| Case | Engine | Yardstick | Yardstick time | Speed-up | Target |")
    print("|---|---:|---|---:|---:|---:|")
    for comparison in COMPARISONS:
        if args.only not in comparison.label:
            continue
        engine = engine_time(comparison.engine)
        if comparison.yardstick in engines:  # keyed cases measure against the contiguous engine call
            yardstick = engine_time(comparison.yardstick)
        else:
            yardstick = best_time(comparison.yardstick, inputs, args.repeats) * comparison.yardstick_scale(inputs)
        speedup = yardstick / engine
        if comparison.target is None:
            target = "-"
        else:
            target = f">= {comparison.target:,g}x {'met' if speedup >= comparison.target else 'MISSED'}"
        yardstick_name = comparison.yardstick_name
        if comparison.sampled:
            yardstick_name += f" ({inputs.sample_groups:,} prompts, extrapolated)"
        speedup_text = f"{speedup:,.1f}x" if speedup >= 1 else f"{speedup:.2f}x"  # keyed cases are below 1
        print(
            f"| {comparison.name} | {format_seconds(engine)} | {yardstick_name} | {format_seconds(yardstick)} "
            f"| {speedup_text} | {target} |"
        )


if __name__ == "__main__":
    main()
