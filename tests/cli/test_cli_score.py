"""``shfcas score`` against the float64 reference (tests/reference.py) and scipy's Kendall tau-b."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import reference
from cli_tables import completions_table, grouped_by_prompt

SCORE_COLUMNS = ["z_logprob", "z_reward", "pacs", "group_conflict", "kendall_tau", "kendall_distance", "degenerate"]


def assert_scores_match_reference(
    output: pa.Table, logprob: np.ndarray, reward: np.ndarray, prompt_column: str = "prompt"
) -> None:
    """Every score column of ``output`` (in file order) equals the reference on the grouped rows.

    A null (JSON's stand-in for NaN) compares as NaN.
    """
    order, sizes = grouped_by_prompt(output, prompt_column)
    expected = reference.score(logprob[order], reward[order], sizes)
    group_of_sorted_row = np.repeat(np.arange(sizes.shape[0]), sizes)
    for name in SCORE_COLUMNS:
        actual = output[name].to_numpy(zero_copy_only=False)[order]
        wanted = getattr(expected, name)
        if wanted.shape[0] == sizes.shape[0]:  # a per-prompt measure, repeated on each of its rows
            wanted = wanted[group_of_sorted_row]
        np.testing.assert_allclose(actual.astype(np.float64), wanted, rtol=1e-9, atol=1e-9, err_msg=name)


def test_scores_match_reference_when_prompts_are_scattered(tmp_path, completions_file, invoke):
    output = tmp_path / "scored.parquet"
    result = invoke("score", completions_file, "-o", output)
    assert result.exit_code == 0, result.output
    assert "Scored 3,200 rows in 400 prompts" in result.stderr
    table, scored = pq.read_table(completions_file), pq.read_table(output)
    assert scored.column_names == table.column_names + SCORE_COLUMNS
    assert scored.select(table.column_names).equals(table)  # input columns and row order kept
    assert_scores_match_reference(scored, table["logprob"].to_numpy(), table["reward"].to_numpy())
    assert scored["degenerate"].to_numpy().any()


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_prompts_straddling_batches_are_scored_as_one_group(tmp_path, invoke, batch_size):
    source = tmp_path / "adjacent.parquet"
    table = completions_table(40, 5, seed=2, shuffle=False)
    pq.write_table(table, source, row_group_size=13)
    output = tmp_path / "scored.parquet"
    assert invoke("score", source, "-o", output, "--batch-size", batch_size).exit_code == 0
    assert_scores_match_reference(pq.read_table(output), table["logprob"].to_numpy(), table["reward"].to_numpy())


def test_per_token_logprob_lists_are_summed(tmp_path, invoke):
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 6, size=48)
    tokens = [list(-rng.exponential(size=length)) for length in lengths]
    prompts = [f"p{i % 6}" for i in range(48)]
    reward = rng.normal(size=48)
    source = tmp_path / "tokens.parquet"
    pq.write_table(pa.table({"prompt": prompts, "token_logprobs": tokens, "reward": reward}), source)
    output = tmp_path / "scored.parquet"
    result = invoke("score", source, "-o", output, "--logprob-column", "token_logprobs")
    assert result.exit_code == 0, result.output
    sums = np.array([float(np.sum(row)) for row in tokens])
    assert_scores_match_reference(pq.read_table(output), sums, reward)


def test_jsonl_and_csv_in_jsonl_out_with_other_column_names(tmp_path, invoke):
    table = completions_table(30, 4, seed=4).rename_columns(["question", "answer", "lp", "score"])
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    csv = tmp_path / "in.csv"
    pa_csv.write_csv(table, csv)
    columns = ["--prompt-column", "question", "--logprob-column", "lp", "--reward-column", "score"]
    for source in (jsonl, csv):
        output = tmp_path / f"{source.suffix[1:]}-scored.jsonl"
        result = invoke("score", source, "-o", output, *columns)
        assert result.exit_code == 0, result.output
        scored = pa.Table.from_pylist([json.loads(line) for line in output.read_text().splitlines()])
        assert scored["answer"].to_pylist() == table["answer"].to_pylist()
        # JSON has no NaN: the undefined tau of a constant-reward prompt is written as null.
        assert scored["kendall_tau"].null_count > 0
        assert_scores_match_reference(scored, table["lp"].to_numpy(), table["score"].to_numpy(), "question")


def test_rescoring_replaces_the_score_columns(tmp_path, scored_file, invoke):
    output = tmp_path / "rescored.parquet"
    assert invoke("score", scored_file, "-o", output, "-q").exit_code == 0
    original, rescored = pq.read_table(scored_file), pq.read_table(output)
    assert rescored.column_names == original.column_names
    for name in original.column_names:  # assert_array_equal takes NaN as equal to NaN
        np.testing.assert_array_equal(
            rescored[name].to_numpy(zero_copy_only=False), original[name].to_numpy(zero_copy_only=False)
        )


def test_nan_policy_omit_drops_bad_rows(tmp_path, invoke):
    table = completions_table(20, 6, seed=5)
    logprob = table["logprob"].to_numpy().copy()
    reward = table["reward"].to_numpy().copy()
    logprob[[3, 50]] = [np.nan, np.inf]
    reward[7] = -np.inf
    source = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(2, "logprob", pa.array(logprob)).set_column(3, "reward", pa.array(reward)), source)
    output = tmp_path / "scored.parquet"
    result = invoke("score", source, "-o", output, "--nan-policy", "omit")
    assert result.exit_code == 0, result.output
    assert "3 rows with non-finite values omitted" in result.stderr
    keep = np.ones(table.num_rows, dtype=bool)
    keep[[3, 7, 50]] = False
    scored = pq.read_table(output)
    assert scored["completion"].to_pylist() == np.asarray(table["completion"].to_pylist())[keep].tolist()
    assert_scores_match_reference(scored, logprob[keep], reward[keep])


def test_a_million_rows(tmp_path, invoke):
    table = completions_table(125_000, 8, seed=6)
    source = tmp_path / "million.parquet"
    pq.write_table(table, source)
    output = tmp_path / "scored.parquet"
    result = invoke("score", source, "-o", output, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    scored = pq.read_table(output, columns=["prompt", "logprob", "reward", *SCORE_COLUMNS])
    assert scored.num_rows == 1_000_000
    # The Python reference loops over groups: check every row of 300 random prompts.
    chosen = np.random.default_rng(0).choice(125_000, size=300, replace=False)
    sample = scored.filter(pa.compute.is_in(scored["prompt"], pa.array(np.char.add("prompt ", chosen.astype(str)))))
    assert sample.num_rows == 2400
    assert_scores_match_reference(sample, sample["logprob"].to_numpy(), sample["reward"].to_numpy())


def adjacent_prompts_table(seed: int) -> pa.Table:
    """Prompts of 1 to 29 adjacent rows (one of 40 rows, longer than small batches), per-token
    log-prob lists and a few non-finite values, including every row of one prompt."""
    rng = np.random.default_rng(seed)
    sizes = np.append(rng.integers(1, 30, size=30), 40)
    prompt_ids = np.repeat(np.arange(sizes.shape[0]), sizes)
    n = prompt_ids.shape[0]
    tokens = [list(-rng.exponential(size=length)) for length in rng.integers(0, 5, size=n)]
    reward = rng.normal(size=n)
    reward[[5, n // 2]] = [np.nan, np.inf]
    reward[prompt_ids == 3] = np.nan
    return pa.table(
        {
            "prompt": pa.array(np.char.add("prompt ", prompt_ids.astype(str))),
            "completion": pa.array(np.char.add("completion ", np.arange(n).astype(str))),
            "token_logprobs": tokens,
            "reward": reward,
        }
    )


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_grouped_streaming_writes_what_two_passes_write(tmp_path, invoke, batch_size):
    source = tmp_path / "adjacent.parquet"
    pq.write_table(adjacent_prompts_table(seed=7), source, row_group_size=13)
    options = ["--logprob-column", "token_logprobs", "--nan-policy", "omit", "--batch-size", batch_size]
    two_passes, one_pass = tmp_path / "two.parquet", tmp_path / "one.parquet"
    expected = invoke("score", source, "-o", two_passes, *options)
    result = invoke("score", source, "-o", one_pass, *options, "--grouped")
    assert expected.exit_code == 0 and result.exit_code == 0, result.output
    assert result.stderr.replace(str(one_pass), str(two_passes)) == expected.stderr
    streamed, expected_table = pq.read_table(one_pass), pq.read_table(two_passes)
    assert streamed.schema == expected_table.schema
    inputs = expected_table.column_names[: -len(SCORE_COLUMNS)]
    assert streamed.select(inputs).equals(expected_table.select(inputs))
    for name in SCORE_COLUMNS:  # assert_array_equal takes NaN (a degenerate prompt's tau) as equal to NaN
        np.testing.assert_array_equal(streamed[name].to_numpy(), expected_table[name].to_numpy(), err_msg=name)


def test_grouped_nan_error_names_the_file_row(tmp_path, invoke):
    source = tmp_path / "adjacent.parquet"
    pq.write_table(adjacent_prompts_table(seed=7), source)
    options = ["--logprob-column", "token_logprobs", "--batch-size", 3, "--grouped"]
    result = invoke("score", source, "-o", tmp_path / "out.parquet", *options)
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: row 5 (0-based): column 'reward' is missing or nan; "
        "fix the input or pass nan_policy='omit' (--nan-policy omit)\n"
    )


def test_grouped_refuses_scattered_prompts_and_writes_nothing(tmp_path, completions_file, invoke):
    output = tmp_path / "scored.parquet"
    result = invoke("score", completions_file, "-o", output, "--grouped", "--batch-size", 100)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: row ")
    assert "drop --grouped" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [completions_file.name]


# Runs the command line, then prints the process's peak resident memory. VmHWM is the peak of this
# program only: ru_maxrss would include the test process's own peak, inherited through fork and exec.
_PEAK_MEMORY_PROGRAM = """
import atexit, sys
from shfcas_fast.cli import main
atexit.register(lambda: print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))))
sys.argv[0] = "shfcas"
main()
"""


def peak_memory_bytes(arguments: list[str]) -> int:
    """The peak resident memory of ``shfcas ARGUMENTS...`` run in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_PROGRAM, *arguments], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[-2]) * 1024  # "VmHWM:  123456 kB"


