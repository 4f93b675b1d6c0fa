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


def best_times(functions: list[Callable[[Inputs], Any]], inputs: Inputs, repeats: int) -> dict[Callable[[Inputs], Any], float]:
    """Best wall-clock seconds of ``repeats`` calls of each function, the calls taken in turns (one of
    each per round): a shared machine's slow spells then fall on engine and yardstick alike, and the
    best call of each is the least disturbed."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for function in functions:
            start = time.perf_counter()
            function(inputs)
            best[function] = min(best[function], time.perf_counter() - start)
    return best


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1.0 else f"{seconds:,.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help="completions, in prompts of 8")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many calls")
    parser.add_argument("--only", default="", help="run only the cases whose label contains this text")
    args = parser.parse_args()

    inputs = Inputs.generate(args.pairs)
    comparisons = [comparison for comparison in COMPARISONS if args.only in comparison.label]
    # Engine calls that several cases share (the contiguous score is the keyed cases' yardstick) are timed once.
    functions = list(dict.fromkeys(f for c in comparisons for f in (c.engine, c.yardstick)))
    seconds = best_times(functions, inputs, args.repeats)

    print(
        f"{inputs.num_pairs:,} pairs ({inputs.num_groups:,} prompts x 8), {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__} on {torch.get_num_threads()} threads, "
        f"best of {args.repeats}, calls in turns\n"
    )
    print("| Case | Engine | Yardstick | Yardstick time | Speed-up | Target |")
    print("|---|---:|---|---:|---:|---:|")
    for comparison in comparisons:
        engine = seconds[comparison.engine]
        yardstick = seconds[comparison.yardstick] * comparison.yardstick_scale(inputs)
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
