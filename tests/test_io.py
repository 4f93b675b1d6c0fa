"""shfcas_fast.io: data sets of shards in every input kind, and outputs that are safe to write."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from shfcas_fast import io
from shfcas_fast.errors import ShfcasValueError

# Rows of three prompts; prompt "b" is split between the first two shards.
SHARDS = [
    {"prompt": ["a", "a", "b"], "logprob": [-1.0, -2.0, -3.0], "reward": [1, 2, 3]},
    {"prompt": ["b", "b", "c"], "logprob": [-4.0, -5.0, -6.0], "reward": [0.5, 1.5, 2.5]},
    {"prompt": ["c"], "logprob": [-7.0], "reward": [4]},
]


def expected_rows(columns=("prompt", "logprob", "reward")) -> dict[str, list]:
    """The shards' rows one after the other, rewards as floats (integers in some shards, floats in one)."""
    rows = {name: [value for shard in SHARDS for value in shard[name]] for name in columns}
    if "reward" in rows:
        rows["reward"] = [float(value) for value in rows["reward"]]
    return rows


def write_jsonl(path: Path, rows: dict[str, list], compression: str | None = None) -> Path:
    records = [dict(zip(rows, values)) for values in zip(*rows.values())]
    text = "".join(json.dumps(record) + "\n" for record in records).encode()
    with pa.output_stream(str(path), compression=compression) as stream:
        stream.write(text)
    return path


def write_csv(path: Path, rows: dict[str, list], compression: str | None = None) -> Path:
    with pa.output_stream(str(path), compression=compression) as stream:
        pa_csv.write_csv(pa.table(rows), stream)
    return path


def hidden_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


# --- data sets ---------------------------------------------------------------------------------------


@pytest.fixture
def parquet_shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    (folder / "tail").mkdir(parents=True)
    for index, shard in enumerate(SHARDS):
        # The last shard sits one folder down ("tail" sorts after "part-1.parquet").
        name = f"part-{index}.parquet" if index < 2 else "tail/part-2.parquet"
        pq.write_table(pa.table(shard), folder / name)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-0.parquet.crc").write_text("checksum")
    return folder


def test_folder_of_shards_reads_as_one_table(parquet_shards):
    assert io.input_format(parquet_shards) == "parquet"
    assert io.read_schema(parquet_shards).field("reward").type == pa.float64()
    assert io.count_rows(parquet_shards) == 7
    assert io.read_table(parquet_shards).to_pydict() == expected_rows()
    batches = list(io.iter_batches(parquet_shards, ["reward", "prompt"], batch_size=2))
    assert [batch.schema.names for batch in batches] == [["reward", "prompt"]] * len(batches)
    assert pa.Table.from_batches(batches).to_pydict() == expected_rows(["reward", "prompt"])


def test_glob_selects_shards_in_path_order(parquet_shards):
    pattern = str(parquet_shards / "**" / "part-*.parquet")
    assert io.source_files(pattern) == [
        parquet_shards / "part-0.parquet",
        parquet_shards / "part-1.parquet",
        parquet_shards / "tail" / "part-2.parquet",
    ]
    assert io.read_table(str(parquet_shards / "part-[01].parquet"), ["prompt"])["prompt"].to_pylist() == [
        "a", "a", "b", "b", "b", "c"
    ]