def test_grouped_streaming_memory_is_bounded_by_the_batch(tmp_path):
    # Doubling the file barely moves the peak of the one-pass --grouped run (8 bytes per prompt and
    # allocator noise), while the two-pass run holds every row's hashes, values and scores. Growths
    # are compared, not peaks, which both include the interpreter and its imports.
    def peaks(rows: int) -> tuple[int, int]:
        prompt_ids = pa.array(np.repeat(np.arange(rows // 8), 8).astype(np.int32))
        long_prompt = pa.scalar("a prompt long enough to dominate the scored columns " * 4)
        source = tmp_path / f"adjacent_{rows}.parquet"
        prompts = pa.compute.binary_join_element_wise(long_prompt, pa.compute.cast(prompt_ids, pa.string()), "")
        rng = np.random.default_rng(8)
        table = pa.table({"prompt": prompts, "logprob": rng.normal(size=rows), "reward": rng.normal(size=rows)})
        pq.write_table(table, source, row_group_size=65536)
        command = ["score", str(source), "-o", str(tmp_path / "out.parquet"), "-q", "--overwrite"]
        command += ["--batch-size", "65536"]
        return peak_memory_bytes(command), peak_memory_bytes([*command, "--grouped"])

    (two_small, one_small), (two_large, one_large) = peaks(1_000_000), peaks(2_000_000)
    two_passes, one_pass = two_large - two_small, one_large - one_small
    assert one_pass < 0.3 * two_passes, f"peak growth MiB: two passes {two_passes >> 20}, --grouped {one_pass >> 20}"


@pytest.mark.parametrize("grouped", [[], ["--grouped"]])
def test_conversational_prompts(tmp_path, invoke, grouped):
    table = completions_table(20, 4, seed=12, shuffle=not grouped)
    rows = table.to_pylist()
    for row in rows:  # TRL's conversational format
        row["prompt"] = [{"role": "user", "content": row["prompt"]}]
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "scored.parquet"
    result = invoke("score", source, "-o", output, *grouped)
    assert result.exit_code == 0, result.output
    scored = pq.read_table(output)
    assert scored["prompt"].to_pylist() == [row["prompt"] for row in rows]
    by_text = scored.set_column(0, "prompt", table["prompt"])
    assert_scores_match_reference(by_text, table["logprob"].to_numpy(), table["reward"].to_numpy())
