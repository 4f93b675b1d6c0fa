"""A report on scored prompts and a selection: ``summary.json``, a Markdown or HTML page and PNG plots.

Example:
```python
>>> import pathlib, tempfile
>>> import numpy as np, shfcas_fast
>>> from shfcas_fast.report import write_report
>>> rng = np.random.default_rng(0)
>>> scores = shfcas_fast.score(rng.normal(size=800), rng.normal(size=800), 8)
>>> selected = shfcas_fast.select(scores, budget=10)
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> summary = write_report(folder, scores, np.full(100, 8), selected, strategy="pacs", budget=10)
>>> summary["counts"]["selected_prompts"], sorted(path.name for path in folder.iterdir())[:2]
(10, ['conflict_histogram.png', 'report.md'])

```

Plots are drawn with matplotlib's Agg canvas directly (no pyplot), so nothing needs a display.
:func:`report_folder` gives a report its own folder, or replaces the report in one, safely.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import platform
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import _core, io
from .errors import ShfcasValueError
from .scoring import DEFAULT_KENDALL_THRESHOLD, ConflictScores, Strategy, default_threshold, strategy_measure

__all__ = ["versions", "selection_cut", "summarize", "write_report", "report_folder", "PLOT_FILES", "REPORT_FILES"]

#: The plots :func:`write_report` draws, by file name, with their captions.
PLOT_FILES = {
    "conflict_histogram.png": "Prompt conflict, with the selection cut",
    "z_scatter.png": "z_reward against z_logprob, by selection",
    "tau_distribution.png": "Per-prompt Kendall tau-b, all prompts and selected ones",
}
#: Every file :func:`write_report` may write (the page is ``report.md`` or ``report.html``).
REPORT_FILES = ("summary.json", "report.md", "report.html", *PLOT_FILES)
# Drawing millions of points adds nothing to a scatter plot but time.
_MAX_SCATTER_POINTS = 20_000
_CONFLICT_LEVELS = (1.0, 1.5)  # the paper's two thresholds on mean |PACS|
_TITLE = "SHF-CAS conflict report"


def versions() -> dict[str, Any]:
    """Versions of Python, this package and its dependencies, and the Rust core's build."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for package in ("shfcas-fast", "numpy", "pyarrow", "matplotlib"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["core_build"] = dict(_core.build_info())
    return found


def selection_cut(
    scores: ConflictScores, selected: np.ndarray, strategy: Strategy, budget: int | None, threshold: float | None
) -> float | None:
    """The value above which prompts were selected, or ``None`` where there is none (random).

    That is the threshold (the strategy's default when neither a budget nor a threshold was given),
    except when a budget was filled: then the lowest selected value is where the budget cut.
    """
    default = default_threshold(strategy)
    if default is None:  # random
        return None
    if budget is None:
        return float(default if threshold is None else threshold)
    if selected.size and (threshold is None or selected.size == budget):
        _, values = strategy_measure(scores, strategy)
        return float(values[selected].min())
    return None if threshold is None else float(threshold)


def _statistics(values: np.ndarray) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
    return {
        "count": int(finite.size),
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "p90": float(np.quantile(finite, 0.9)),
        "max": float(finite.max()),
    }


def summarize(
    scores: ConflictScores,
    group_sizes: np.ndarray,
    selected: np.ndarray,
    *,
    strategy: Strategy,
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    source: str | None = None,
) -> dict[str, Any]:
    """The contents of ``summary.json``: counts, thresholds, the selection's settings and statistics."""
    eligible = ~scores.degenerate
    return {
        "source": source,
        "counts": {
            "rows": scores.num_items,
            "prompts": scores.num_groups,
            "degenerate_prompts": int(np.count_nonzero(scores.degenerate)),
            "selected_prompts": int(selected.size),
            "selected_rows": int(np.asarray(group_sizes)[selected].sum()),
        },
        "thresholds": {
            **{
                f"prompts_with_group_conflict_above_{level}": int(
                    np.count_nonzero(scores.group_conflict[eligible] > level)
                )
                for level in _CONFLICT_LEVELS
            },
            f"prompts_with_kendall_distance_above_{DEFAULT_KENDALL_THRESHOLD}": int(
                np.count_nonzero(scores.kendall_distance[eligible] > DEFAULT_KENDALL_THRESHOLD)
            ),
        },
        "selection": {
            "strategy": strategy,
            "budget": budget,
            "threshold": threshold,
            "cut": selection_cut(scores, selected, strategy, budget, threshold),
            "seed": seed,
        },
        "statistics": {
            "group_conflict": _statistics(scores.group_conflict[eligible]),
            "selected_group_conflict": _statistics(scores.group_conflict[selected]),
            "kendall_tau": _statistics(scores.kendall_tau[eligible]),
            "selected_kendall_tau": _statistics(scores.kendall_tau[selected]),
        },
        "versions": versions(),
    }


