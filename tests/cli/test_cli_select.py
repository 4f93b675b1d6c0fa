"""``shfcas select`` against selections computed from the reference scores."""

from __future__ import annotations

import numpy as np
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest
import reference
from cli_tables import grouped_by_prompt


@pytest.fixture
def expected(completions_file):
    """Reference scores of the test file's prompts, numbered by first appearance, and their names."""
    table = pq.read_table(completions_file)
    order, sizes = grouped_by_prompt(table)
    scores = reference.score(table["logprob"].to_numpy()[order], table["reward"].to_numpy()[order], sizes)
    first_rows = order[np.concatenate([[0], np.cumsum(sizes)[:-1]])]
    return scores, np.asarray(table["prompt"].to_pylist())[first_rows]


def expected_top(values: np.ndarray, degenerate: np.ndarray, threshold: float, budget: int | None = None) -> np.ndarray:
    eligible = np.where(~degenerate & (values > threshold), values, np.nan)
    return reference.top_k(eligible, budget if budget is not None else int(np.count_nonzero(~np.isnan(eligible))))


@pytest.mark.parametrize(
    ("options", "measure", "threshold", "budget"),
    [
        ([], "group_conflict", 1.0, None),
        (["--threshold", "1.5"], "group_conflict", 1.5, None),
        (["--budget", "25"], "group_conflict", -np.inf, 25),
        (["--budget", "25", "--threshold", "1.6"], "group_conflict", 1.6, 25),
        (["--strategy", "kendall"], "kendall_distance", 0.5, None),
        (["--strategy", "kendall", "--budget", "30"], "kendall_distance", -np.inf, 30),
    ],
)
def test_prompts_match_the_reference_selection(
    tmp_path, scored_file, expected, invoke, options, measure, threshold, budget
):
    scores, prompt_names = expected
    output = tmp_path / "prompts.parquet"
    result = invoke("select", scored_file, "-o", output, "--as", "prompts", *options)
    assert result.exit_code == 0, result.output
    chosen = expected_top(getattr(scores, measure), scores.degenerate, threshold, budget)
    assert chosen.size > 0
    selected = pq.read_table(output)
    assert selected["prompt"].to_pylist() == prompt_names[chosen].tolist()
    assert selected["selection_rank"].to_pylist() == list(range(chosen.size))
    assert selected["num_completions"].to_pylist() == [8] * chosen.size
    for name in ("group_conflict", "kendall_tau", "kendall_distance"):
        np.testing.assert_allclose(selected[name].to_numpy(), getattr(scores, name)[chosen], rtol=1e-9)
    assert f"Selected {chosen.size:,} of 400 prompts ({8 * chosen.size:,} rows)" in result.stderr


def test_rows_hold_every_completion_of_the_selected_prompts(tmp_path, scored_file, expected, invoke):
    scores, prompt_names = expected
    output = tmp_path / "rows.jsonl"
    assert invoke("select", scored_file, "-o", output, "--budget", "12").exit_code == 0
    top = prompt_names[expected_top(scores.group_conflict, scores.degenerate, -np.inf, 12)]
    rank_of = {name: rank for rank, name in enumerate(top)}
    scored = pq.read_table(scored_file)
    wanted = scored.filter(np.isin(np.asarray(scored["prompt"].to_pylist()), list(rank_of)))
    selected = pa_json.read_json(output)
    assert selected.num_rows == 96
    assert selected["completion"].to_pylist() == wanted["completion"].to_pylist()  # file order kept
    assert selected["selection_rank"].to_pylist() == [rank_of[name] for name in wanted["prompt"].to_pylist()]
    np.testing.assert_allclose(selected["pacs"].to_numpy(), wanted["pacs"].to_numpy())


def test_random_selection_is_reproducible_and_skips_degenerate_prompts(tmp_path, scored_file, expected, invoke):
    scores, prompt_names = expected
    picks = []
    for seed in (3, 3, 4):
        output = tmp_path / f"random-{len(picks)}.parquet"
        options = ["--strategy", "random", "--budget", "40", "--seed", seed, "--as", "prompts"]
        assert invoke("select", scored_file, "-o", output, *options).exit_code == 0
        picks.append(pq.read_table(output)["prompt"].to_pylist())
    assert picks[0] == picks[1] != picks[2]
    degenerate_names = set(prompt_names[scores.degenerate])
    assert degenerate_names and all(len(set(pick)) == 40 and not degenerate_names & set(pick) for pick in picks)
