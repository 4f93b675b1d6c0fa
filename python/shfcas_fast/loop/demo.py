"""The reproducible biased-proxy experiment behind ``shfcas demo`` (CPU, no download).

Example:
```python
>>> from shfcas_fast.loop.demo import DemoConfig
>>> DemoConfig(output_dir="/tmp/shfcas-demo", fast=True).arms
('none', 'random', 'pacs')

```

Per seed: build the tokenizer, train the base policy (pre-training + SFT on the policy's categories)
and the proxy reward model (TRL ``RewardTrainer`` on the proxy's categories), then run three arms of
:class:`~shfcas_fast.loop.SHFCASLoop` from the same models and the same mining pool: no extra feedback
(GRPO against the proxy as it is), random selection and SHF-CAS, the last two with the same feedback
budget. Every arm is evaluated on held-out prompts of every category with the gold oracle.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import set_seed
from trl import RewardConfig

from .evaluation import evaluate_policy
from .loop import SHFCASConfig, SHFCASLoop
from .oracles import CallableOracle, RewardModelOracle
from .reward_model import train_reward_model
from .synthetic import (
    CATEGORIES,
    SyntheticSafetyTask,
    build_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
    train_causal_lm,
)

__all__ = ["DemoConfig", "DemoReport", "run_demo"]

METRICS = ("mean_score", "mean_abs_pacs", "mean_tau", "high_conflict_share")


@dataclasses.dataclass
class DemoConfig:
    """Configuration of :func:`run_demo`.

    Args:
        output_dir: report directory (``results.json``, ``*.png``, per-run artefacts under ``runs/``).
        num_seeds: seeds; each trains its own models and runs every arm.
        budget: prompts sent to the gold oracle by the random and SHF-CAS arms.
        strategy: the SHF-CAS arm's conflict measure, ``"pacs"`` or ``"kendall"``.
        fast: a much smaller configuration, for smoke tests.
        num_threads: torch CPU threads (1 is fastest for models this small).
    """

    output_dir: str
    num_seeds: int = 3
    budget: int = 12
    strategy: str = "pacs"
    fast: bool = False
    num_threads: int = 1

    @property
    def arms(self) -> tuple[str, ...]:
        return ("none", "random", self.strategy)

    @property
    def pool_per_category(self) -> int:
        return 2 if self.fast else 8

    @property
    def eval_per_category(self) -> int:
        return 1 if self.fast else 6

    def loop_config(self, output_dir: Path, strategy: str, seed: int) -> SHFCASConfig:
        return SHFCASConfig(
            output_dir=str(output_dir),
            strategy=strategy,
            budget=None if strategy == "none" else self.budget,
            max_new_tokens=6,
            reward_epochs=1.0,
            policy_steps=2 if self.fast else 40,
            policy_learning_rate=3e-3,
            policy_batch_size=16,
            seed=seed,
            progress=False,
        )


@dataclasses.dataclass
class DemoReport:
    """Per-arm evaluation of every seed: ``results[arm][i]`` is seed ``i``'s ``evaluate_policy`` output."""

    config: DemoConfig
    results: dict[str, list[dict[str, Any]]]
    base: list[dict[str, Any]]
    selected_categories: dict[str, list[list[str]]]

    def aggregate(self) -> dict[str, dict[str, dict[str, float]]]:
        """Mean and standard deviation over seeds of each overall metric, per arm (plus the base policy)."""
        table = {}
        for arm, runs in {"base": self.base, **self.results}.items():
            table[arm] = {
                metric: {
                    "mean": float(np.nanmean([run["overall"][metric] for run in runs])),
                    "std": float(np.nanstd([run["overall"][metric] for run in runs])),
                }
                for metric in METRICS
            }
        return table

    def summary_table(self) -> str:
        header = f"{'arm':<8}" + "".join(f"{metric:>24}" for metric in METRICS)
        lines = [header]
        for arm, metrics in self.aggregate().items():
            cells = "".join(f"{metrics[m]['mean']:>15.3f} +/- {metrics[m]['std']:<5.3f}" for m in METRICS)
            lines.append(f"{arm:<8}{cells}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "aggregate": self.aggregate(),
            "base": self.base,
            "results": self.results,
            "selected_categories": self.selected_categories,
        }


