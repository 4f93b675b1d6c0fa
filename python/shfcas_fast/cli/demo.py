"""``shfcas demo``: the gated SHF-CAS experiment on the embedded synthetic safety task.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--preset" in CliRunner().invoke(app, ["demo", "--help"]).output
True

```
"""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from ..errors import ShfcasValueError
from ._common import reports_errors
from .app import app

__all__ = ["demo"]


class PresetName(str, enum.Enum):
    """Sizes of the experiment."""

    CPU = "cpu"
    GPU = "gpu"
    FAST = "fast"


@app.command("demo")
@reports_errors
def demo(
    output: Path = typer.Option(
        Path("shfcas-demo-report"), "-o", "--output", help="Run directory (results.json, report.md, plots, rows)."
    ),
    preset: PresetName = typer.Option(
        PresetName.CPU, "--preset", case_sensitive=False,
        help="cpu: minutes on two CPU cores (the default); gpu: one GPU and a real small model "
        "(downloads EleutherAI/pythia-70m); fast: a smoke test, no conclusions.",
    ),
    seeds: int = typer.Option(None, "--seeds", min=2, help="Seeds (default: the preset's)."),
    budget: int = typer.Option(None, "--budget", min=1, help="Prompts labelled by each budgeted arm (default: the preset's)."),
    rounds: int = typer.Option(None, "--rounds", min=1, help="Rounds of the multi-round variant (1: none)."),
    no_curve: bool = typer.Option(False, "--no-budget-curve", help="Skip the budget curve."),
    report_to: str = typer.Option("none", "--report-to", help="TRL/transformers report_to of every trainer."),
    jobs: int = typer.Option(2, "--jobs", min=1, help="Seeds run at once, one CPU thread each (keep 1 on a GPU)."),
    fast: bool = typer.Option(False, "--fast", hidden=True, help="Same as --preset fast."),
    markdown: Path = typer.Option(
        None, "--markdown", help="Also write the report here (e.g. docs/demo_results.md), plots beside it."
    ),
) -> None:
    """Run every arm of the experiment, check its gates, and compare SHF-CAS with random selection."""
    # Imported here: torch, transformers and TRL are optional and slow to import.
    import datasets
    import transformers

    from ..experiments import ExperimentSettings, run_experiment
    from ..experiments.report import gate_lines, write_report

    # Hundreds of sub-second stages: their library progress bars would bury the results.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    if output.exists() and not output.is_dir():
        raise ShfcasValueError(f"{output} is a file; -o/--output names the report directory")
    if fast:
        preset = PresetName.FAST
    overrides: dict = {"report_to": report_to}
    for name, value in (("num_seeds", seeds), ("budget", budget), ("rounds", rounds)):
        if value is not None:
            overrides[name] = value
    if no_curve:
        overrides["budget_curve"] = ()
    settings = ExperimentSettings.preset(preset.value, **overrides)
    command = " ".join(
        ["shfcas demo"]
        + ([f"--preset {preset.value}"] if preset != PresetName.CPU else [])
        + [f"--{flag} {value}" for flag, value in (("seeds", seeds), ("budget", budget), ("rounds", rounds)) if value]
        + (["--no-budget-curve"] if no_curve else [])
    )
    rows = run_experiment(settings, output, jobs=jobs)
    summary = write_report(rows, settings, output, command=command, markdown=markdown)
    typer.echo("Gates (whether this testbed can tell good selection from bad):")
    for line in gate_lines(summary):
        typer.echo(f"  {line}")
    for variant, result in summary["variants"].items():
        primary = result["comparisons"].get("pacs")
        if not primary:
            continue
        typer.echo(f"SHF-CAS - random, variant {variant!r}, budget {settings.budget}, paired over seeds:")
        for key, title in (("gold", "policy gold"), ("rm_agreement", "reward-model agreement")):
            d = primary[key]
            if d is not None:
                typer.echo(
                    f"  {title}: {d['mean']:+.4f}, bootstrap 95% CI [{d['bootstrap_ci'][0]:+.4f}, "
                    f"{d['bootstrap_ci'][1]:+.4f}], Holm p {d.get('holm_p', float('nan')):.3f}, "
                    f"{d['positive']} of {d['n']} seeds better, minimum detectable effect {d['mde']:.4f}"
                )
    typer.echo(f"Report: {output / 'report.md'}; per-seed rows: {output / 'results.json'}")
