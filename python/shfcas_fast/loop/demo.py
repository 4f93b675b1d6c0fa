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
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import set_seed
from trl import RewardConfig

from .evaluation import evaluate_policy
from .loop import LoopStrategy, SHFCASConfig, SHFCASLoop, _claim_output_dir
from .oracles import CallableOracle, RewardModelOracle
from .reward_model import train_reward_model
from .synthetic import (
    CATEGORIES,
    POLICY_CATEGORIES,
    PROXY_CATEGORIES,
    SyntheticSafetyTask,
    build_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
    train_causal_lm,
)

__all__ = ["DemoConfig", "DemoReport", "run_demo"]

METRICS = ("mean_score", "mean_abs_pacs", "mean_tau", "high_conflict_share")
METRIC_TITLES = {
    "mean_score": "mean gold score (higher is better)",
    "mean_abs_pacs": "mean |PACS|, log-prob vs gold (lower)",
    "mean_tau": "mean tau, log-prob vs gold (higher)",
    "high_conflict_share": "share of prompts with c > 1 (lower)",
}
#: Which training data covered a category: both models', the policy's only, the proxy's only, neither.
COVERAGE_GROUPS = ("policy+proxy", "policy", "proxy", "neither")


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
    num_seeds: int = 10
    budget: int = 12
    strategy: Literal["pacs", "kendall"] = "pacs"
    fast: bool = False
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in ("pacs", "kendall"):
            raise ValueError(f'strategy must be "pacs" or "kendall", got {self.strategy!r}')

    @property
    def arms(self) -> tuple[LoopStrategy, ...]:
        return ("none", "random", self.strategy)

    @property
    def pool_per_category(self) -> int:
        return 2 if self.fast else 8

    @property
    def eval_per_category(self) -> int:
        return 1 if self.fast else 10

    def loop_config(self, output_dir: Path, strategy: LoopStrategy, seed: int) -> SHFCASConfig:
        return SHFCASConfig(
            output_dir=str(output_dir),
            strategy=strategy,
            budget=None if strategy == "none" else self.budget,
            max_new_tokens=6,
            reward_epochs=1.0,
            policy_steps=2 if self.fast else 40,
            policy_learning_rate=1e-3,
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

    @property
    def runs(self) -> dict[str, list[dict[str, Any]]]:
        """Every arm's evaluations, the base policy's first."""
        return {"base": self.base, **self.results}

    def aggregate(self) -> dict[str, dict[str, Any]]:
        """Mean and standard deviation over seeds of each metric, overall and per category, per arm."""

        def mean_std(values: list[float]) -> dict[str, float]:
            return {"mean": float(np.nanmean(values)), "std": float(np.nanstd(values))}

        return {
            arm: {
                "overall": {m: mean_std([run["overall"][m] for run in runs]) for m in METRICS},
                "per_category": {
                    c: {m: mean_std([run["per_category"][c][m] for run in runs]) for m in METRICS} for c in CATEGORIES
                },
            }
            for arm, runs in self.runs.items()
        }

    def gold_gain_over_random(self) -> dict[str, float]:
        """Per-seed difference in held-out mean gold score between the SHF-CAS arm and random selection
        (same seed, same models, same budget): mean, standard deviation, and seeds where it is positive."""
        gains = [
            conflict["overall"]["mean_score"] - random["overall"]["mean_score"]
            for conflict, random in zip(self.results[self.config.strategy], self.results["random"], strict=True)
        ]
        return {"mean": float(np.mean(gains)), "std": float(np.std(gains)), "wins": int(np.sum(np.array(gains) > 0))}

    def feedback_share_by_coverage(self) -> dict[str, dict[str, float]]:
        """Where each feedback arm's budget went: the share of its selected prompts (over all seeds) from
        categories seen by both models' data, by the policy's only, the proxy's only, or neither. A report
        after the fact: selection itself never sees categories."""
        shares = {}
        for arm, runs in self.selected_categories.items():
            if arm == "none":
                continue
            coverage = [_coverage(category) for run in runs for category in run]
            shares[arm] = {group: coverage.count(group) / max(len(coverage), 1) for group in COVERAGE_GROUPS}
        return shares

    def summary_table(self) -> str:
        """Mean +/- std over seeds per arm: the overall metrics, then the mean gold score per category."""
        aggregate = self.aggregate()
        lines = [f"{'arm':<8}" + "".join(f"{metric:>22}" for metric in METRICS)]
        for arm, metrics in aggregate.items():
            cells = "".join(
                f"{metrics['overall'][m]['mean']:>13.3f} +/- {metrics['overall'][m]['std']:<5.3f}" for m in METRICS
            )
            lines.append(f"{arm:<8}{cells}")
        lines += ["", "mean gold score per category (mean +/- std over seeds)", f"{'category':<16}" + "".join(
            f"{arm:>18}" for arm in aggregate
        )]
        for category in CATEGORIES:
            cells = "".join(
                f"{metrics['per_category'][category]['mean_score']['mean']:>10.3f} +/- "
                f"{metrics['per_category'][category]['mean_score']['std']:<4.2f}"
                for metrics in aggregate.values()
            )
            lines.append(f"{category:<16}{cells}")
        gain = self.gold_gain_over_random()
        lines += [
            "",
            f"{self.config.strategy} - random, mean gold per seed: {gain['mean']:+.3f} +/- {gain['std']:.3f} "
            f"({gain['wins']} of {self.config.num_seeds} seeds better)",
            "feedback prompts by the data that covered their category: "
            + "; ".join(
                f"{arm} " + ", ".join(f"{group} {share:.0%}" for group, share in shares.items())
                for arm, shares in {"pool": _pool_share(), **self.feedback_share_by_coverage()}.items()
            ),
        ]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "aggregate": self.aggregate(),
            "gold_gain_over_random": self.gold_gain_over_random(),
            "feedback_share_by_coverage": self.feedback_share_by_coverage(),
            "base": self.base,
            "results": self.results,
            "selected_categories": self.selected_categories,
        }


