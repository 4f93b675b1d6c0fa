"""Generated completion tables and table comparison for the tests of :mod:`shfcas_fast.tables`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

def adjacent_completions(seed: int, num_prompts: int = 60, *, max_size: int = 12) -> pa.Table:
    """Prompts of 1 to ``max_size`` adjacent rows (one of 3 * max_size rows, longer than small
    batches), per-token log-prob lists, a completion column and a few constant-reward prompts."""
    rng = np.random.default_rng(seed)
    sizes = np.append(rng.integers(1, max_size + 1, size=num_prompts - 1), 3 * max_size)
    rng.shuffle(sizes)
    prompt_ids = np.repeat(np.arange(sizes.shape[0]), sizes)
    n = prompt_ids.shape[0]
    tokens = [list(-rng.exponential(size=length)) for length in rng.integers(0, 5, size=n)]
    reward = rng.normal(size=n)
    reward[prompt_ids % 7 == 3] = 0.5
    return pa.table(
        {
            "prompt": pa.array(np.char.add("prompt ", prompt_ids.astype(str))),
            "completion": pa.array(np.char.add("completion ", np.arange(n).astype(str))),
            "token_logprobs": tokens,
            "reward": reward,
        }
    )


def assert_tables_equal(actual: pa.Table, expected: pa.Table) -> None:
    """Same schema and values; NaN equals NaN (the tau of a degenerate prompt)."""
    assert actual.schema == expected.schema
    for name in expected.column_names:
        column, wanted = actual[name], expected[name]
        if pa.types.is_floating(wanted.type):
            np.testing.assert_array_equal(column.to_numpy(), wanted.to_numpy(), err_msg=name)
        else:
            assert column.to_pylist() == wanted.to_pylist(), name
