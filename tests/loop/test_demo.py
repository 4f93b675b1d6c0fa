"""The demo command end to end in its fast configuration (one seed)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shfcas_fast.cli import app


def test_demo_fast_writes_results_and_plots(tmp_path):
    result = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--seeds", "1", "--fast", "--budget", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["aggregate"]) == {"base", "none", "random", "pacs"}
    assert [len(c) for c in report["selected_categories"].values()] == [1, 1, 1]
    assert report["selected_categories"]["none"] == [[]]
    assert [len(c) for c in (report["selected_categories"][a][0] for a in ("random", "pacs"))] == [2, 2]
    assert (tmp_path / "overall.png").exists() and (tmp_path / "per_category_gold.png").exists()
    assert "pacs" in result.output
