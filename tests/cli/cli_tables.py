"""Generated completion tables for the CLI tests, and an independent grouping of their rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def completions_table(num_prompts: int, group_size: int, *, seed: int = 0, shuffle: bool = True) -> pa.Table:
    """``num_prompts`` prompts with ``group_size`` completions each, in random row order if ``shuffle``.

    Each prompt draws its own log-prob/reward correlation in [-1, 1], so conflicts cover the whole
    range; a few prompts get constant rewards, which makes them degenerate.
    """
    rng = np.random.default_rng(seed)
    prompt_ids = np.repeat(np.arange(num_prompts), group_size)
    correlation = rng.uniform(-1.0, 1.0, size=num_prompts)[prompt_ids]
    noise = rng.normal(size=prompt_ids.shape[0])
    logprob = rng.normal(size=prompt_ids.shape[0])
    reward = correlation * logprob + np.sqrt(1.0 - correlation**2) * noise
    reward[prompt_ids % 97 == 5] = 0.25
    rows = rng.permutation(prompt_ids.shape[0]) if shuffle else np.arange(prompt_ids.shape[0])
    prompts = pa.array(np.char.add("prompt ", prompt_ids[rows].astype(str)))
    return pa.table(
        {
            "prompt": prompts,
            "completion": pa.array(np.char.add("completion ", rows.astype(str))),
            "logprob": 10.0 * logprob[rows] - 60.0,
            "reward": reward[rows],
        }
    )


def grouped_by_prompt(table: pa.Table, prompt_column: str = "prompt") -> tuple[np.ndarray, np.ndarray]:
    """``(order, sizes)``: a stable row order that puts each prompt's rows together, by first appearance.

    Written with a Python dict, independently of the CLI's Arrow-based grouping.
    """
    first_seen: dict[object, int] = {}
    group_of_row = np.array([first_seen.setdefault(key, len(first_seen)) for key in table[prompt_column].to_pylist()])
    order = np.argsort(group_of_row, kind="stable")
    return order, np.bincount(group_of_row)
