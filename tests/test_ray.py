"""Scoring and selection on Ray Data equal the single-process engine on a sharded data set."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import shfcas_fast  # noqa: E402
from shfcas_fast import ShfcasValueError  # noqa: E402
from shfcas_fast import ray as shfcas_ray  # noqa: E402
from shfcas_fast.tables import score_file  # noqa: E402

NUM_SHARDS = 3
PER_PROMPT = ("group_conflict", "kendall_tau", "kendall_distance")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """Completions of 120 prompts, 1 to 12 each, rows shuffled so that prompts span the shards.

    Prompt ``p0`` has one completion and ``p1`` a constant reward (both degenerate); ``p2``..``p5``
    repeat the values of ``p6``..``p9``, so that their scores tie.
    """
    rng = np.random.default_rng(7)
    sizes = rng.integers(2, 13, size=120)
    sizes[0] = 1
    sizes[2:6] = sizes[6:10]
    prompts = np.repeat([f"prompt {i}" for i in range(120)], sizes)
    logprob, reward = rng.normal(size=prompts.shape[0]) * 3 - 20, rng.normal(size=prompts.shape[0])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    reward[offsets[1] : offsets[2]] = 0.5
    for copy, original in zip(range(2, 6), range(6, 10), strict=True):
        logprob[offsets[copy] : offsets[copy + 1]] = logprob[offsets[original] : offsets[original + 1]]
        reward[offsets[copy] : offsets[copy + 1]] = reward[offsets[original] : offsets[original + 1]]
    order = rng.permutation(prompts.shape[0])
    return pa.table(
        {
            "prompt": prompts[order],
            "completion": [f"completion {i}" for i in range(prompts.shape[0])],
            "logprob": logprob[order],
            "reward": reward[order],
        }
    )


@pytest.fixture(scope="module")
def shards(table, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("shards")
    bounds = np.linspace(0, table.num_rows, NUM_SHARDS + 1).astype(int)
    paths = []
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        path = folder / f"part-{shard}.parquet"
        pq.write_table(table.slice(start, stop - start), path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def reference(table, tmp_path_factory) -> pa.Table:
    """``shfcas score`` on the whole table in one process."""
    folder = tmp_path_factory.mktemp("reference")
    pq.write_table(table, folder / "all.parquet")
    score_file(folder / "all.parquet", folder / "scored.parquet")
    return pq.read_table(folder / "scored.parquet")


def _read(paths: list[str]) -> ray.data.Dataset:
    return ray.data.read_parquet(paths, override_num_blocks=len(paths))


def _collect(ds: ray.data.Dataset) -> pa.Table:
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def _assert_same_columns(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.column_names == expected.column_names
    for name in expected.column_names:
        got, want = actual[name].to_numpy(), expected[name].to_numpy()
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got, want, err_msg=name)  # bit for bit; NaN where NaN
        else:
            assert got.tolist() == want.tolist(), name


def _reference_selection(reference: pa.Table, **rule) -> list[str]:
    """Prompts chosen by the engine's select on the single-process scores, in selection order."""
    prompts = reference["prompt"].to_numpy(zero_copy_only=False)
    _, first_rows, sizes = np.unique(prompts, return_index=True, return_counts=True)
    appearance = np.argsort(first_rows)  # prompts in order of first appearance, as the engine groups them
    first_rows = first_rows[appearance]
    scores = shfcas_fast.scoring.PromptScores(
        **{name: reference[name].to_numpy()[first_rows] for name in PER_PROMPT},
        degenerate=reference["degenerate"].to_numpy(zero_copy_only=False)[first_rows],
        group_sizes=sizes[appearance],
    )
    return prompts[first_rows][shfcas_fast.select(scores, **rule)].tolist()


def _selected_prompts(selected: pa.Table) -> list[str]:
    ranks = selected["selection_rank"].to_numpy()
    prompts = selected["prompt"].to_numpy(zero_copy_only=False)
    return [prompts[ranks == rank][0] for rank in range(int(ranks.max()) + 1)] if len(ranks) else []


