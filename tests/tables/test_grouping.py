"""Grouping by key: the streaming groups' 8-byte-per-prompt hash set against a Python set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

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
