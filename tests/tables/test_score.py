"""``score_table`` and ``score_file`` against the float64 reference and scipy's Kendall tau-b."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reference
from table_cases import assert_tables_equal

from shfcas_fast import ShfcasTypeError, ShfcasValueError, io
from shfcas_fast.tables import SCORE_FIELDS, default_batch_rows, score_file, score_table, scored_schema, select_table
from shfcas_fast.tables import grouping
from shfcas_fast.tables import score as score_module
from shfcas_fast.tables.score import DEFAULT_BATCH_BYTES


def reference_rows(prompts: list, logprob: np.ndarray, reward: np.ndarray) -> dict[str, np.ndarray]:
    """Every score column in row order, from the reference on rows grouped with a Python dict."""
    first_seen: dict[object, int] = {}
    group = np.array([first_seen.setdefault(key, len(first_seen)) for key in prompts])
    order = np.argsort(group, kind="stable")
    expected = reference.score(logprob[order], reward[order], np.bincount(group))
    rows = np.empty_like(order)
    rows[order] = np.arange(order.shape[0])
    columns = {}
    for name in SCORE_FIELDS.names:
        values = np.asarray(getattr(expected, name))
        columns[name] = values[rows] if values.shape[0] == order.shape[0] else values[group]
    return columns


def assert_matches_reference(scored: pa.Table, prompts: list, logprob: np.ndarray, reward: np.ndarray) -> None:
    for name, wanted in reference_rows(prompts, logprob, reward).items():
        actual = scored[name].to_numpy(zero_copy_only=False).astype(np.float64)
        np.testing.assert_allclose(actual, wanted.astype(np.float64), rtol=1e-9, atol=1e-9, err_msg=name)


def test_scattered_prompts_match_the_reference():
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, 40, size=500)
    logprob, reward = rng.normal(size=500), rng.normal(size=500)
    table = pa.table({"prompt": prompts, "completion": np.arange(500), "logprob": logprob, "reward": reward})
    scored = score_table(table)
    assert scored.schema == scored_schema(table.schema)
    assert scored.select(table.column_names).equals(table)  # row order and input columns kept
    assert_matches_reference(scored, prompts.tolist(), logprob, reward)


def test_token_lists_are_summed_and_omitted_rows_dropped(adjacent):
    reward = adjacent["reward"].to_numpy().copy()
    reward[[4, 9]] = [np.nan, np.inf]
    table = adjacent.set_column(3, "reward", pa.array(reward))
    with pytest.raises(ShfcasValueError, match=r"row 4 \(0-based\): column 'reward' is missing or nan"):
        score_table(table, logprob_column="token_logprobs")
    scored = score_table(table, logprob_column="token_logprobs", nan_policy="omit")
    keep = np.isfinite(reward)
    sums = np.array([float(np.sum(tokens)) for tokens in table["token_logprobs"].to_pylist()])
    assert scored["completion"].to_pylist() == table.filter(pa.array(keep))["completion"].to_pylist()
    assert_matches_reference(scored, np.asarray(table["prompt"].to_pylist())[keep].tolist(), sums[keep], reward[keep])


def test_inputs_other_than_tables_give_the_same_scores():
    columns = {"prompt": ["a", "b", "a", "b", "a"], "logprob": [-1.0, -2.0, -3.0, -1.0, -2.0], "reward": [1.0, 2.0, 0.0, 0.0, 3.0]}
    expected = score_table(pa.table(columns))
    for rows in (columns, pa.RecordBatch.from_pydict(columns)):
        assert_tables_equal(score_table(rows), expected)
    from_pandas = score_table(pd.DataFrame(columns))  # strings become large_string, with pandas metadata
    assert from_pandas.to_pydict() == expected.to_pydict()


def test_bad_arguments_raise_named_errors():
    table = pa.table({"prompt": ["a"], "logprob": [0.0], "reward": ["high"]})
    with pytest.raises(ShfcasTypeError, match="column 'reward' has type string"):
        score_table(table)
    with pytest.raises(ShfcasValueError, match=r"no column 'gold'.*reward_column= \(--reward-column\)"):
        score_table(table, reward_column="gold")
    with pytest.raises(ShfcasValueError, match="nan_policy must be 'raise' or 'omit'"):
        score_table(table, nan_policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ShfcasTypeError, match="must be a pyarrow Table"):
        score_table([1, 2, 3])
    token_ids = pa.table({"prompt": [[1, 2]], "logprob": [0.0], "reward": [1.0]})
    with pytest.raises(ShfcasTypeError, match="group keys must be strings, bytes, numbers or conversations"):
        score_table(token_ids)


def test_conversational_prompts_group_by_their_messages():
    def chat(text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]

    texts = ["hi", "bye", "hi", "bye", "hi"]
    columns = {"logprob": [-1.0, -2.0, -3.0, -1.0, -2.0], "reward": [1.0, 2.0, 0.0, 0.0, 3.0]}
    scored = score_table(pa.table({"prompt": [chat(text) for text in texts], **columns}))
    by_text = score_table(pa.table({"prompt": texts, **columns}))
    assert scored["prompt"].to_pylist() == [chat(text) for text in texts]  # the messages are kept
    for name in SCORE_FIELDS.names:
        assert scored[name].to_pylist() == by_text[name].to_pylist(), name
    selected = select_table(scored, budget=1, kind="prompts")  # a TRL conversational prompt-only data set
    assert selected["prompt"].to_pylist() == [chat(select_table(by_text, budget=1, kind="prompts")["prompt"][0].as_py())]


def test_empty_table_scores_to_an_empty_table():
    table = pa.table({"prompt": pa.array([], pa.string()), "logprob": pa.array([], pa.float64()), "reward": pa.array([], pa.float64())})
    assert score_table(table).schema == scored_schema(table.schema)
    assert score_table(table).num_rows == 0


@pytest.mark.parametrize("grouped", [False, True])
def test_score_file_writes_what_score_table_returns(tmp_path, adjacent, grouped):
    source = tmp_path / "in.parquet"
    io.write_table(source, adjacent)
    output = tmp_path / "scored.parquet"
    summary = score_file(source, output, logprob_column="token_logprobs", grouped=grouped, batch_size=17)
    expected = score_table(adjacent, logprob_column="token_logprobs")
    assert_tables_equal(io.read_table(output), expected)
    assert (summary.rows, summary.prompts) == (adjacent.num_rows, 60)
    degenerate_prompts = {row["prompt"] for row in expected.select(["prompt", "degenerate"]).to_pylist() if row["degenerate"]}
    assert summary.degenerate == len(degenerate_prompts) > 0
    with pytest.raises(FileExistsError):
        score_file(source, output)


@pytest.mark.parametrize(
    "path", ["adjacent prompts", "one core call", "buckets", "colliding hashes", "adjacent, colliding hashes"]
)
def test_score_file_takes_every_path_to_the_same_rows(tmp_path, monkeypatch, path):
    # score_file keeps two hashes per prompt, not the prompts. Adjacent prompts go to the contiguous
    # engine, scattered ones to keyed scoring, in buckets by hash on large files; when two distinct
    # prompts share the first hash the second tells, and the file is scored again grouping by the
    # prompts themselves. Every path must write what score_table returns.
    rng = np.random.default_rng(4)
    numbers = rng.integers(0, 90, size=700)
    prompts = [f"prompt {p}" for p in (np.sort(numbers) if "adjacent" in path else numbers).tolist()]
    logprob, reward = rng.normal(size=700), rng.normal(size=700)
    reward[[5, 300]] = np.nan  # omitted rows shift the rows that are scored
    table = pa.table({"prompt": prompts, "completion": np.arange(700), "logprob": logprob, "reward": reward})
    source, output = tmp_path / "in.parquet", tmp_path / "scored.parquet"
    io.write_table(source, table)
    fallbacks = []
    if path == "buckets":
        monkeypatch.setattr(grouping, "_BUCKET_ROWS", 50)
    if "colliding" in path:
        monkeypatch.setattr(grouping, "_HASH_MASK", 0xF000_0000_0000_0000)  # 16 hashes for 90 prompts
        exact = score_module._write_two_passes_holding_prompts
        monkeypatch.setattr(
            score_module, "_write_two_passes_holding_prompts", lambda *args: fallbacks.append(1) or exact(*args)
        )
    summary = score_file(source, output, nan_policy="omit", batch_size=64)
    expected = score_table(table, nan_policy="omit")
    assert_tables_equal(io.read_table(output), expected)
    assert (summary.rows, summary.omitted, summary.prompts) == (698, 2, len(set(expected["prompt"].to_pylist())))
    assert fallbacks == ([1] if "colliding" in path else [])


def test_score_file_hashes_dictionary_prompts_by_value(tmp_path):
    # A categorical prompt column in shards: each shard has a dictionary of its own, so the hashes
    # must come from the values, not from the codes.
    rng = np.random.default_rng(8)
    prompts = [f"prompt {p}" for p in rng.integers(0, 30, size=400).tolist()]
    logprob, reward = rng.normal(size=400), rng.normal(size=400)
    table = pa.table({"prompt": pa.array(prompts).dictionary_encode(), "logprob": logprob, "reward": reward})
    folder, output = tmp_path / "shards", tmp_path / "scored.parquet"
    folder.mkdir()
    for shard, start in enumerate(range(0, 400, 100)):
        part = table.slice(start, 100)  # a dictionary of this shard's prompts only
        part = part.set_column(0, "prompt", pa.array(prompts[start : start + 100]).dictionary_encode())
        pq.write_table(part, folder / f"part-{shard}.parquet")
    score_file(folder, output, batch_size=37)
    scored = io.read_table(output)
    expected = score_table(table.set_column(0, "prompt", pa.array(prompts)))
    for name in SCORE_FIELDS.names:
        actual, wanted = (table[name].to_numpy(zero_copy_only=False) for table in (scored, expected))
        np.testing.assert_array_equal(actual, wanted, err_msg=name)


def test_default_batch_is_bounded_by_bytes(tmp_path):
    narrow, wide = tmp_path / "narrow.parquet", tmp_path / "wide.parquet"
    io.write_table(narrow, pa.table({"prompt": ["p"] * 10, "reward": np.zeros(10)}))
    io.write_table(wide, pa.table({"prompt": ["p"] * 10, "completion": ["x" * 100_000] * 10}))
    assert default_batch_rows(narrow) == io.DEFAULT_BATCH_ROWS
    # Rows of about 100 kB: as many as fit in DEFAULT_BATCH_BYTES.
    assert default_batch_rows(wide) == DEFAULT_BATCH_BYTES // (io.read_table(wide).nbytes / 10)
    assert default_batch_rows(wide, ["prompt"]) == io.DEFAULT_BATCH_ROWS


@pytest.mark.parametrize("grouped", [False, True])
def test_score_file_reads_a_folder_of_shards(tmp_path, adjacent, grouped):
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard, start in enumerate(range(0, adjacent.num_rows, 100)):  # prompts straddle the shards
        io.write_table(folder / f"part-{shard}.parquet", adjacent.slice(start, 100))
    output = tmp_path / "scored.jsonl"
    score_file(folder, output, logprob_column="token_logprobs", grouped=grouped)
    expected = score_table(adjacent, logprob_column="token_logprobs")
    scored = io.read_table(output)
    assert scored["completion"].to_pylist() == expected["completion"].to_pylist()
    np.testing.assert_allclose(scored["pacs"].to_numpy(), expected["pacs"].to_numpy(), rtol=1e-12)