def _assert_rows_of(selected: pa.Table, reference: pa.Table, prompts: list[str]) -> None:
    """``selected`` holds exactly the rows of ``prompts``, in input order, with their prompt's scores."""
    chosen = pa.array(prompts)
    expected = reference.filter(pa.compute.is_in(reference["prompt"], value_set=chosen))
    names = ["prompt", "completion", "logprob", "reward", "group_conflict", "kendall_tau", "kendall_distance"]
    _assert_same_columns(selected.select(names), expected.select(names))
    rank = {prompt: position for position, prompt in enumerate(prompts)}
    assert selected["selection_rank"].to_pylist() == [rank[p] for p in selected["prompt"].to_pylist()]


def test_score_dataset_equals_single_process(shards, reference):
    scored = _collect(shfcas_ray.score_dataset(_read(shards), num_partitions=3))
    _assert_same_columns(scored, reference)


def test_select_dataset_equals_single_process_with_ties(shards, reference):
    # "prompt 2" has the values of "prompt 6": a budget that ends between them keeps the one seen first.
    ranking = _reference_selection(reference, strategy="pacs", budget=120)
    budget = min(ranking.index("prompt 2"), ranking.index("prompt 6")) + 1
    assert {ranking[budget - 1], ranking[budget]} == {"prompt 2", "prompt 6"}
    expected = ranking[:budget]
    selected = _collect(shfcas_ray.select_dataset(_read(shards), strategy="pacs", budget=budget, num_partitions=2))
    assert _selected_prompts(selected) == expected
    _assert_rows_of(selected, reference, expected)


@pytest.mark.slow  # each Ray shuffle costs seconds: CI runs these in a step of their own
def test_kendall_threshold_selection_equals_single_process(shards, reference):
    expected = _reference_selection(reference, strategy="kendall", threshold=0.6)
    selected = _collect(shfcas_ray.select_dataset(_read(shards), strategy="kendall", threshold=0.6))
    assert len(expected) > 3
    assert _selected_prompts(selected) == expected
    _assert_rows_of(selected, reference, expected)