def _new_plot(width: float, height: float) -> tuple[Any, Any]:
    """A figure with one set of axes, on matplotlib's Agg canvas (no display needed)."""
    # Imported here: matplotlib takes a quarter of a second to import, and only reports need it.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _plot_conflict(
    path: Path, scores: ConflictScores, selected_mask: np.ndarray, strategy: Strategy, cut: float | None
) -> None:
    name, values = strategy_measure(scores, strategy)
    eligible = ~scores.degenerate
    figure, axes = _new_plot(7, 4.2)
    bins = np.histogram_bin_edges(values[eligible], bins=60).tolist() if eligible.any() else 10
    axes.hist(
        [values[eligible & ~selected_mask], values[selected_mask]],
        bins=bins,
        stacked=True,
        color=["#9aa5b1", "#d1495b"],
        label=["not selected", "selected"],
    )
    if cut is not None:
        axes.axvline(cut, color="black", linestyle="--", linewidth=1.2, label=f"cut = {cut:.3g}")
    axes.set(xlabel=name, ylabel="prompts", title=f"{name} of non-degenerate prompts ({strategy} selection)")
    axes.legend()
    figure.savefig(path, dpi=110)


def _plot_scatter(path: Path, scores: ConflictScores, row_selected: np.ndarray, seed: int) -> None:
    rows = np.arange(scores.num_items)
    if rows.size > _MAX_SCATTER_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, _MAX_SCATTER_POINTS, replace=False))
    chosen = row_selected[rows]
    figure, axes = _new_plot(5.6, 5.2)
    for mask, colour, label in ((~chosen, "#9aa5b1", "not selected"), (chosen, "#d1495b", "selected")):
        axes.scatter(
            scores.z_logprob[rows[mask]], scores.z_reward[rows[mask]], s=4, alpha=0.5, color=colour, label=label
        )
    axes.axline((0, 0), slope=1, color="black", linewidth=0.8, linestyle=":", label="PACS = 0")
    sampled = f" ({rows.size:,} of {scores.num_items:,} completions)" if rows.size < scores.num_items else ""
    axes.set(xlabel="z_logprob (policy)", ylabel="z_reward (proxy)", title=f"Completions{sampled}")
    axes.legend(markerscale=3)
    figure.savefig(path, dpi=110)


def _plot_tau(path: Path, scores: ConflictScores, selected_mask: np.ndarray) -> None:
    tau = scores.kendall_tau
    defined = np.isfinite(tau)
    figure, axes = _new_plot(7, 4.2)
    # Bins centred on the values tau takes for 8 completions without ties (steps of 1/14).
    bins = np.linspace(-1.0 - 1 / 28, 1.0 + 1 / 28, 30).tolist()
    axes.hist(tau[defined], bins=bins, color="#9aa5b1", label="all prompts")
    axes.hist(tau[defined & selected_mask], bins=bins, color="#d1495b", label="selected")
    axes.set(xlabel="Kendall tau-b (log-prob vs reward)", ylabel="prompts", title="Per-prompt rank agreement")
    axes.legend()
    figure.savefig(path, dpi=110)