def _plot(report: DemoReport, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = ["base", *report.results]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    aggregate = report.aggregate()
    for axis, metric in zip(axes, METRICS):
        axis.bar(arms, [aggregate[a][metric]["mean"] for a in arms], yerr=[aggregate[a][metric]["std"] for a in arms])
        axis.set_title(metric)
    figure.tight_layout()
    figure.savefig(output_dir / "overall.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(10, 3.5))
    width = 0.8 / len(arms)
    for offset, arm in enumerate(arms):
        runs = report.base if arm == "base" else report.results[arm]
        means = [np.mean([run["per_category"][c]["mean_score"] for run in runs]) for c in CATEGORIES]
        axis.bar(np.arange(len(CATEGORIES)) + offset * width, means, width, label=arm)
    axis.set_xticks(np.arange(len(CATEGORIES)) + 0.4 - width / 2, CATEGORIES, rotation=30)
    axis.set_ylabel("mean gold score")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / "per_category_gold.png", dpi=100)
    plt.close(figure)


def run_demo(config: DemoConfig) -> DemoReport:
    """Run every arm over every seed, write ``results.json`` and plots, and return the report."""
    torch.set_num_threads(config.num_threads)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    task = SyntheticSafetyTask()
    gold = CallableOracle(task.gold_scores)
    tokenizer = build_tokenizer()
    results: dict[str, list] = {arm: [] for arm in config.arms}
    selected_categories: dict[str, list] = {arm: [] for arm in config.arms}
    base = []
    for seed in range(config.num_seeds):
        set_seed(seed)
        policy = tiny_causal_lm(tokenizer, seed)
        texts = task.policy_training_texts(600 if config.fast else 3000, seed=seed)
        train_causal_lm(policy, tokenizer, texts, epochs=1 if config.fast else 3, seed=seed)
        preference_data = task.proxy_preference_data(200 if config.fast else 1000, seed=seed)
        proxy_args = RewardConfig(
            output_dir=str(output_dir / "runs" / f"seed_{seed}" / "proxy"),
            num_train_epochs=1.0,
            learning_rate=1e-3,
            per_device_train_batch_size=32,
            seed=seed,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            disable_tqdm=True,
        )
        proxy_model = train_reward_model(tiny_reward_model(tokenizer, seed), tokenizer, preference_data, proxy_args)
        pool, _ = task.sample_prompts(CATEGORIES, config.pool_per_category, seed=10_000 + seed)
        eval_prompts, eval_categories = task.sample_prompts(CATEGORIES, config.eval_per_category, seed=20_000 + seed)
        base.append(
            evaluate_policy(policy, tokenizer, eval_prompts, eval_categories, gold, max_new_tokens=6, seed=seed)
        )
        for arm in config.arms:
            run_dir = output_dir / "runs" / f"seed_{seed}" / arm
            loop = SHFCASLoop(
                config.loop_config(run_dir, arm, seed),
                # Each arm starts from its own copy of the same base policy and proxy.
                copy.deepcopy(policy),
                tokenizer,
                RewardModelOracle(copy.deepcopy(proxy_model), tokenizer),
                gold,
                preference_data,
                pool,
                eval_prompts,
                eval_categories,
            )
            results[arm].append(loop.run()[-1])
            selected = json.loads((run_dir / "round_0" / "selected.json").read_text())
            selected_categories[arm].append([task.category_of(pool[g]) for g in selected])
    report = DemoReport(config, results, base, selected_categories)
    (output_dir / "results.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    _plot(report, output_dir)
    return report
