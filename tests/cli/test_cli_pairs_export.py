"""``shfcas export`` then ``shfcas pairs``: annotation tasks out, TRL preference pairs back in."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def brute_force_pairs(prompts: list, completions: list, scores: list) -> set[tuple]:
    """Every two completions of one prompt with different scores; the higher-scored one is chosen."""
    pairs = set()
    for i, j in itertools.combinations(range(len(prompts)), 2):
        if prompts[i] == prompts[j] and scores[i] != scores[j]:
            better, worse = (i, j) if scores[i] > scores[j] else (j, i)
            pairs.add((prompts[i], completions[better], completions[worse], scores[better] - scores[worse]))
    return pairs


@pytest.fixture
def labelled(tmp_path):
    """Scattered prompts with tied scores: 6 prompts x 5 completions, scores in {0, 1, 2}."""
    rng = np.random.default_rng(8)
    rows = rng.permutation(30)
    table = pa.table(
        {
            "prompt": [f"prompt {row // 5}" for row in rows],
            "completion": [f"answer {row}" for row in rows],
            "score": rng.integers(0, 3, size=30).astype(float),
        }
    )
    path = tmp_path / "labelled.parquet"
    pq.write_table(table, path)
    return path, table


@pytest.mark.parametrize("cost", [False, True])
def test_pairs_match_brute_force(tmp_path, labelled, invoke, cost):
    path, table = labelled
    output = tmp_path / "pairs.parquet"
    result = invoke("pairs", path, "-o", output, *(["--cost"] if cost else []))
    assert result.exit_code == 0, result.output
    pairs = pq.read_table(output)
    assert pairs.column_names == ["prompt", "chosen", "rejected", "margin"]  # TRL's preference columns
    scores = [-score if cost else score for score in table["score"].to_pylist()]
    expected = brute_force_pairs(table["prompt"].to_pylist(), table["completion"].to_pylist(), scores)
    assert len(expected) > 20
    assert set(zip(*pairs.to_pydict().values(), strict=True)) == expected
    assert pairs.num_rows == len(expected)


def test_unlabelled_rows_raise_or_are_omitted(tmp_path, invoke):
    path = tmp_path / "partly.jsonl"
    rows = [
        {"prompt": "p", "completion": "a", "score": 1.0},
        {"prompt": "p", "completion": "b", "score": None},
        {"prompt": "p", "completion": "c", "score": 0.0},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("pairs", path, "-o", tmp_path / "pairs.jsonl")
    assert result.exit_code == 1
    assert "row 1 (0-based): column 'score' is missing or nan" in result.stderr
    result = invoke("pairs", path, "-o", tmp_path / "pairs.jsonl", "--nan-policy", "omit")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()] == [
        {"prompt": "p", "chosen": "a", "rejected": "c", "margin": 1.0}
    ]


def test_export_then_label_then_pairs(tmp_path, scored_file, invoke):
    selected = tmp_path / "selected.parquet"
    assert invoke("select", scored_file, "-o", selected, "--budget", "5").exit_code == 0
    tasks_path = tmp_path / "tasks.jsonl"
    result = invoke("export", selected, "-o", tasks_path, "--keep", "selection_rank")
    assert result.exit_code == 0, result.output
    assert "Exported 40 completions of 5 prompts" in result.stderr
    tasks = [json.loads(line) for line in tasks_path.read_text().splitlines()]
    assert list(tasks[0]) == ["id", "prompt_id", "prompt", "completion", "score", "selection_rank"]
    source = pq.read_table(selected)
    assert [source["completion"][task["id"]].as_py() for task in tasks] == [task["completion"] for task in tasks]
    prompt_ids = [task["prompt_id"] for task in tasks]
    assert prompt_ids == sorted(prompt_ids)  # each prompt's completions together
    assert all(task["score"] is None for task in tasks)

    # An annotator scores each completion; the labels come back in the same file.
    rng = np.random.default_rng(9)
    for task in tasks:
        task["score"] = int(rng.integers(0, 4))
    labelled_path = tmp_path / "labelled.jsonl"
    labelled_path.write_text("".join(json.dumps(task) + "\n" for task in tasks))
    pairs_path = tmp_path / "pairs.jsonl"
    assert invoke("pairs", labelled_path, "-o", pairs_path).exit_code == 0
    pairs = {tuple(json.loads(line).values()) for line in pairs_path.read_text().splitlines()}
    columns = [[task[name] for task in tasks] for name in ("prompt", "completion", "score")]
    assert pairs == brute_force_pairs(*columns)


def test_export_writes_only_jsonl(tmp_path, scored_file, invoke):
    result = invoke("export", scored_file, "-o", tmp_path / "tasks.parquet")
    assert result.exit_code == 1
    assert "name the output .jsonl" in result.stderr


@pytest.mark.parametrize("label_column", ["id", "prompt", "completion"])
def test_export_refuses_a_label_column_that_would_overwrite_a_task_field(tmp_path, scored_file, invoke, label_column):
    output = tmp_path / "tasks.jsonl"
    result = invoke("export", scored_file, "-o", output, "--label-column", label_column)
    assert result.exit_code == 1
    assert f"(--label-column {label_column}) clashes with a field every task has" in result.stderr
    assert not output.exists()