@pytest.mark.slow  # each Ray shuffle costs seconds: CI runs these in a step of their own
def test_random_selection_depends_only_on_the_prompts_and_the_seed(shards, reference):
    first = _collect(shfcas_ray.select_dataset(_read(shards), strategy="random", budget=10, seed=3, num_partitions=3))
    again = _collect(
        shfcas_ray.select_dataset(_read(shards[::-1]), strategy="random", budget=10, seed=3, num_partitions=1)
    )
    assert sorted(set(first["prompt"].to_pylist())) == sorted(set(again["prompt"].to_pylist()))
    # The definition, transcribed: the 10 non-degenerate prompts with the smallest SplitMix64 of
    # (SipHash of the prompt) xor (SplitMix64 of the seed).
    import pandas as pd

    prompts = np.unique(reference["prompt"].to_numpy(zero_copy_only=False))
    degenerate = set(reference.filter(reference["degenerate"])["prompt"].to_pylist())
    hashes = pd.util.hash_array(prompts.astype(object), hash_key="shfcas-fast-key0", categorize=False)

    def splitmix(value: int) -> int:
        mask = (1 << 64) - 1
        z = (value + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    draws = {prompt: splitmix(int(h) ^ splitmix(3)) for prompt, h in zip(prompts, hashes, strict=True)}
    expected = sorted((p for p in prompts if p not in degenerate), key=draws.__getitem__)[:10]
    assert sorted(set(first["prompt"].to_pylist())) == sorted(expected)
    _assert_rows_of(first, reference, _selected_prompts(first))


@pytest.mark.slow  # each Ray shuffle costs seconds: CI runs these in a step of their own
def test_prompts_sharing_a_hash_are_told_apart(shards, reference):
    # Three bits of hash: 120 prompts share 8 hash values, within blocks and across them.
    columns = shfcas_ray._Columns("prompt", "logprob", "reward", hash_bits=3)
    scored = _collect(shfcas_ray._scored(_read(shards), columns, num_partitions=2))
    _assert_same_columns(scored, reference)
    rule = shfcas_ray._SelectionRule(strategy="pacs", budget=9, threshold=None, seed=0)
    selected = _collect(shfcas_ray._selected(_read(shards), columns, rule, num_partitions=2))
    expected = _reference_selection(reference, strategy="pacs", budget=9)
    assert _selected_prompts(selected) == expected
    _assert_rows_of(selected, reference, expected)


def test_bad_arguments_fail_before_running(shards):
    with pytest.raises(ShfcasValueError, match="reward_column"):
        shfcas_ray.score_dataset(_read(shards), reward_column="cost")
    with pytest.raises(ShfcasValueError, match="random"):
        shfcas_ray.select_dataset(_read(shards), strategy="random")
    with pytest.raises(ShfcasValueError, match="strategy"):
        shfcas_ray.select_dataset(_read(shards), strategy="loudest")


def test_a_non_finite_value_names_its_row():
    table = pa.table({"prompt": ["a", "a", "b"], "logprob": [0.0, 1.0, np.nan], "reward": [1.0, 2.0, 3.0]})
    ds = ray.data.from_arrow(table)
    with pytest.raises(ShfcasValueError, match=r"row 2 \(0-based\): column 'logprob'"):
        shfcas_ray.score_dataset(ds)


def test_policy_logprobs_on_cpu_actors(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "tiny-gpt2")
    rng = np.random.default_rng(1)
    rows = [
        {"prompt_ids": rng.integers(1, 50, size=p).tolist(), "completion_ids": rng.integers(1, 50, size=c).tolist()}
        for p, c in zip(rng.integers(1, 6, size=10), rng.integers(1, 8, size=10), strict=True)
    ]
    ds = ray.data.from_items(rows, override_num_blocks=2)
    result = _collect(shfcas_ray.add_policy_logprobs(ds, str(tmp_path / "tiny-gpt2"), num_gpus=0, batch_size=4))

    # Reference: the plain logits of each sequence alone, log-softmax, summed over the completion.
    expected = {}
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
            logits = model(ids).logits[0].double().log_softmax(-1)
            start = len(row["prompt_ids"])
            tokens = ids[0, start:]
            expected[tuple(ids[0].tolist())] = float(logits[start - 1 : -1].gather(1, tokens[:, None]).sum())
    got = {
        tuple(p + c): value
        for p, c, value in zip(
            result["prompt_ids"].to_pylist(),
            result["completion_ids"].to_pylist(),
            result["logprob"].to_pylist(),
            strict=True,
        )
    }
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # each Ray shuffle costs seconds: CI runs these in a step of their own
def test_integer_prompts_and_per_token_logprobs_equal_single_process(tmp_path):
    rng = np.random.default_rng(3)
    prompts = rng.integers(0, 6, size=40)
    tokens = [rng.normal(size=rng.integers(0, 5)).tolist() for _ in range(40)]
    table = pa.table({"prompt": prompts, "logprob": tokens, "reward": rng.normal(size=40)})
    pq.write_table(table, tmp_path / "in.parquet")
    score_file(tmp_path / "in.parquet", tmp_path / "scored.parquet")
    scored = _collect(shfcas_ray.score_dataset(ray.data.from_arrow([table.slice(0, 15), table.slice(15)])))
    expected = pq.read_table(tmp_path / "scored.parquet")
    _assert_same_columns(scored.drop_columns(["logprob"]), expected.drop_columns(["logprob"]))


@pytest.mark.slow  # each Ray shuffle costs seconds: CI runs these in a step of their own
def test_a_selection_of_no_prompt_is_empty(shards):
    assert shfcas_ray.select_dataset(_read(shards), threshold=100.0).count() == 0


def test_the_command_line_on_ray_equals_the_local_engine(shards, reference, tmp_path):
    from typer.testing import CliRunner

    from shfcas_fast.cli import app

    runner = CliRunner()
    folder = os.path.dirname(shards[0])  # the shards as one data set
    scored = tmp_path / "scored.parquet"
    result = runner.invoke(app, ["score", folder, "-o", str(scored), "--engine", "ray", "-q"])
    assert result.exit_code == 0, result.output
    _assert_same_columns(pq.read_table(scored), reference)

    on_ray, local = tmp_path / "ray.parquet", tmp_path / "local.parquet"
    for output, engine in ((on_ray, "ray"), (local, "local")):
        result = runner.invoke(app, ["select", str(scored), "-o", str(output), "--budget", "7", "--engine", engine, "-q"])
        assert result.exit_code == 0, result.output
    names = ["prompt", "completion", "selection_rank"]
    assert pq.read_table(on_ray).select(names).equals(pq.read_table(local).select(names))

    refused = runner.invoke(app, ["score", folder, "-o", str(tmp_path / "x.parquet"), "--engine", "ray", "--grouped"])
    assert refused.exit_code == 1
    assert "--grouped is not supported with --engine ray" in refused.stderr
