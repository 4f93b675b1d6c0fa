"""select_file against select_table on the same scored rows, on every way select_file groups them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from table_cases import assert_tables_equal

from shfcas_fast import io
from shfcas_fast.tables import load_scored, score_table, select_file, select_table
from shfcas_fast.tables import grouping
from shfcas_fast.tables import select as select_module


def scored_rows(adjacent: bool, seed: int = 4) -> pa.Table:
    """Scored rows of 90 prompts, adjacent or scattered; a few prompts are degenerate."""
    rng = np.random.default_rng(seed)
    numbers = rng.integers(0, 90, size=700)
    prompts = [f"prompt {p}" for p in (np.sort(numbers) if adjacent else numbers).tolist()]
    reward = rng.normal(size=700)
    reward[np.isin(numbers, [3, 7])] = 1.0  # constant rewards: degenerate prompts are never chosen
    table = pa.table({"prompt": prompts, "completion": np.arange(700), "logprob": rng.normal(size=700), "reward": reward})
    return score_table(table)


@pytest.mark.parametrize("path", ["scattered", "adjacent", "colliding hashes", "adjacent, colliding hashes"])
@pytest.mark.parametrize("kind", ["rows", "prompts"])
def test_select_file_takes_every_path_to_the_same_selection(tmp_path, monkeypatch, path, kind):
    # select_file groups the rows by two hashes of each prompt, not by the prompts; when two distinct
    # prompts share the first hash the second tells, and it groups by the prompts themselves instead.
    scored = scored_rows(adjacent="adjacent" in path)
    source, output = tmp_path / "scored.parquet", tmp_path / "selected.parquet"
    pq.write_table(scored, source, row_group_size=64)
    fallbacks = []
    if "colliding" in path:
        monkeypatch.setattr(grouping, "_HASH_MASK", 0xF000_0000_0000_0000)  # 16 hashes for 90 prompts
        exact = select_module.load_scored
        monkeypatch.setattr(select_module, "load_scored", lambda *args, **kwargs: fallbacks.append(1) or exact(*args, **kwargs))
    summary = select_file(source, output, budget=20, kind=kind)
    expected = select_table(scored, budget=20, kind=kind)
    assert_tables_equal(io.read_table(output), expected)
    assert fallbacks == ([1] if "colliding" in path else [])
    chosen = set(expected["prompt"].to_pylist())
    assert (summary.selected_prompts, summary.prompts) == (20, 90)
    assert summary.selected_rows == sum(prompt in chosen for prompt in scored["prompt"].to_pylist())


@pytest.mark.parametrize("kind", ["rows", "prompts"])
def test_select_file_groups_dictionary_prompts_of_shards_by_value(tmp_path, kind):
    # Each shard's categorical prompt column has a dictionary of its own: the hashes must come from
    # the values, and the prompts written from the values too.
    scored = scored_rows(adjacent=False, seed=9)
    folder, output = tmp_path / "shards", tmp_path / "selected.parquet"
    folder.mkdir()
    for shard, start in enumerate(range(0, scored.num_rows, 100)):
        part = scored.slice(start, 100)
        part = part.set_column(0, "prompt", part["prompt"].combine_chunks().dictionary_encode())
        pq.write_table(part, folder / f"part-{shard}.parquet")
    select_file(folder, output, threshold=1.2, kind=kind)
    selected = io.read_table(output)
    expected = select_table(scored, threshold=1.2, kind=kind)
    assert selected["prompt"].cast(pa.string()).to_pylist() == expected["prompt"].to_pylist()
    assert selected["selection_rank"].to_pylist() == expected["selection_rank"].to_pylist()


def test_select_file_refuses_rows_of_a_prompt_that_disagree(tmp_path):
    scored = scored_rows(adjacent=False)
    conflict = scored["group_conflict"].to_numpy().copy()
    conflict[500] += 1.0
    source = tmp_path / "scored.parquet"
    pq.write_table(scored.set_column(scored.schema.get_field_index("group_conflict"), "group_conflict", pa.array(conflict)), source)
    with pytest.raises(ValueError, match="row 500 .* different group_conflict"):
        select_file(source, tmp_path / "selected.parquet", budget=5)
    assert not (tmp_path / "selected.parquet").exists()
    with pytest.raises(ValueError, match="row 500 .* different group_conflict"):
        load_scored(source)
