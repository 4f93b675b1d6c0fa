"""``StreamingScorer``: a stream of batches scores exactly as the whole table does, for any batch size."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pytest
from table_cases import adjacent_completions, assert_tables_equal
from datasets.table import InMemoryTable

from shfcas_fast import ShfcasTypeError, ShfcasValueError
from shfcas_fast.tables import StreamingScorer, score_dataset, score_table

OPTIONS = {"logprob_column": "token_logprobs"}


def batches_of(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return [batch for start in range(0, table.num_rows, size) for batch in table.slice(start, size).to_batches()]


@pytest.mark.parametrize("batch_size", [1, 2, 5, 16, 37, 1000])
def test_record_batch_loop_equals_scoring_at_once(adjacent, batch_size):
    scorer = StreamingScorer(**OPTIONS)
    streamed = pa.concat_tables([scorer.push(batch) for batch in batches_of(adjacent, batch_size)] + [scorer.finish()])
    assert_tables_equal(streamed, score_table(adjacent, **OPTIONS))
    assert scorer.summary.rows == adjacent.num_rows and scorer.summary.prompts == 60


def test_scored_batches_yields_non_empty_tables_in_order(adjacent):
    pieces = list(StreamingScorer(**OPTIONS).scored_batches(batches_of(adjacent, 7)))
    assert all(piece.num_rows for piece in pieces)
    assert_tables_equal(pa.concat_tables(pieces), score_table(adjacent, **OPTIONS))


@pytest.mark.parametrize("batch_size", [3, 10, 64])
def test_datasets_map_pattern_equals_scoring_at_once(adjacent, batch_size):
    rows = datasets.Dataset(InMemoryTable(adjacent))
    expected = score_table(adjacent, **OPTIONS)

    # Scoring each batch on its own splits the prompts that straddle batches: wrong scores.
    naive = rows.with_format("arrow").map(
        lambda batch: score_table(batch, **OPTIONS), batched=True, batch_size=batch_size, load_from_cache_file=False
    )
    wrong = ~np.isclose(naive.with_format("arrow")[:]["pacs"].to_numpy(), expected["pacs"].to_numpy())
    assert wrong.any()

    scorer = StreamingScorer(**OPTIONS)
    scored = rows.with_format("arrow").map(
        scorer.push, batched=True, batch_size=batch_size, remove_columns=rows.column_names, load_from_cache_file=False
    )
    scored = datasets.concatenate_datasets([scored.with_format(None), datasets.Dataset(InMemoryTable(scorer.finish()))])
    assert_tables_equal(scored.with_format("arrow")[:], expected)


def test_a_prompt_that_comes_back_is_refused_at_its_first_row():
    scorer = StreamingScorer()
    rows = {"logprob": [-1.0], "reward": [0.0]}
    scorer.push({"prompt": ["a"], **rows})
    assert scorer.push({"prompt": ["b"], **rows})["prompt"].to_pylist() == ["a"]
    with pytest.raises(ShfcasValueError, match=r"row 2 \(0-based\): column 'prompt' repeats 'a', first seen before"):
        scorer.push({"prompt": ["a", "a"], "logprob": [-1.0, -2.0], "reward": [0.0, 1.0]})


def test_a_prompt_that_comes_back_within_a_batch_is_refused():
    batch = pa.table({"prompt": [7, 8, 7], "logprob": [0.0, 1.0, 2.0], "reward": [0.0, 1.0, 2.0]})
    with pytest.raises(ShfcasValueError, match=r"row 2 \(0-based\): column 'prompt' repeats 7"):
        StreamingScorer().push(batch)


def test_non_finite_values_name_the_stream_row(adjacent):
    reward = adjacent["reward"].to_numpy().copy()
    reward[40] = np.nan
    table = adjacent.set_column(3, "reward", pa.array(reward))
    scorer = StreamingScorer(**OPTIONS)
    with pytest.raises(ShfcasValueError, match=r"row 40 \(0-based\): column 'reward' is missing or nan"):
        for batch in batches_of(table, 9):
            scorer.push(batch)
        scorer.finish()
    omitting = StreamingScorer(**OPTIONS, nan_policy="omit")
    streamed = pa.concat_tables(list(omitting.scored_batches(batches_of(table, 9))))
    assert_tables_equal(streamed, score_table(table, **OPTIONS, nan_policy="omit"))
    assert omitting.summary.omitted == 1


def test_batches_must_keep_the_first_batch_columns():
    scorer = StreamingScorer()
    scorer.push({"prompt": ["a"], "logprob": [-1.0], "reward": [0.0]})
    scorer.push({"reward": [1], "prompt": ["a"], "logprob": [-2]})  # reordered, integers: cast to the first types
    with pytest.raises(ShfcasValueError, match="every batch needs the same columns"):
        scorer.push({"prompt": ["b"], "logprob": [-1.0]})
    with pytest.raises(ShfcasTypeError, match="column types differ"):
        scorer.push({"prompt": ["b"], "logprob": ["high"], "reward": [0.0]})
    assert scorer.finish()["prompt"].to_pylist() == ["a", "a"]


def test_nothing_pushed_finishes_empty():
    assert StreamingScorer().finish().num_rows == 0
    assert list(StreamingScorer().scored_batches([])) == []


def test_a_prompt_longer_than_many_batches():
    table = adjacent_completions(seed=12, num_prompts=3, max_size=40)
    scorer = StreamingScorer(**OPTIONS)
    streamed = pa.concat_tables([scorer.push(batch) for batch in batches_of(table, 4)] + [scorer.finish()])
    assert_tables_equal(streamed, score_table(table, **OPTIONS))


def test_score_dataset_scores_the_current_row_order(adjacent):
    rows = datasets.Dataset(InMemoryTable(adjacent)).shuffle(seed=3)
    scored = score_dataset(rows, **OPTIONS)
    assert_tables_equal(scored.with_format("arrow")[:], score_table(rows.with_format("arrow")[:], **OPTIONS))
    with pytest.raises(ShfcasTypeError, match="StreamingScorer.scored_batches"):
        score_dataset(rows.to_iterable_dataset(), **OPTIONS)


def test_iterable_dataset_batches_stream(adjacent):
    rows = datasets.Dataset(InMemoryTable(adjacent)).to_iterable_dataset()
    pieces = StreamingScorer(**OPTIONS).scored_batches(rows.with_format("arrow").iter(batch_size=13))
    assert_tables_equal(pa.concat_tables(list(pieces)), score_table(adjacent, **OPTIONS))


def test_columns_may_be_numpy_arrays_or_torch_tensors():
    import torch

    columns = {"prompt": np.array([1, 1, 2, 2]), "logprob": torch.tensor([-1.0, -2.0, -3.0, -1.0]), "reward": [0.0, 1.0, 2.0, 2.5]}
    expected = score_table(pa.table({name: np.asarray(values) for name, values in columns.items()}))
    scorer = StreamingScorer()
    assert_tables_equal(pa.concat_tables([scorer.push(columns), scorer.finish()]), expected)
    with pytest.raises(ShfcasTypeError, match="column 'logprob' is not a 1-D column"):
        StreamingScorer().push({**columns, "logprob": np.zeros((4, 2))})
