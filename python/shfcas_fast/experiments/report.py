"""Gates, paired comparisons and the written report of the SHF-CAS experiment.

Example:
```python
>>> from shfcas_fast.experiments.report import ENDPOINTS
>>> ENDPOINTS
('gold', 'rm_agreement')

```

The gates say whether the testbed can tell a good selection from a bad one at all; they are checked and
printed before any comparison, and a failed gate is stated plainly:

- labelling the whole pool beats no feedback (policy gold, paired 95% bootstrap interval above 0);
- the gold-guided selection (an upper bound that reads the labels) beats random selection (same test);
- at most 5% of the runs of any arm collapse (more than half of the held-out answers degenerate);
- the proxy's harm is visible: refining against the proxy (no feedback) gains less gold over the base
  policy in the categories its data did not cover than in those it did (paired interval below 0); the
  absolute change in the uncovered categories is reported beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..loop.run_directory import write_text_atomic
from ..loop.synthetic import CATEGORIES, PROXY_BLIND_CATEGORIES
from .harness import coverage_of
from .settings import ExperimentSettings
from .statistics import holm, paired_difference

__all__ = ["ENDPOINTS", "MAX_COLLAPSE_RATE", "summarise", "render_markdown", "write_report"]

#: The two primary endpoints: held-out policy gold, and the retrained reward model's agreement with gold.
ENDPOINTS = ("gold", "rm_agreement")
ENDPOINT_TITLES = {"gold": "policy gold", "rm_agreement": "reward-model agreement with gold"}
MAX_COLLAPSE_RATE = 0.05
#: The arm SHF-CAS is compared with, and SHF-CAS itself.
CONTROL, TREATMENT = "random", "pacs"
ARM_TITLES = {
    "base": "base policy (before refinement)",
    "none": "no feedback (proxy as it is)",
    "retrain": "retrain only (no new labels)",
    "random": "random selection",
    "pacs": "SHF-CAS, top mean |PACS| (budget)",
    "kendall": "Kendall distance (budget)",
    "threshold": "paper's rule, mean |PACS| > 1.0",
    "threshold_random": "random, as many as the paper's rule",
    "gold": "gold-guided (upper bound)",
    "pool": "whole pool labelled",
    "rso": "RSO, proxy-ranked pairs",
    "rso_random": "RSO after random feedback",
}


def _rows(rows: Sequence[dict], variant: str, arm: str, budget: int | None = None, rounds: int = 1) -> list[dict]:
    found = [
        row for row in rows
        if row["variant"] == variant and row["arm"] == arm and row["rounds"] == rounds
        and (budget is None or row["budget"] == budget)
    ]
    return sorted(found, key=lambda row: row["seed"])


def _values(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([np.nan if row[key] is None else row[key] for row in rows], dtype=np.float64)


def _paired(rows: Sequence[dict], variant: str, treatment: str, control: str, key: str, budget: int,
            rounds: int = 1) -> dict[str, Any] | None:
    a, b = _rows(rows, variant, treatment, budget, rounds), _rows(rows, variant, control, budget, rounds)
    if len(a) < 2 or [row["seed"] for row in a] != [row["seed"] for row in b]:
        return None
    return paired_difference(_values(a, key), _values(b, key)).to_dict()


def _category_gold(rows: Sequence[dict], categories: Sequence[str]) -> np.ndarray:
    return np.array([np.mean([row["gold_by_category"][c] for c in categories]) for row in rows])


def _gates(rows: Sequence[dict], variant: str, budget: int) -> list[dict[str, Any]]:
    gates = []
    for name, treatment, control in (("whole pool beats no feedback", "pool", "none"),
                                     ("gold-guided beats random", "gold", "random")):
        difference = _paired(rows, variant, treatment, control, "gold", budget)
        gates.append({
            "gate": name, "variant": variant, "comparison": f"{treatment} - {control}, policy gold",
            "difference": difference, "passed": bool(difference is not None and difference["bootstrap_ci"][0] > 0),
        })
    # The proxy's harm: refining against it gains less gold (or loses it) where its data did not look than
    # where it did. Measured as a difference of gains over the base policy, because refinement also
    # improves what every category shares (answer length, safe words).
    base, none = _rows(rows, variant, "base", budget), _rows(rows, variant, "none", budget)
    covered = [c for c in CATEGORIES if c not in PROXY_BLIND_CATEGORIES]
    harm = absolute = None
    if len(base) >= 2 and [row["seed"] for row in base] == [row["seed"] for row in none]:
        blind_gain = _category_gold(none, PROXY_BLIND_CATEGORIES) - _category_gold(base, PROXY_BLIND_CATEGORIES)
        covered_gain = _category_gold(none, covered) - _category_gold(base, covered)
        harm = paired_difference(blind_gain, covered_gain).to_dict()
        absolute = paired_difference(blind_gain, np.zeros_like(blind_gain)).to_dict()
    gates.append({
        "gate": "proxy harm visible", "variant": variant,
        "comparison": "no-feedback gain over the base policy, proxy-blind minus proxy-covered categories",
        "difference": harm, "absolute_loss": absolute,
        "passed": bool(harm is not None and harm["bootstrap_ci"][1] < 0),
    })
    arms = sorted({row["arm"] for row in rows if row["variant"] == variant and row["arm"] != "base"})
    rates = {arm: float(np.mean([row["collapsed"] for row in rows if row["variant"] == variant and row["arm"] == arm]))
             for arm in arms}
    worst = max(rates, key=lambda arm: rates[arm])
    gates.append({
        "gate": f"collapse <= {MAX_COLLAPSE_RATE:.0%} of runs in every arm", "variant": variant,
        "comparison": f"worst arm: {worst}", "collapse_rates": rates, "passed": rates[worst] <= MAX_COLLAPSE_RATE,
    })
    return gates


def _aggregate(rows: Sequence[dict]) -> dict[str, Any]:
    def mean_std(key: str) -> dict[str, float] | None:
        values = _values(rows, key)
        values = values[~np.isnan(values)]
        if not values.size:
            return None
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if values.size > 1 else 0.0}

    coverage = [group for row in rows for group in row["selected_coverage"]]
    return {
        "seeds": len(rows),
        **{key: mean_std(key) for key in ("gold", "proxy_blind_gold", "rm_agreement", "best_of_n_gold",
                                          "conflict_vs_gold", "degenerate_prompt_share",
                                          "degenerate_completion_share", "selected", "gold_precision")},
        "collapse_rate": float(np.mean([row["collapsed"] for row in rows])),
        "gold_by_category": {c: float(np.mean([row["gold_by_category"][c] for row in rows])) for c in CATEGORIES},
        "coverage": {group: coverage.count(group) / len(coverage) for group in dict.fromkeys(map(coverage_of, CATEGORIES))}
        if coverage else None,
    }


def summarise(rows: Sequence[dict], settings: ExperimentSettings) -> dict[str, Any]:
    """Everything the report states: gates, per-arm aggregates, paired comparisons with random selection
    (Holm over the two primary endpoints for SHF-CAS - random), the budget curve and the multi-round variant."""
    budget = settings.budget
    summary: dict[str, Any] = {"settings": settings.to_dict(), "settings_hash": settings.settings_hash(), "variants": {}}
    for variant in settings.variants:
        arms = list(dict.fromkeys(row["arm"] for row in rows if row["variant"] == variant and row["rounds"] == 1))
        aggregates = {arm: _aggregate(_rows(rows, variant, arm, budget)) for arm in arms}
        comparisons: dict[str, dict[str, Any]] = {}
        for arm in arms:
            if arm in ("base", CONTROL):
                continue
            control = "threshold_random" if arm == "threshold" else CONTROL
            comparisons[arm] = {"control": control, **{key: _paired(rows, variant, arm, control, key, budget)
                                                       for key in ENDPOINTS}}
        primary = comparisons.get(TREATMENT)
        if primary is not None and all(primary[key] is not None for key in ENDPOINTS):
            adjusted = holm([primary[key]["wilcoxon_p"] for key in ENDPOINTS])
            for key, p in zip(ENDPOINTS, adjusted):
                primary[key]["holm_p"] = p
        curve = []
        if variant == settings.variants[0]:
            for curve_budget in sorted({budget, *settings.budget_curve}):
                point: dict[str, Any] = {"budget": curve_budget}
                for arm in ("random", "pacs", "gold"):
                    arm_rows = _rows(rows, variant, arm, curve_budget)
                    if arm_rows:
                        point[arm] = {key: float(np.mean(_values(arm_rows, key))) for key in ENDPOINTS}
                point["pacs_minus_random"] = {key: _paired(rows, variant, "pacs", "random", key, curve_budget)
                                              for key in ENDPOINTS}
                curve.append(point)
        multi_round = None
        if settings.rounds > 1 and variant == settings.variants[0]:
            multi_round = {key: _paired(rows, variant, "pacs", "random", key, budget, settings.rounds)
                           for key in ENDPOINTS}
        gates = _gates(rows, variant, budget)
        summary["variants"][variant] = {
            "gates": gates,
            "gates_passed": all(gate["passed"] for gate in gates),
            "arms": aggregates,
            "comparisons": comparisons,
            "budget_curve": curve,
            "multi_round": multi_round,
        }
    summary["gates_passed"] = all(result["gates_passed"] for result in summary["variants"].values())
    return summary


def _ci(difference: dict[str, Any] | None, key: str = "bootstrap_ci") -> str:
    if difference is None:
        return "n/a"
    low, high = difference[key]
    return f"[{low:+.3f}, {high:+.3f}]"


def _cell(stat: dict[str, float] | None, digits: int = 3) -> str:
    return "n/a" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def gate_lines(summary: dict[str, Any]) -> list[str]:
    """The gates as text lines, a failed one in plain words (printed first by ``shfcas demo``)."""
    lines = []
    for variant, result in summary["variants"].items():
        for gate in result["gates"]:
            verdict = "PASS" if gate["passed"] else "FAIL"
            detail = (f"collapse rates: worst {max(gate['collapse_rates'].values()):.0%} ({gate['comparison']})"
                      if "collapse_rates" in gate else
                      f"{gate['comparison']}: {gate['difference']['mean']:+.3f}, 95% bootstrap CI {_ci(gate['difference'])}"
                      if gate["difference"] else "not computable")
            if gate.get("absolute_loss"):
                detail += f"; absolute change there {_ci(gate['absolute_loss'])}"
            lines.append(f"[{verdict}] {variant}: {gate['gate']} - {detail}")
    for variant, result in summary["variants"].items():
        if not result["gates_passed"]:
            lines.append(_failed(variant))
    return lines


def _failed(variant: str) -> str:
    return (f"A GATE FAILED in the {variant!r} variant: there this testbed cannot tell good selection from bad, so "
            "its comparisons are not evidence for or against SHF-CAS.")


def render_markdown(summary: dict[str, Any], command: str, plots: Sequence[str] = ()) -> str:
    """The Markdown report: settings hash and command, gates first, then the comparisons."""
    settings = summary["settings"]
    out = [
        "# SHF-CAS demo: results",
        "",
        f"Generated by `{command}` (settings hash `{summary['settings_hash']}`; {settings['num_seeds']} seeds, "
        f"budget {settings['budget']} of {settings['pool_per_category'] * len(CATEGORIES)} pool prompts, "
        f"{settings['num_generations']} completions each). Do not edit by hand: rerun the command. "
        "What the arms and metrics are: [demo.md](demo.md).",
        "",
        "## Gates",
        "",
        "| variant | gate | measured | result |",
        "|---|---|---|---|",
    ]
    for variant, result in summary["variants"].items():
        for gate in result["gates"]:
            if "collapse_rates" in gate:
                measured = ", ".join(f"{arm} {rate:.0%}" for arm, rate in gate["collapse_rates"].items() if rate > 0)
                measured = measured or "no run collapsed"
            elif gate["difference"] is None:
                measured = "n/a"
            else:
                measured = f"{gate['comparison']}: {gate['difference']['mean']:+.3f} {_ci(gate['difference'])}"
                if gate.get("absolute_loss"):
                    loss = gate["absolute_loss"]
                    measured += f" (absolute change in proxy-blind categories: {loss['mean']:+.3f} {_ci(loss)})"
            out.append(f"| {variant} | {gate['gate']} | {measured} | {'pass' if gate['passed'] else '**FAIL**'} |")
    out.append("")
    out += [f"**{_failed(variant)}**\n" for variant, result in summary["variants"].items() if not result["gates_passed"]]
    for variant, result in summary["variants"].items():
        out += [f"## Variant `{variant}`", ""]
        if not result["gates_passed"]:
            out += ["*Gates failed in this variant: the comparisons below are not evidence either way.*", ""]
        primary = result["comparisons"].get(TREATMENT)
        if primary:
            out += [
                f"### SHF-CAS minus random selection (budget {settings['budget']}, paired over seeds)",
                "",
                "| endpoint | mean difference | t 95% CI | bootstrap 95% CI | Wilcoxon p | Holm p | seeds better "
                "| minimum detectable effect |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for key in ENDPOINTS:
                d = primary[key]
                if d is None:
                    continue
                holm_p = f"{d['holm_p']:.3f}" if "holm_p" in d else "n/a"
                out.append(f"| {ENDPOINT_TITLES[key]} | {d['mean']:+.4f} | {_ci(d, 't_ci')} | {_ci(d)} | "
                           f"{d['wilcoxon_p']:.3f} | {holm_p} | {d['positive']} of {d['n']} | {d['mde']:.4f} |")
            out.append("")
        out += [
            "### Every arm (mean ± sd over seeds)",
            "",
            "| arm | policy gold | gold, proxy-blind categories | RM agreement | best-of-n gold | conflict vs gold* "
            "| degenerate prompts | collapsed runs | prompts labelled | precision vs gold-guided |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for arm, a in result["arms"].items():
            title = ARM_TITLES.get(arm, arm).replace("|", "\\|")  # a bare pipe would end the table cell
            out.append(
                f"| {title} | {_cell(a['gold'])} | {_cell(a['proxy_blind_gold'])} | "
                f"{_cell(a['rm_agreement'])} | {_cell(a['best_of_n_gold'])} | {_cell(a['conflict_vs_gold'])} | "
                f"{_cell(a['degenerate_prompt_share'], 2)} | {a['collapse_rate']:.0%} | "
                f"{'-' if a['selected'] is None else format(a['selected']['mean'], '.1f')} | "
                f"{_cell(a['gold_precision'], 2)} |"
            )
        out += [
            "",
            "\\* mean |PACS| between the policy's log-probs and the gold scores over held-out prompts whose "
            "samples differ; prompts with identical samples are left out and counted under degenerate prompts.",
            "",
            "### Paired differences from the control (bootstrap 95% CI; seeds better)",
            "",
            "| arm | control | policy gold | RM agreement |",
            "|---|---|---|---|",
        ]
        for arm, comparison in result["comparisons"].items():
            cells = [
                "n/a" if comparison[key] is None else
                f"{comparison[key]['mean']:+.4f} {_ci(comparison[key])}; {comparison[key]['positive']}/{comparison[key]['n']}"
                for key in ENDPOINTS
            ]
            out.append(f"| {arm} | {comparison['control']} | {cells[0]} | {cells[1]} |")
        out.append("")
        if result["budget_curve"]:
            out += ["### Budget curve (mean over seeds)", "",
                    "| budget | random gold | SHF-CAS gold | SHF-CAS - random gold | random RM agr. | SHF-CAS RM agr. "
                    "| SHF-CAS - random RM agr. |", "|---|---|---|---|---|---|---|"]
            for point in result["budget_curve"]:
                d = point["pacs_minus_random"]
                out.append(
                    f"| {point['budget']} | {point['random']['gold']:.3f} | {point['pacs']['gold']:.3f} | "
                    f"{d['gold']['mean']:+.4f} {_ci(d['gold'])} | {point['random']['rm_agreement']:.3f} | "
                    f"{point['pacs']['rm_agreement']:.3f} | {d['rm_agreement']['mean']:+.4f} {_ci(d['rm_agreement'])} |"
                )
            out.append("")
        if result["multi_round"]:
            out += [f"### {settings['rounds']} rounds (the loop itself), SHF-CAS - random", ""]
            for key in ENDPOINTS:
                d = result["multi_round"][key]
                if d is not None:
                    out.append(f"- {ENDPOINT_TITLES[key]}: {d['mean']:+.4f}, bootstrap 95% CI {_ci(d)}, "
                               f"{d['positive']} of {d['n']} seeds better")
            out.append("")
        out += ["### Where the feedback went (share of labelled prompts by the data that covered their category)",
                "", "| arm | policy+proxy | policy only | proxy only | neither |", "|---|---|---|---|---|"]
        pool_coverage = [coverage_of(c) for c in CATEGORIES]
        out.append("| (the pool) | " + " | ".join(f"{pool_coverage.count(g) / len(pool_coverage):.0%}"
                                                 for g in ("policy+proxy", "policy", "proxy", "neither")) + " |")
        for arm, a in result["arms"].items():
            if a["coverage"]:
                out.append(f"| {arm} | " + " | ".join(f"{a['coverage'].get(g, 0.0):.0%}"
                                                      for g in ("policy+proxy", "policy", "proxy", "neither")) + " |")
        out.append("")
    if plots:
        out += ["## Plots", ""] + [f"![{Path(plot).stem}]({plot})" for plot in plots] + [""]
    return "\n".join(out)


def _plot(rows: Sequence[dict], summary: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variant = next(iter(summary["variants"]))
    result = summary["variants"][variant]
    budget = summary["settings"]["budget"]
    arms = [arm for arm in result["arms"]]
    paths = []

    figure, axes = plt.subplots(1, 2, figsize=(13, 4))
    for axis, key in zip(axes, ENDPOINTS):
        for position, arm in enumerate(arms):
            values = _values(_rows(rows, variant, arm, budget), key)
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
            axis.scatter(position + jitter, values, s=12, alpha=0.7)
            axis.hlines(np.nanmean(values), position - 0.3, position + 0.3, color="black")
        axis.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
        axis.set_title(f"{ENDPOINT_TITLES[key]}: each seed, and the mean", fontsize=10)
    figure.suptitle(f"variant {variant!r}, budget {budget}")
    figure.tight_layout()
    paths.append(directory / "per_seed.png")
    figure.savefig(paths[-1], dpi=90)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(13, 4))
    compared = list(result["comparisons"])
    for axis, key in zip(axes, ENDPOINTS):
        for position, arm in enumerate(compared):
            d = result["comparisons"][arm][key]
            if d is None:
                continue
            axis.scatter(np.full(len(d["differences"]), position), d["differences"], s=10, alpha=0.5)
            low, high = d["bootstrap_ci"]
            axis.errorbar(position + 0.2, d["mean"], yerr=[[d["mean"] - low], [high - d["mean"]]], fmt="o",
                          color="black", capsize=3)
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(compared)), [f"{arm} - {result['comparisons'][arm]['control']}" for arm in compared],
                        rotation=45, ha="right", fontsize=8)
        axis.set_title(f"paired difference, {ENDPOINT_TITLES[key]} (per seed; mean, bootstrap 95% CI)", fontsize=9)
    figure.tight_layout()
    paths.append(directory / "paired_differences.png")
    figure.savefig(paths[-1], dpi=90)
    plt.close(figure)

    if len(result["budget_curve"]) > 1:
        figure, axes = plt.subplots(1, 2, figsize=(11, 3.5))
        budgets = [point["budget"] for point in result["budget_curve"]]
        for axis, key in zip(axes, ENDPOINTS):
            for arm in ("random", "pacs", "gold"):
                points = [(p["budget"], p[arm][key]) for p in result["budget_curve"] if arm in p]
                if points:
                    axis.plot(*zip(*points), marker="o", label=arm)
            for arm in ("none", "pool"):
                if arm in result["arms"] and result["arms"][arm][key]:
                    axis.axhline(result["arms"][arm][key]["mean"], linestyle="--", linewidth=0.8, label=arm,
                                 color="grey" if arm == "none" else "black")
            axis.set_xscale("log")
            axis.set_xticks(budgets, [str(b) for b in budgets])
            axis.set_xlabel("prompts labelled")
            axis.set_title(f"{ENDPOINT_TITLES[key]} by budget (mean over seeds)", fontsize=10)
            axis.legend(fontsize=8)
        figure.tight_layout()
        paths.append(directory / "budget_curve.png")
        figure.savefig(paths[-1], dpi=90)
        plt.close(figure)
    return paths


def write_report(
    rows: Sequence[dict], settings: ExperimentSettings, output_dir: str | Path, *, command: str,
    markdown: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``results.json`` (settings, per-seed rows, summary), ``report.md`` and the plots to
    ``output_dir``; with ``markdown``, also the report at that path with its plots beside it in
    ``<stem>_files/``. Returns the summary."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows, settings)
    write_text_atomic(output / "results.json",
                      json.dumps({"command": command, "summary": summary, "rows": list(rows)}, indent=1))
    plots = _plot(rows, summary, output)
    write_text_atomic(output / "report.md", render_markdown(summary, command, [plot.name for plot in plots]))
    if markdown is not None:
        page = Path(markdown)
        files = page.parent / f"{page.stem}_files"
        files.mkdir(parents=True, exist_ok=True)
        for plot in plots:
            (files / plot.name).write_bytes(plot.read_bytes())
        write_text_atomic(page, render_markdown(summary, command, [f"{files.name}/{plot.name}" for plot in plots]))
    return summary