def test_shards_missing_a_column_read_it_as_nulls(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"], "reward": [1.0]}), tmp_path / "0.parquet")
    pq.write_table(pa.table({"prompt": ["b"], "reward": [2.0], "note": ["kept"]}), tmp_path / "1.parquet")
    assert io.read_table(tmp_path).to_pydict() == {"prompt": ["a", "b"], "reward": [1.0, 2.0], "note": [None, "kept"]}
    assert io.read_table(tmp_path, ["note"]).to_pydict() == {"note": [None, "kept"]}


@pytest.mark.parametrize(
    ("suffix", "compression"),
    [(".jsonl.gz", "gzip"), (".jsonl.zst", "zstd"), (".csv.gz", "gzip"), (".csv.zst", "zstd"), (".csv.bz2", "bz2")],
)
def test_compressed_text_shards(tmp_path, suffix, compression):
    write = write_jsonl if suffix.startswith(".jsonl") else write_csv
    for index, shard in enumerate(SHARDS):
        write(tmp_path / f"part-{index}{suffix}", shard, compression)
    assert io.input_format(tmp_path) == suffix.split(".")[1]
    assert io.count_rows(tmp_path) is None
    assert io.read_table(tmp_path).to_pydict() == expected_rows()
    assert io.read_table(tmp_path / f"part-1{suffix}", ["logprob"]).to_pydict() == {"logprob": SHARDS[1]["logprob"]}


def test_save_to_disk_folder_in_shard_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = expected_rows()
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"), num_shards=3)
    assert sorted(path.suffix for path in (tmp_path / "saved").iterdir()).count(".arrow") == 3
    assert io.input_format(tmp_path / "saved") == "arrow"
    assert io.count_rows(tmp_path / "saved") == 7
    assert io.read_table(tmp_path / "saved").to_pydict() == rows
    batches = list(io.iter_batches(tmp_path / "saved", ["logprob"], batch_size=2))
    assert max(batch.num_rows for batch in batches) == 2
    assert pa.Table.from_batches(batches)["logprob"].to_pylist() == rows["logprob"]


def test_dataset_dict_folder_is_refused_naming_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict(expected_rows())
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ShfcasValueError, match="DatasetDict .*test, train.*pass one split's folder"):
        io.read_schema(tmp_path / "saved")
    assert io.read_table(tmp_path / "saved" / "train").num_rows == 7