def _tables(summary: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The page's tables as ``(title, header, rows)``, shared by the Markdown and HTML pages."""
    tables = [
        (
            section.capitalize(),
            ["", ""],
            [[key.replace("_", " "), _format(value)] for key, value in summary[section].items()],
        )
        for section in ("counts", "thresholds", "selection")
    ]
    statistics = [
        [name.replace("_", " "), *map(_format, stats.values())] for name, stats in summary["statistics"].items()
    ]
    tables.append(("Statistics", ["", "count", "mean", "median", "p90", "max"], statistics))
    build = {key: value for key, value in summary["versions"].items() if key != "core_build"}
    tables.append(("Versions", ["", ""], [[key, _format(value)] for key, value in build.items()]))
    return tables


def _markdown(summary: Mapping[str, Any]) -> str:
    lines = [f"# {_TITLE}", ""]
    if summary["source"]:
        lines += [f"Source: `{summary['source']}`", ""]
    for title, header, rows in _tables(summary):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    for file, caption in PLOT_FILES.items():
        lines += [f"## {caption}", "", f"![{caption}]({file})", ""]
    return "\n".join(lines)


def _html(summary: Mapping[str, Any]) -> str:
    parts = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{_TITLE}</title></head><body>',
        f"<h1>{_TITLE}</h1>",
    ]
    if summary["source"]:
        parts.append(f"<p>Source: <code>{html.escape(summary['source'])}</code></p>")
    for title, header, rows in _tables(summary):
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        parts.append(f"<h2>{title}</h2><table><tr>{head}</tr>{body}</table>")
    for file, caption in PLOT_FILES.items():
        parts.append(f'<h2>{html.escape(caption)}</h2><img src="{file}" alt="{html.escape(caption)}">')
    parts.append("</body></html>")
    return "\n".join(parts)


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(
    directory: str | Path,
    scores: ConflictScores,
    group_sizes: np.ndarray,
    selected: np.ndarray,
    *,
    strategy: Strategy,
    budget: int | None = None,
    threshold: float | None = None,
    seed: int = 0,
    source: str | None = None,
    page: str = "md",
) -> dict[str, Any]:
    """Write ``summary.json``, ``report.md`` (or ``report.html``) and the PNG plots into ``directory``.

    Args:
        directory: an existing folder.
        scores: scores of contiguous groups, as from :func:`shfcas_fast.score`.
        group_sizes: completions per group, ``[g]``.
        selected: indices of the selected groups, as from :func:`shfcas_fast.select`.
        strategy, budget, threshold, seed: the settings ``selected`` came from.
        source: where the scores came from, for the record.
        page: ``"md"`` or ``"html"``.

    Returns:
        The summary written to ``summary.json``.
    """
    if page not in ("md", "html"):
        raise ValueError(f'page must be "md" or "html", got {page!r}')
    directory = Path(directory)
    selected = np.asarray(selected, dtype=np.int64)
    summary = summarize(
        scores, group_sizes, selected, strategy=strategy, budget=budget, threshold=threshold, seed=seed, source=source
    )
    selected_mask = np.zeros(scores.num_groups, dtype=bool)
    selected_mask[selected] = True
    row_selected = np.repeat(selected_mask, np.asarray(group_sizes, dtype=np.int64))
    _plot_conflict(directory / "conflict_histogram.png", scores, selected_mask, strategy, summary["selection"]["cut"])
    _plot_scatter(directory / "z_scatter.png", scores, row_selected, seed)
    _plot_tau(directory / "tau_distribution.png", scores, selected_mask)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    text = _markdown(summary) if page == "md" else _html(summary)
    (directory / f"report.{page}").write_text(text, encoding="utf-8")
    return summary


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_replaceable(folder: Path, inputs: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse a report folder that holds an input or files a report does not write."""
    if not folder.is_dir():
        raise ShfcasValueError(f"{folder} is not a folder; name a folder for the report")
    for source in inputs:
        try:
            files = io.source_files(source)
        except (OSError, ValueError):  # an input that cannot be listed is not in the folder
            files = []
        inside = [file for file in [Path(source), *files] if file.exists() and _inside(file, folder)]
        if inside:
            raise ShfcasValueError(f"{folder} holds the input {inside[0]}; choose another folder for the report")
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in REPORT_FILES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ShfcasValueError(
            f"{folder} holds files a report does not write ({shown}); remove them or choose another folder"
        )


@contextlib.contextmanager
def report_folder(
    path: str | os.PathLike[str], *, overwrite: bool = False, inputs: Sequence[str | os.PathLike[str]] = ()
) -> Iterator[Path]:
    """Yield an empty temporary folder for :func:`write_report`; its files become the report at ``path``.

    Example:
    ```python
    >>> import pathlib, tempfile
    >>> from shfcas_fast.report import report_folder
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "report"
    >>> with report_folder(path) as folder:
    ...     _ = (folder / "summary.json").write_text("{}")
    >>> [file.name for file in path.iterdir()]
    ['summary.json']

    ```

    A new ``path`` appears whole when the block succeeds, and not at all when it fails. An existing
    ``path`` is only touched with ``overwrite``, and only when it holds nothing but report files
    (:data:`REPORT_FILES`) and none of ``inputs`` (data sets, as :mod:`shfcas_fast.io` reads them):
    then each written file replaces its namesake, and report files the new report did not write (the
    other page format) are removed; the folder itself and its permissions stay. The checks run
    before the block, so that a refused folder fails before any input is read, and again before the
    files move in.
    """
    path = Path(path)
    if path.exists():
        _check_replaceable(path, inputs)
    if not path.exists() or not overwrite:
        with io.atomic_output(path, directory=True) as folder:
            yield folder
        return
    with io.temporary_path(path, directory=True) as folder:
        yield folder
        _check_replaceable(path, inputs)
        written = {file.name for file in folder.iterdir()}
        for name in sorted(written):
            os.replace(folder / name, path / name)
        for name in set(REPORT_FILES) - written:
            (path / name).unlink(missing_ok=True)