def _plot(report: DemoReport, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregate = report.aggregate()
    arms = list(aggregate)
    palette = plt.get_cmap("tab10")
    colours = {arm: palette(i) for i, arm in enumerate(arms)}
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.5))
    for axis, metric in zip(axes, METRICS):
        stats = [aggregate[arm]["overall"][metric] for arm in arms]
        axis.bar(arms, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], capsize=4,
                 color=[colours[arm] for arm in arms])
        axis.set_title(METRIC_TITLES[metric], fontsize=10)
    figure.suptitle(f"held-out evaluation against the gold oracle, mean +/- std over {report.config.num_seeds} seeds")
    figure.tight_layout()
    figure.savefig(output_dir / "overall.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(arms)
    positions = np.arange(len(CATEGORIES))
    for offset, arm in enumerate(arms):
        stats = [aggregate[arm]["per_category"][c]["mean_score"] for c in CATEGORIES]
        axis.bar(positions + offset * width, [s["mean"] for s in stats], width, yerr=[s["std"] for s in stats],
                 capsize=2, label=arm, color=colours[arm])
    labels = [f"{c}\n({_coverage(c)})" for c in CATEGORIES]
    axis.set_xticks(positions + 0.4 - width / 2, labels, fontsize=8)
    axis.axhline(0.0, color="black", linewidth=0.5)
    axis.set_ylabel("mean gold score")
    axis.set_title("mean gold score per category (which training data covered it)")
    axis.legend(ncol=len(arms), fontsize=8)
    figure.tight_layout()
    figure.savefig(output_dir / "per_category_gold.png", dpi=100)
    plt.close(figure)


def _coverage(category: str) -> str:
    """Which training data covered ``category``: one of :data:`COVERAGE_GROUPS`."""
    seen_by = [name for name, seen in (("policy", POLICY_CATEGORIES), ("proxy", PROXY_CATEGORIES)) if category in seen]
    return "+".join(seen_by) if seen_by else "neither"


def _pool_share() -> dict[str, float]:
    """Each coverage group's share of the categories (of the mining pool, which has as many prompts of each)."""
    coverage = [_coverage(category) for category in CATEGORIES]
    return {group: coverage.count(group) / len(coverage) for group in COVERAGE_GROUPS}


def run_demo(config: DemoConfig) -> DemoReport:
    """Run every arm over every seed, write ``results.json`` and plots, and return the report.

    A rerun into the same ``output_dir`` with the same config resumes (finished loop stages are loaded);
    one with another config (``num_threads`` aside) is refused with a ValueError before any training.
    """
    output_dir = Path(config.output_dir)
    _claim_output_dir(output_dir, dataclasses.asdict(config), cosmetic=("output_dir", "num_threads"))
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        report = _run_seeds(config, output_dir)
    finally:
        torch.set_num_threads(threads)
    (output_dir / "results.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    _plot(report, output_dir)
    return report


def _run_seeds(config: DemoConfig, output_dir: Path) -> DemoReport:
    task = SyntheticSafetyTask()
    gold = CallableOracle(task.gold_scores)
    tokenizer = build_tokenizer()
    results: dict[str, list] = {arm: [] for arm in config.arms}
    selected_categories: dict[str, list] = {arm: [] for arm in config.arms}
    base = []
    # disable=None: a bar on a terminal, nothing in logs and CI.
    for seed in tqdm(range(config.num_seeds), desc="demo seeds", unit="seed", disable=None):
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
    return DemoReport(config, results, base, selected_categories)
