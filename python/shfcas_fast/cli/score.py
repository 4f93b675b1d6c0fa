"""``shfcas score``: conflict scores of every completion in a table file.

Example:
```python
>>> from typer.testing import CliRunner
>>> from shfcas_fast.cli import app
>>> "--grouped" in CliRunner().invoke(app, ["score", "--help"]).output
True

```

The work is :func:`shfcas_fast.tables.score_file`; its docstring says how files larger than memory
are streamed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..tables import score_file
from ..tables.score import DEFAULT_BATCH_BYTES
from ._common import (
    EngineOption,
    PartitionsOption,
    RayAddressOption,
    map_large_allocations,
    refuse_with_ray,
    InputArgument,
    NanPolicyOption,
    OutputOption,
    OverwriteOption,
    PromptColumnOption,
    QuietOption,
    echo_summary,
    reports_errors,
)
from .app import app

__all__ = ["score_command"]


@app.command("score")
@reports_errors
def score_command(
    input_path: InputArgument,
    output: OutputOption,
    prompt_column: PromptColumnOption = "prompt",
    logprob_column: Annotated[
        str,
        typer.Option(
            "--logprob-column",
            help="Column with each completion's log-probability under the policy, or a list column of "
            "its response tokens' log-probs (summed).",
        ),
    ] = "logprob",
    reward_column: Annotated[
        str, typer.Option("--reward-column", help="Column with the proxy reward (higher is better).")
    ] = "reward",
    nan_policy: NanPolicyOption = "raise",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help=f"Rows per batch when streaming Parquet (default: about {DEFAULT_BATCH_BYTES >> 20} MiB "
            "of decoded columns per batch).",
            show_default=False,
        ),
    ] = None,
    grouped: Annotated[
        bool,
        typer.Option(
            "--grouped",
            help="Rows of each prompt are adjacent: stream the file in one pass with memory bounded by the "
            "batch size.",
        ),
    ] = False,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    partitions: PartitionsOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
) -> None:
    """Score every completion: per-prompt z-scores, PACS, conflict and Kendall tau-b.

    The output holds the input's columns plus z_logprob, z_reward, pacs and the prompt's
    group_conflict, kendall_tau, kendall_distance and degenerate flag, in the input's row order.
    """
    if engine == "ray":
        refuse_with_ray(grouped=grouped, batch_size=batch_size, nan_policy=nan_policy != "raise")
        from .. import ray as ray_engine

        ray_engine.connect(ray_address)
        ray_summary = ray_engine.score_file(
            input_path,
            output,
            prompt_column=prompt_column,
            logprob_column=logprob_column,
            reward_column=reward_column,
            num_partitions=partitions,
            overwrite=overwrite,
        )
        echo_summary(ray_summary, output, quiet=quiet)
        return
    if grouped:
        map_large_allocations()
    summary = score_file(
        input_path,
        output,
        prompt_column=prompt_column,
        logprob_column=logprob_column,
        reward_column=reward_column,
        nan_policy=nan_policy,
        batch_size=batch_size,
        grouped=grouped,
        overwrite=overwrite,
        progress=not quiet,
    )
    echo_summary(summary, output, quiet=quiet)
