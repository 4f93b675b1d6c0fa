"""``shfcas report``: summary.json against the reference scores, the page and readable PNG plots."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import reference
from cli_tables import grouped_by_prompt
from matplotlib.image import imread
from shfcas_fast.report import PLOT_FILES


@pytest.fixture
def reference_scores(completions_file):
    table = pq.read_table(completions_file)
    order, sizes = grouped_by_prompt(table)
    return reference.score(table["logprob"].to_numpy()[order], table["reward"].to_numpy()[order], sizes)


@pytest.mark.parametrize("page", ["md", "html"])
def test_report_contents(tmp_path, scored_file, reference_scores, invoke, page):
    folder = tmp_path / "report"
    result = invoke("report", scored_file, "-o", folder, "--budget", "40", "--page", page)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in folder.iterdir()) == sorted([*PLOT_FILES, "summary.json", f"report.{page}"])

    summary = json.loads((folder / "summary.json").read_text())
    eligible = ~reference_scores.degenerate
    conflict = reference_scores.group_conflict
    assert summary["counts"] == {
        "rows": 3200,
        "prompts": 400,
        "degenerate_prompts": int(np.count_nonzero(reference_scores.degenerate)),
        "selected_prompts": 40,
        "selected_rows": 320,
    }
    assert summary["thresholds"] == {
        "prompts_with_group_conflict_above_1.0": int(np.count_nonzero(conflict[eligible] > 1.0)),
        "prompts_with_group_conflict_above_1.5": int(np.count_nonzero(conflict[eligible] > 1.5)),
        "prompts_with_kendall_distance_above_0.5": int(
            np.count_nonzero(reference_scores.kendall_distance[eligible] > 0.5)
        ),
    }
    top = reference.top_k(np.where(eligible, conflict, np.nan), 40)
    assert summary["selection"] == {
        "strategy": "pacs",
        "budget": 40,
        "threshold": None,
        "cut": pytest.approx(conflict[top].min(), rel=1e-12),
        "seed": 0,
    }
    assert summary["statistics"]["selected_group_conflict"]["mean"] == pytest.approx(conflict[top].mean(), rel=1e-12)
    assert summary["versions"]["numpy"] == np.__version__

    text = (folder / f"report.{page}").read_text()
    assert "SHF-CAS conflict report" in text and str(scored_file) in text
    for name in PLOT_FILES:
        assert name in text
        image = imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


def test_default_threshold_is_the_cut(tmp_path, scored_file, invoke):
    folder = tmp_path / "report"
    assert invoke("report", scored_file, "-o", folder, "--strategy", "kendall", "-q").exit_code == 0
    assert json.loads((folder / "summary.json").read_text())["selection"]["cut"] == 0.5


def test_overwrite_replaces_only_a_report(tmp_path, scored_file, invoke):
    folder = tmp_path / "report"
    assert invoke("report", scored_file, "-o", folder, "--page", "html", "-q").exit_code == 0
    result = invoke("report", scored_file, "-o", folder)
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert invoke("report", scored_file, "-o", folder, "--overwrite", "-q").exit_code == 0
    assert (folder / "report.md").exists() and not (folder / "report.html").exists()
    (folder / "notes.txt").write_text("mine")
    result = invoke("report", scored_file, "-o", folder, "--overwrite")
    assert result.exit_code == 1 and "notes.txt" in result.stderr and result.stderr.count("\n") == 1
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "summary.json").exists()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_a_folder_holding_the_input_is_refused(tmp_path, scored_file, invoke):
    result = invoke("report", scored_file, "-o", scored_file.parent, "--overwrite")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "holds" in result.stderr and result.stderr.count("\n") == 1
    assert scored_file.exists()
