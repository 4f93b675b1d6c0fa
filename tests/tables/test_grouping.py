"""Grouping by key: the streaming groups' 8-byte-per-prompt hash set against a Python set, and
scoring grouped rows on every path against the contiguous engine on sorted rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import shfcas_fast
from shfcas_fast.tables import grouping


@pytest.mark.parametrize("max_run", [4, 64, 1 << 20])
def test_hash_set_matches_a_python_set(monkeypatch, max_run):
    monkeypatch.setattr(grouping._HashSet, "_MAX_RUN", max_run)
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, size=3000, dtype=np.int64).view(np.uint64)
    hashes = np.unique(hashes)[rng.permutation(np.unique(hashes).shape[0])]
    packed, seen = grouping._HashSet(), set()
    for start in range(0, hashes.shape[0], 37):
        probe = np.concatenate([hashes[start : start + 37], hashes[rng.integers(0, hashes.shape[0], size=20)]])
        np.testing.assert_array_equal(packed.contains(probe), [int(h) in seen for h in probe])
        packed.add(hashes[start : start + 37])
        seen.update(int(h) for h in hashes[start : start + 37])
    assert packed.nbytes == 8 * len(seen)


def test_streaming_groups_hold_8_bytes_per_prompt():
    groups = grouping.AdjacentGroups("prompt")
    keys = np.char.add("prompt ", np.repeat(np.arange(50_000), 3).astype(str))
    sizes = [groups.add(pa.array(keys[start : start + 1000])) for start in range(0, keys.shape[0], 1000)]
    sizes.append(groups.finish())
    assert np.concatenate(sizes).tolist() == [3] * 50_000
    assert groups._closed.nbytes == 8 * 50_000


def test_group_rows_numbers_groups_by_first_appearance():
    keys = pa.chunked_array([["b", "a"], ["b", "c", "a"]])
    groups = grouping.group_rows(keys, "prompt")
    assert groups.ids.tolist() == [0, 1, 0, 2, 1]
    assert groups.sizes.tolist() == [2, 2, 1] and groups.first_rows.tolist() == [0, 1, 3]
    assert groups.contiguous(np.arange(5)).tolist() == [0, 2, 1, 4, 3]


@pytest.mark.parametrize(
    "layout",
    ["empty", "contiguous", "runs, a prompt back later", "scattered", "scattered over chunks"],
)
def test_score_rows_scores_in_row_order_on_every_path(layout):
    # score_rows picks one of three paths (contiguous runs, runs that come back, scattered keys);
    # each must give the contiguous engine's scores of the rows sorted by a dict-made grouping.
    rng = np.random.default_rng(5)
    prompts = {
        "empty": [],
        "contiguous": np.repeat(np.arange(300), 6),
        "runs, a prompt back later": np.concatenate([np.repeat(np.arange(200), 5), np.repeat(np.arange(0, 200, 7), 4)]),
        "scattered": rng.integers(0, 250, size=1500),
        "scattered over chunks": rng.integers(0, 250, size=1500),
    }[layout]
    strings = [f"prompt {p}" for p in np.asarray(prompts).tolist()]
    chunks = [strings[:700], strings[700:]] if "chunks" in layout else [strings]
    keys = pa.chunked_array(chunks, pa.string())
    logprob, reward = rng.normal(size=len(strings)), rng.normal(size=len(strings))

    scores, prompt_ids = grouping.score_rows(keys, logprob, reward, "prompt")

    numbers: dict[str, int] = {}
    expected_ids = np.array([numbers.setdefault(key, len(numbers)) for key in strings], dtype=np.int64)
    order = np.argsort(expected_ids, kind="stable")
    expected = shfcas_fast.score(logprob[order], reward[order], np.bincount(expected_ids, minlength=len(numbers)))
    np.testing.assert_array_equal(prompt_ids, expected_ids)
    np.testing.assert_array_equal(scores.group_sizes, expected.group_sizes)
    for name in ("group_conflict", "kendall_tau", "degenerate"):
        np.testing.assert_array_equal(getattr(scores, name), getattr(expected, name), err_msg=name)
    for name in ("pacs", "z_logprob", "z_reward"):
        np.testing.assert_array_equal(getattr(scores, name)[order], getattr(expected, name), err_msg=name)
