"""FileOracle: human labels are never lost, never asked twice, and survive concurrent annotators."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shfcas_fast.loop.oracles import FileOracle, LabelsPending, label_key


def _read(path, file_format):
    if file_format == "parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write(path, rows, file_format):
    """Save the way most tools do: write a copy beside the file, then rename it over."""
    copy = path.with_name(path.name + ".saving")
    if file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), copy)
    else:
        copy.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    copy.replace(path)


def _pending(oracle, prompts, completions):
    with pytest.raises(LabelsPending) as pending:
        oracle.score(prompts, completions)
    return pending.value.missing


# --- labels.jsonl: a complete last line is a label, a torn one is kept aside ---------------------------


def test_a_last_label_without_its_final_newline_is_kept_by_the_next_record(tmp_path):
    oracle = FileOracle(tmp_path)
    expected = {}
    for completion, score in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        oracle.record("p ", completion, score)
        expected[label_key("p ", completion)] = score
    # An editor saved the file without its final newline.
    oracle.label_file.write_bytes(oracle.label_file.read_bytes().rstrip(b"\n"))
    assert oracle.labels() == expected

    oracle.record("p ", "d", 4.0)
    expected[label_key("p ", "d")] = 4.0
    assert oracle.labels() == expected
    assert not (tmp_path / "labels.jsonl.torn").exists()


def test_a_torn_last_label_is_moved_aside_not_deleted(tmp_path):
    oracle = FileOracle(tmp_path)
    oracle.record("p ", "a", 1.0)
    # A crash in the middle of a write, cut inside a two-byte UTF-8 character.
    torn = '{"key": "k", "prompt": "caf\u00e9'.encode()[:-1]
    with oracle.label_file.open("ab") as handle:
        handle.write(torn)
    assert oracle.labels() == {label_key("p ", "a"): 1.0}

    with pytest.warns(UserWarning, match=r"labels\.jsonl\.torn"):
        oracle.record("p ", "b", 2.0)
    assert oracle.labels() == {label_key("p ", "a"): 1.0, label_key("p ", "b"): 2.0}
    assert (tmp_path / "labels.jsonl.torn").read_bytes() == torn + b"\n"
    assert oracle.label_file.read_bytes().endswith(b"\n")


def test_a_label_line_that_parses_but_is_no_label_is_refused_by_line(tmp_path):
    oracle = FileOracle(tmp_path)
    oracle.record("p ", "a", 1.0)
    with oracle.label_file.open("a") as handle:
        handle.write('{"key": "k"}\n')
    with pytest.raises(ValueError, match=r"labels\.jsonl:2: .*'score'"):
        oracle.labels()


# --- labels are keyed by the request's id, not by the text sent back -----------------------------------


@pytest.mark.parametrize("file_format", ["jsonl", "parquet"])
def test_a_label_whose_text_the_tool_trimmed_is_not_asked_again_after_a_restart(tmp_path, file_format):
    prompts, completions = ["q  ", "q  "], ["a ", "b\n"]
    assert _pending(FileOracle(tmp_path, file_format=file_format), prompts, completions) == 2

    request_file = FileOracle(tmp_path, file_format=file_format).request_file
    rows = _read(request_file, file_format)
    for row, score in zip(rows, [0.25, 0.75]):
        row["prompt"], row["completion"], row["score"] = row["prompt"].strip(), row["completion"].strip(), score
    _write(request_file, rows, file_format)
    expected = {(r["key"]): r["score"] for r in rows}
    reference = [expected[label_key(p, c)] for p, c in zip(prompts, completions)]

    np.testing.assert_array_equal(FileOracle(tmp_path, file_format=file_format).score(prompts, completions), reference)
    # A restarted process finds every label under the key it asked with.
    restarted = FileOracle(tmp_path, file_format=file_format)
    assert restarted.labels() == expected
    np.testing.assert_array_equal(restarted.score(prompts, completions), reference)


def test_a_label_file_of_the_previous_version_is_read_as_it_is(tmp_path):
    # The previous version wrote one JSON object per line, keyed by label_key of the asked text.
    line = {"key": label_key("q ", "a"), "prompt": "q ", "completion": "a", "score": 1.5}
    (tmp_path / "labels.jsonl").write_text(json.dumps(line) + "\n")
    np.testing.assert_array_equal(FileOracle(tmp_path).score(["q "], ["a"]), [1.5])


# --- the request file is never rewritten under an annotator ---------------------------------------------


@pytest.mark.parametrize("file_format", ["jsonl", "parquet"])
def test_partial_labels_are_stored_and_the_rest_stay_requested(tmp_path, file_format):
    oracle = FileOracle(tmp_path, file_format=file_format)
    prompts, completions = ["p1 ", "p1 ", "p2 ", "p2 "], ["a", "b", "a", "b"]
    assert _pending(oracle, prompts, completions) == 4

    rows = _read(oracle.request_file, file_format)
    scores = {row["key"]: float(number) for number, row in enumerate(rows)}
    rows[0]["score"], rows[2]["score"] = scores[rows[0]["key"]], scores[rows[2]["key"]]
    _write(oracle.request_file, rows, file_format)
    before = oracle.request_file.read_bytes()
    assert _pending(oracle, prompts, completions) == 2
    assert oracle.labels() == {rows[0]["key"]: scores[rows[0]["key"]], rows[2]["key"]: scores[rows[2]["key"]]}
    # Nothing was requested anew, so the annotators' file was not touched.
    assert oracle.request_file.read_bytes() == before

    for row in rows:
        row["score"] = scores[row["key"]]
    _write(oracle.request_file, rows, file_format)
    reference = [scores[label_key(p, c)] for p, c in zip(prompts, completions)]
    np.testing.assert_array_equal(oracle.score(prompts, completions), reference)
    # Every row carries a stored label: the request file is done with, and a rerun asks nothing.
    assert not oracle.request_file.exists()
    np.testing.assert_array_equal(FileOracle(tmp_path, file_format=file_format).score(prompts, completions), reference)


def test_new_requests_are_appended_after_what_annotators_wrote(tmp_path):
    oracle = FileOracle(tmp_path)
    assert _pending(oracle, ["q "], ["a"]) == 1
    rows = _read(oracle.request_file, "jsonl")
    rows[0]["score"], rows[0]["note"] = 1.0, "checked twice"
    # Saved without a final newline, with a column of the tool's own.
    oracle.request_file.write_text(json.dumps(rows[0]))
    saved = oracle.request_file.read_bytes()

    assert _pending(oracle, ["q ", "q "], ["a", "b"]) == 1
    data = oracle.request_file.read_bytes()
    assert data.startswith(saved + b"\n")
    assert [row["key"] for row in _read(oracle.request_file, "jsonl")] == [label_key("q ", "a"), label_key("q ", "b")]
    assert oracle.labels() == {label_key("q ", "a"): 1.0}


def test_a_request_file_being_saved_gets_no_appended_requests(tmp_path):
    oracle = FileOracle(tmp_path)
    assert _pending(oracle, ["q "], ["a"]) == 1
    half_saved = oracle.request_file.read_bytes()[:20]
    oracle.request_file.write_bytes(half_saved)
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert _pending(oracle, ["q "], ["a"]) == 1
    assert oracle.request_file.read_bytes() == half_saved


_ANNOTATOR = textwrap.dedent(
    """
    import fcntl, json, os, sys, time
    request_file, lock_file, file_format, save = sys.argv[1:5]
    if file_format == "parquet":
        import pyarrow as pa, pyarrow.parquet as pq
    print("ready", flush=True)

    def read():
        try:
            if file_format == "parquet":
                return pq.read_table(request_file).to_pylist()
            with open(request_file, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle]
        except FileNotFoundError:  # every row labelled and stored: the oracle removed the file
            return []

    def write(rows, path):
        if file_format == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(row) + "\\n" for row in rows))

    given, asked_again = {}, set()
    while True:
        lock = open(lock_file, "a") if save == "in-place-locked" else None
        if lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read()
        asked_again.update(row["key"] for row in rows if row["score"] is None and row["key"] in given)
        todo = [row for row in rows if row["score"] is None and row["key"] not in given]
        if not todo:
            break
        # One label per save, like a person working through the file.
        todo[0]["score"] = given[todo[0]["key"]] = float(len(given))
        if save == "in-place-locked":
            write(rows, request_file)
        else:
            write(rows, request_file + ".saving")
            os.replace(request_file + ".saving", request_file)
        if lock:
            lock.close()
        time.sleep(0.002)
    print(json.dumps({"given": given, "asked_again": sorted(asked_again)}))
    """
)


@pytest.mark.parametrize(
    ("file_format", "save"), [("jsonl", "rename"), ("jsonl", "in-place-locked"), ("parquet", "rename")]
)
def test_no_label_is_lost_or_asked_again_while_score_polls_during_annotation(tmp_path, file_format, save):
    oracle = FileOracle(tmp_path, file_format=file_format)
    count = 24 if file_format == "jsonl" else 8  # Parquet saves are slower
    prompts = [f"p{i // 4} " for i in range(count)]
    completions = [f"c{i % 4}" for i in range(count)]
    assert _pending(oracle, prompts, completions) == count
    annotator = subprocess.Popen(
        [sys.executable, "-c", _ANNOTATOR, str(oracle.request_file), str(tmp_path / "requests.lock"), file_format,
         save],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert annotator.stdout is not None and annotator.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 20
        polls = 0
        while annotator.poll() is None and time.monotonic() < deadline:
            try:
                oracle.score(prompts, completions)
            except LabelsPending:
                pass
            polls += 1
        output, _ = annotator.communicate(timeout=10)
    finally:
        annotator.kill()
    seen = json.loads(output)
    given = seen["given"]
    assert len(given) == count and polls > 1
    # No completion the annotator labelled ever came back to it unlabelled.
    assert seen["asked_again"] == []
    reference = [given[label_key(p, c)] for p, c in zip(prompts, completions)]
    np.testing.assert_array_equal(oracle.score(prompts, completions), reference)
    assert oracle.labels() == given


def test_parquet_requests_keep_what_annotators_saved_when_new_ones_are_added(tmp_path):
    oracle = FileOracle(tmp_path, file_format="parquet")
    assert _pending(oracle, ["q "], ["a"]) == 1
    rows = _read(oracle.request_file, "parquet")
    rows[0]["note"] = "unsure"
    _write(oracle.request_file, rows, "parquet")

    assert _pending(oracle, ["q ", "q "], ["a", "b"]) == 2
    rows = _read(oracle.request_file, "parquet")
    expected = [(label_key("q ", "a"), "unsure"), (label_key("q ", "b"), None)]
    assert [(row["key"], row["note"]) for row in rows] == expected


def test_a_parquet_save_during_the_update_wins_and_the_update_waits(tmp_path, monkeypatch):
    from shfcas_fast.loop import oracles

    oracle = FileOracle(tmp_path, file_format="parquet")
    assert _pending(oracle, ["q "], ["a"]) == 1
    labelled = _read(oracle.request_file, "parquet")
    labelled[0]["score"] = 1.0
    write_table = oracles.pq.write_table

    def save_meanwhile(table, where):
        # A tool that ignores requests.lock saves its label while the oracle writes its update.
        write_table(pa.Table.from_pylist(labelled), tmp_path / "saving.parquet")
        (tmp_path / "saving.parquet").replace(oracle.request_file)
        write_table(table, where)

    monkeypatch.setattr(oracles.pq, "write_table", save_meanwhile)
    with pytest.warns(UserWarning, match="changed while new requests were being added"):
        assert _pending(oracle, ["q ", "q "], ["a", "b"]) == 2
    monkeypatch.setattr(oracles.pq, "write_table", write_table)
    assert _read(oracle.request_file, "parquet") == labelled
    assert not list(tmp_path.glob(".*.tmp"))

    assert _pending(oracle, ["q ", "q "], ["a", "b"]) == 1
    assert oracle.labels() == {label_key("q ", "a"): 1.0}
    assert [row["key"] for row in _read(oracle.request_file, "parquet")] == [label_key("q ", "a"), label_key("q ", "b")]


def test_score_waits_for_a_tool_holding_the_lock_and_then_gives_up_naming_it(tmp_path):
    import fcntl

    oracle = FileOracle(tmp_path, lock_timeout=0.2)
    with (tmp_path / "requests.lock").open("a") as tool:
        fcntl.flock(tool, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match=r"requests\.lock"):
            oracle.score(["q "], ["a"])
        with pytest.raises(TimeoutError, match=r"requests\.lock"):
            oracle.record("q ", "a", 1.0)
    assert oracle.labels() == {}
    assert _pending(oracle, ["q "], ["a"]) == 1
    with pytest.raises(ValueError, match="lock_timeout"):
        FileOracle(tmp_path, lock_timeout=0)


def test_a_request_whose_key_a_tool_dropped_is_refused_naming_its_row(tmp_path):
    oracle = FileOracle(tmp_path)
    assert _pending(oracle, ["q ", "q "], ["a", "b"]) == 2
    rows = _read(oracle.request_file, "jsonl")
    del rows[1]["key"]
    rows[1]["score"] = 1.0
    _write(oracle.request_file, rows, "jsonl")
    with pytest.raises(ValueError, match=r"requests\.jsonl: row 2: a request needs its 'key'"):
        oracle.score(["q ", "q "], ["a", "b"])
    assert oracle.labels() == {}