def test_unsupported_inputs_name_the_path(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table(SHARDS[0]), mixed / "a.parquet")
    write_jsonl(mixed / "b.jsonl", SHARDS[1])
    with pytest.raises(ShfcasValueError, match=r"mixes formats: parquet .*a\.parquet.*, jsonl"):
        io.read_schema(mixed)

    readme = tmp_path / "with-readme"
    readme.mkdir()
    pq.write_table(pa.table(SHARDS[0]), readme / "a.parquet")
    (readme / "README.md").write_text("about")
    with pytest.raises(ShfcasValueError, match=r"holds .*README\.md, which is not a table file"):
        io.iter_batches(readme).__next__()
    assert io.read_table(str(readme / "*.parquet")).num_rows == 3

    with pytest.raises(ShfcasValueError, match=r"x\.parquet\.gz: parquet files cannot be read compressed"):
        io.read_schema(tmp_path / "x.parquet.gz")
    with pytest.raises(ShfcasValueError, match="unknown file type '.txt'"):
        io.read_schema(tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match=r"absent-folder does not exist"):
        io.read_schema(tmp_path / "absent-folder")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        io.read_schema(str(tmp_path / "nothing-*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShfcasValueError, match="holds no table files"):
        io.read_schema(tmp_path / "empty")


def test_incompatible_shards_name_the_file(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"], "reward": [1.0]}), tmp_path / "0.parquet")
    pq.write_table(pa.table({"prompt": ["b"], "reward": ["good"]}), tmp_path / "1.parquet")
    with pytest.raises(ShfcasValueError, match=r"columns of .*1\.parquet do not match .*0\.parquet"):
        io.read_table(tmp_path)


def test_conversational_prompts_key_across_shards(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    question = {"role": "user", "content": "Wie spät ist es?"}
    # The second shard's messages carry a field the first lacks, so their struct types differ.
    write_jsonl(tmp_path / "0.jsonl", {"prompt": [[system, question], [question]], "reward": [1.0, 2.0]})
    named = {"content": "Wie spät ist es?", "role": "user", "name": None}
    other = {"role": "user", "content": "Why?", "name": "bob"}
    write_jsonl(tmp_path / "1.jsonl", {"prompt": [[system, named], [other]], "reward": [3.0, 4.0]})

    prompts = io.read_table(tmp_path, ["prompt"])["prompt"]
    assert io.is_conversational(prompts.type) and not io.is_conversational(pa.string())
    keys = io.prompt_keys(prompts).to_pylist()
    assert keys[0] == keys[2] and len(set(keys)) == 3
    # A key is the JSON of the messages themselves, without their missing fields.
    assert [json.loads(key) for key in keys] == [[system, question], [question], [system, question], [other]]
    assert keys[1] == '[{"content":"Wie spät ist es?","role":"user"}]'
    strings = pa.array(["a", None])
    assert io.prompt_keys(strings) is strings
    assert io.prompt_keys(pa.array([None, [question]])).to_pylist()[0] is None


def reference_key(messages):
    """json.dumps of the messages without their null fields, keys sorted, compact, non-ASCII kept."""
    def without_nulls(value):
        if isinstance(value, dict):
            return {key: without_nulls(item) for key, item in value.items() if item is not None}
        return [without_nulls(item) for item in value] if isinstance(value, list) else value

    return json.dumps(without_nulls(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("content_type", [pa.string(), pa.large_string()])
def test_prompt_keys_escape_like_json(content_type):
    texts = [
        'say "hi"', "back\\slash", "new\nline\ttab\rcr", "nul\x00 bell\x07 \x1f del\x7f",
        "ünï 🙂 \u2028", "", 'a"b',
    ]
    answer = {"role": "assistant", "content": None, "name": "x"}
    conversations = [[{"role": "user", "content": text, "name": None}, answer] for text in texts]
    conversations += [None, [], [None], [{"role": None, "content": None, "name": None}]]
    message = pa.struct([("role", pa.string()), ("content", content_type), ("name", pa.string())])
    column = pa.array(conversations, type=pa.list_(message))
    for rows in (column, column.slice(2, 8), pa.chunked_array([column.slice(0, 3), column.slice(3)])):
        expected = [None if row is None else reference_key(row) for row in rows.to_pylist()]
        assert io.prompt_keys(rows).to_pylist() == expected


def test_prompt_keys_of_multimodal_messages():
    parts = [{"type": "text", "text": "Describe"}, {"type": "image", "text": None}]
    column = pa.array([[{"role": "user", "content": parts}], [{"role": "user", "content": parts[:1]}]])
    assert io.is_conversational(column.type)
    assert io.prompt_keys(column).to_pylist() == [reference_key(row) for row in column.to_pylist()]


# --- reading errors ----------------------------------------------------------------------------------


def test_csv_over_16_mib_with_newlines_in_values(tmp_path):
    rows = 6000
    # Values of ~3 KiB, each with many newlines, so that a 16 MiB block boundary falls inside one.
    paragraph = "line of a long completion\n" * 120
    completions = [f"{index}: {paragraph}" for index in range(rows)]
    reward = np.arange(rows, dtype=np.float64) / 7
    prompts = [f"p{index // 8}" for index in range(rows)]
    path = write_csv(tmp_path / "long.csv", {"prompt": prompts, "completion": completions, "reward": reward})
    assert path.stat().st_size > 17 << 20
    table = io.read_table(path, ["completion", "reward"])
    assert table["completion"].to_pylist() == completions
    np.testing.assert_array_equal(table["reward"].to_numpy(), reward)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_invalid_utf8_is_refused_naming_the_row(tmp_path, fmt):
    if fmt == "jsonl":
        lines = [b'{"prompt": "a", "reward": 1}', b'{"prompt": "b", "reward": 2}', b'{"prompt": "c\xff", "reward": 3}']
    else:
        lines = [b"prompt,reward", b"a,1", b"b,2", b"c\xff,3"]
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ShfcasValueError, match=rf"bad\.{fmt}: row 2 \(0-based\) has invalid UTF-8 in column 'prompt'"):
        io.read_table(path)


def test_corrupt_parquet_names_the_file(tmp_path):
    pq.write_table(pa.table(SHARDS[0]), tmp_path / "0.parquet")
    pq.write_table(pa.table({"prompt": [f"prompt {index}" for index in range(20_000)]}), tmp_path / "1.parquet")
    data = bytearray((tmp_path / "1.parquet").read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = b"\x07" * 200  # a data page, not the footer
    (tmp_path / "1.parquet").write_bytes(bytes(data))
    with pytest.raises(ShfcasValueError, match=r"cannot read .*1\.parquet: "):
        list(io.iter_batches(tmp_path / "1.parquet", ["prompt"]))
    (tmp_path / "2.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ShfcasValueError, match=r"cannot read .*2\.parquet: .*Parquet"):
        io.read_schema(tmp_path)


# --- outputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_concurrent_writers_without_overwrite_exactly_one_wins(tmp_path, directory):
    path = tmp_path / ("report" if directory else "out.jsonl")
    writers = 4
    ready = threading.Barrier(writers)
    outcomes: list[object] = [None] * writers

    def write(index: int) -> None:
        try:
            with io.atomic_output(path, directory=directory) as temporary:
                target = temporary / "summary.json" if directory else temporary
                target.write_text(f"writer {index}\n")
                ready.wait(timeout=30)  # every writer has passed the early existence check
        except FileExistsError as err:
            outcomes[index] = err
        else:
            outcomes[index] = "won"

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [index for index, outcome in enumerate(outcomes) if outcome == "won"]
    assert len(winners) == 1, outcomes
    losers = [outcome for outcome in outcomes if outcome != "won"]
    assert all(isinstance(err, FileExistsError) and str(err) == f"{path} already exists" for err in losers)
    written = path / "summary.json" if directory else path
    assert written.read_text() == f"writer {winners[0]}\n"
    assert hidden_files(tmp_path) == []


def test_publishing_without_hard_links_still_refuses_to_replace(tmp_path, monkeypatch):
    def no_hard_links(source, destination):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    io.write_table(tmp_path / "first.jsonl", pa.table({"x": [1]}))
    assert io.read_table(tmp_path / "first.jsonl").to_pydict() == {"x": [1]}
    path = tmp_path / "out.jsonl"
    with pytest.raises(FileExistsError, match="already exists"), io.atomic_output(path) as temporary:
        temporary.write_text("mine")
        path.write_text("written meanwhile by another process")
    assert path.read_text() == "written meanwhile by another process"
    assert hidden_files(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        io.write_table(tmp_path / "out.parquet", pa.table({"x": [1]}))
        with io.atomic_output(tmp_path / "folder", directory=True):
            pass
        io.write_table(tmp_path / "out.parquet", pa.table({"x": [2]}), overwrite=True)
        with io.atomic_output(tmp_path / "labels.jsonl", durable=True) as temporary:
            temporary.write_text("{}\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "labels.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_file_output_over_a_folder_is_refused(tmp_path):
    (tmp_path / "out.parquet").mkdir()
    with pytest.raises(ShfcasValueError, match="exists and is not a file"):
        io.check_output(tmp_path / "out.parquet", overwrite=True)


# Opens an output, writes to its temporary file, says so, then waits to be killed.
_WRITER = """
import signal, sys, time
from shfcas_fast import io
with io.atomic_output(sys.argv[1]) as temporary:
    temporary.write_bytes(b"partial output" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def start_writer(path: Path) -> subprocess.Popen:
    package_root = Path(io.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"writing\n", writer.stderr.read() if writer.stderr else ""
    return writer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ending_signals_remove_the_temporary(tmp_path, signum):
    path = tmp_path / "out.parquet"
    writer = start_writer(path)
    assert len(hidden_files(tmp_path)) == 1
    writer.send_signal(signum)
    assert writer.wait(timeout=30) == -signum
    assert list(tmp_path.iterdir()) == []


def test_the_next_writer_removes_a_killed_writers_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    killed = start_writer(path)
    running = start_writer(path)
    try:
        killed.kill()
        killed.wait(timeout=30)
        stale = [name for name in hidden_files(tmp_path) if f".{killed.pid}." in name]
        live = [name for name in hidden_files(tmp_path) if f".{running.pid}." in name]
        assert len(stale) == 1 and len(live) == 1
        with pytest.warns(io.StaleTemporaryWarning, match=rf"removed .*{stale[0]}, left by process {killed.pid}"):
            io.write_table(path, pa.table({"x": [1]}))
        assert hidden_files(tmp_path) == live  # a running writer's temporary is left alone
        assert io.read_table(path).to_pydict() == {"x": [1]}
    finally:
        running.kill()
        running.wait(timeout=30)


def test_a_folder_moved_aside_by_a_killed_writer_is_restored(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(finished.stdout)
    path = tmp_path / "report"
    host = io._outputs._host()
    retired = tmp_path / f".report.{host}.{gone}.0123456789abcdef.old"
    retired.mkdir()
    (retired / "summary.json").write_text("{}")
    with pytest.warns(io.StaleTemporaryWarning, match="restored"):
        notes = io.remove_stale_temporaries(path)
    assert len(notes) == 1 and (path / "summary.json").read_text() == "{}"
    assert hidden_files(tmp_path) == []
