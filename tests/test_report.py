"""shfcas_fast.report.report_folder: a report replaces only its own files, and never an input."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shfcas_fast.errors import ShfcasValueError
from shfcas_fast.report import PLOT_FILES, REPORT_FILES, report_folder


def report_into(folder, page="md"):
    """The files write_report writes (drawing real plots would only make the tests slow)."""
    for name in [*PLOT_FILES, "summary.json", f"report.{page}"]:
        (folder / name).write_text(page)


def test_a_new_report_folder_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with report_folder(tmp_path / "report") as folder:
            report_into(folder)
    finally:
        os.umask(previous)
    assert (tmp_path / "report").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "report" / "summary.json").stat().st_mode & 0o777 == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]


def test_overwrite_replaces_only_the_report_files(tmp_path):
    report = tmp_path / "report"
    with report_folder(report) as folder:
        report_into(folder, page="md")
    report.chmod(0o750)
    inode = report.stat().st_ino
    with pytest.raises(FileExistsError, match="already exists"), report_folder(report):
        pass
    with report_folder(report, overwrite=True, inputs=[tmp_path / "scored.parquet"]) as folder:
        report_into(folder, page="html")
    assert sorted(path.name for path in report.iterdir()) == sorted([*PLOT_FILES, "summary.json", "report.html"])
    assert (report / "summary.json").read_text() == "html"
    assert report.stat().st_ino == inode and report.stat().st_mode & 0o777 == 0o750
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]


def test_overwrite_refuses_a_folder_holding_the_input(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    scored = report / "scored.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), scored)
    for overwrite in (False, True):
        with pytest.raises(ShfcasValueError, match=f"{report} holds the input {scored}"):
            with report_folder(report, overwrite=overwrite, inputs=[scored]):
                pytest.fail("the block must not run")
    # Named as a glob or as the folder of shards it belongs to.
    for source in (str(report / "*.parquet"), report):
        with pytest.raises(ShfcasValueError, match="holds the input"):
            with report_folder(report, overwrite=True, inputs=[source]):
                pass
    assert sorted(path.name for path in report.iterdir()) == ["scored.parquet"]


def test_overwrite_refuses_files_a_report_does_not_write(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    for name in ("notes.txt", "summary.json", "z_scatter.png", ".keep"):
        (report / name).write_text("mine")
    with pytest.raises(ShfcasValueError, match=r"holds files a report does not write \(\.keep, notes\.txt\)"):
        with report_folder(report, overwrite=True):
            pass
    assert (report / "notes.txt").read_text() == "mine" and (report / "summary.json").read_text() == "mine"
    assert set(REPORT_FILES) >= {"summary.json", "z_scatter.png"}


def test_a_failed_report_leaves_the_previous_one(tmp_path):
    report = tmp_path / "report"
    with report_folder(report) as folder:
        (folder / "summary.json").write_text("previous")
    with pytest.raises(KeyboardInterrupt), report_folder(report, overwrite=True) as folder:
        (folder / "summary.json").write_text("half-written")
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), report_folder(tmp_path / "new") as folder:
        raise RuntimeError("failed")
    assert (report / "summary.json").read_text() == "previous"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report"]


def test_concurrent_new_reports_exactly_one_wins(tmp_path):
    report = tmp_path / "report"
    ready = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def write(index):
        try:
            with report_folder(report) as folder:
                (folder / "summary.json").write_text(str(index))
                ready.wait(timeout=30)
        except FileExistsError as err:
            outcomes[index] = err
        else:
            outcomes[index] = "won"

    threads = [threading.Thread(target=write, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(str, outcomes)) == sorted([f"{report} already exists", "won"])
    assert (report / "summary.json").read_text() == str(outcomes.index("won"))
