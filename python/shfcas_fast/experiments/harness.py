"""Running every arm of the SHF-CAS experiment on the embedded synthetic safety task.

Example:
```python
>>> import tempfile
>>> from shfcas_fast.experiments import ExperimentSettings, run_experiment
>>> settings = ExperimentSettings.preset("fast")
>>> rows = run_experiment(settings, tempfile.mkdtemp())  # doctest: +SKIP
>>> sorted({row["arm"] for row in rows})[:3]  # doctest: +SKIP
['base', 'gold', 'kendall']

```

Per shared-ignorance variant and seed: train the base policy (pre-training + SFT on the policy's
categories) and the proxy reward model (the proxy's categories), split the prompts into a mining pool and
disjoint held-out prompts, and mine the pool once (8 completions per prompt, the policy's log-probs, the
proxy's rewards, PACS and Kendall). The gold oracle's scores of the mined completions are computed once
too, but an arm only ever uses those of the prompts it selected. Then each arm, from copies of the same
models with the same seeds and steps: select prompts, turn their gold scores into preference pairs,
retrain the reward model from scratch on the original data plus the new pairs, refine the policy (GRPO
with a KL term toward the base policy against the retrained reward model, or RSO), and evaluate it on the
held-out prompts with the gold oracle. Each reward model is also judged without any RL noise on a fixed
set of base-policy completions of the held-out prompts: its agreement with gold on pairs, and the gold of
the completion it ranks best of ``probe_generations``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm
from transformers import set_seed
from trl import DPOConfig, GRPOConfig, RewardConfig

from ..errors import ShfcasSelectionWarning
from ..scoring import score, select
from ..loop.evaluation import evaluate_policy
from ..loop.loop import SHFCASConfig, SHFCASLoop
from ..loop.oracles import CallableOracle, RewardModelOracle
from ..loop.policy import refine_policy_dpo, refine_policy_grpo
from ..loop.preference import preference_pairs
from ..loop.reward_model import fresh_copy, train_reward_model
from ..loop.run_directory import claim_output_dir, write_text_atomic
from ..loop.sampling import SampledCompletions, sample_completions
from ..loop.synthetic import (
    CATEGORIES,
    POLICY_CATEGORIES,
    PROXY_BLIND_CATEGORIES,
    PROXY_CATEGORIES,
    SharedIgnorance,
    SyntheticSafetyTask,
    build_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
    train_causal_lm,
)
from .settings import ARMS, CURVE_ARMS, ROUND_ARMS, Arm, ExperimentSettings

__all__ = ["coverage_of", "reward_model_agreement", "rso_pairs", "run_experiment"]

#: The jobs of one (variant, seed): the arms at the budget, the budget curve, the multi-round variant.
Part = Literal["arms", "curve", "rounds"]

logger = logging.getLogger(__name__)

#: A run counts as collapsed when more than this share of its held-out completions is degenerate.
COLLAPSE_SHARE = 0.5


def coverage_of(category: str) -> str:
    """Which training data covered ``category``: "policy+proxy", "policy", "proxy" or "neither"."""
    seen_by = [name for name, seen in (("policy", POLICY_CATEGORIES), ("proxy", PROXY_CATEGORIES)) if category in seen]
    return "+".join(seen_by) if seen_by else "neither"


def reward_model_agreement(rewards: Any, gold: Any, group_size: int) -> tuple[float, float]:
    """How well ``rewards`` rank completions by ``gold``, within each prompt's group of ``group_size``.

    Returns ``(agreement, best_of_n)``: the share of within-prompt pairs with different gold scores that
    the rewards order the same way (a reward tie counts one half), and the mean gold score of the
    completion each prompt's rewards rank first.

    Example:
    ```python
    >>> from shfcas_fast.experiments.harness import reward_model_agreement
    >>> reward_model_agreement([0.1, 0.9, 0.5, 0.2, 0.4, 0.3], [0.0, 1.0, 0.5, 1.0, 0.0, 0.0], 3)
    (0.6, 0.5)

    ```
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    g = np.asarray(gold, dtype=np.float64).reshape(-1, group_size)
    upper = np.triu(np.ones((group_size, group_size), dtype=bool), k=1)
    gold_sign = np.sign(g[:, :, None] - g[:, None, :])[:, upper]
    reward_sign = np.sign(r[:, :, None] - r[:, None, :])[:, upper]
    decided = gold_sign != 0
    agreement = float(np.mean((1 + gold_sign[decided] * reward_sign[decided]) / 2)) if decided.any() else float("nan")
    best_of_n = float(np.mean(g[np.arange(g.shape[0]), np.argmax(r, axis=1)]))
    return agreement, best_of_n


def rso_pairs(
    samples: SampledCompletions, rewards: np.ndarray, accepted: int, beta: float, seed: int
) -> Dataset:
    """Statistical rejection sampling (Liu et al. 2023, Algorithm 1) of each prompt's completions toward the
    reward-optimal policy pi*(y|x) proportional to pi(y|x) exp(r(x,y) / beta), then every pair of accepted
    completions with different rewards, preferred = higher reward.

    The completions were sampled from the policy; a candidate drawn uniformly without replacement is
    accepted with probability exp((r - max r) / beta), until ``accepted`` are accepted or none is left.

    Example:
    ```python
    >>> import numpy as np
    >>> from shfcas_fast.experiments.harness import rso_pairs
    >>> from shfcas_fast.loop.sampling import SampledCompletions
    >>> samples = SampledCompletions(["q "], ["a", "b", "c", "d"], np.zeros(4), 4)
    >>> pairs = rso_pairs(samples, np.array([3.0, 2.0, 1.0, 0.0]), accepted=2, beta=100.0, seed=0)
    >>> len(pairs)
    1

    ```
    """
    rng = np.random.default_rng(seed)
    n = samples.num_generations
    prompts, completions, scores, sizes = [], [], [], []
    for group, prompt in enumerate(samples.prompts):
        candidates = list(rng.permutation(n))
        best = float(np.max(rewards[group * n : group * n + n]))
        kept: list[int] = []
        while candidates and len(kept) < accepted:
            candidate = candidates.pop()
            if rng.random() < np.exp((rewards[group * n + candidate] - best) / beta):
                kept.append(int(candidate))
        prompts += [prompt] * len(kept)
        completions += [samples.completions[group * n + i] for i in kept]
        scores += [float(rewards[group * n + i]) for i in kept]
        sizes.append(len(kept))
    return preference_pairs(prompts, completions, np.asarray(scores), np.asarray(sizes, dtype=np.int64))


class _SeedRun:
    """One (variant, seed): the models every arm starts from, the mined pool, and the arms' runs."""

    def __init__(self, settings: ExperimentSettings, variant: SharedIgnorance, seed: int, work_dir: Path) -> None:
        self.settings = settings
        self.variant = variant
        self.seed = seed
        self.work_dir = work_dir
        self.task = SyntheticSafetyTask(shared_ignorance=variant)
        self.gold = CallableOracle(self.task.gold_scores)

    # -- trainers ------------------------------------------------------------------------------
    def _args(self, kind: Any, name: str, **settings: Any) -> Any:
        return kind(output_dir=str(self.work_dir / name), seed=self.seed, data_seed=self.seed,
                    **self.settings.trainer_settings(), **settings)

    def reward_args(self, name: str) -> RewardConfig:
        s = self.settings
        return self._args(RewardConfig, name, num_train_epochs=s.reward_epochs, learning_rate=s.reward_learning_rate,
                          per_device_train_batch_size=s.reward_batch_size)

    def grpo_args(self, name: str) -> GRPOConfig:
        s = self.settings
        return self._args(GRPOConfig, name, max_steps=s.policy_steps, learning_rate=s.policy_learning_rate,
                          per_device_train_batch_size=s.policy_batch_size, num_generations=s.num_generations,
                          max_completion_length=s.max_new_tokens, temperature=s.temperature, beta=s.grpo_beta)

    def dpo_args(self, name: str) -> DPOConfig:
        s = self.settings
        return self._args(DPOConfig, name, max_steps=s.policy_steps, learning_rate=s.policy_learning_rate,
                          per_device_train_batch_size=s.policy_batch_size)

    # -- the shared start ----------------------------------------------------------------------
    def _models(self) -> tuple[Any, Any, Any]:
        s = self.settings
        if s.policy_model is None:
            tokenizer = build_tokenizer()
            return tokenizer, tiny_causal_lm(tokenizer, self.seed), tiny_reward_model(tokenizer, self.seed)
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        pretrained: Any = AutoTokenizer.from_pretrained(s.policy_model, padding_side="left")
        if pretrained.pad_token is None:
            pretrained.pad_token = pretrained.eos_token
        set_seed(self.seed)
        policy = AutoModelForCausalLM.from_pretrained(s.policy_model)
        reward = AutoModelForSequenceClassification.from_pretrained(s.policy_model, num_labels=1)
        reward.config.pad_token_id = pretrained.pad_token_id
        return pretrained, policy, reward

    def prepare(self) -> None:
        s = self.settings
        set_seed(self.seed)
        self.tokenizer, self.policy, reward_init = self._models()
        texts = self.task.policy_training_texts(s.policy_texts, seed=self.seed)
        train_causal_lm(self.policy, self.tokenizer, texts, epochs=s.policy_epochs, seed=self.seed)
        self.preference_data = self.task.proxy_preference_data(s.preference_pairs, seed=self.seed)
        self.reward_init = copy.deepcopy(reward_init)
        self.proxy = train_reward_model(reward_init, self.tokenizer, self.preference_data, self.reward_args("proxy"))
        (self.pool, _), (self.held_out, self.held_out_categories) = self.task.split_prompts(
            CATEGORIES, [s.pool_per_category, s.eval_per_category], seed=10_000 + self.seed
        )
        self.samples = sample_completions(self.policy, self.tokenizer, self.pool, num_generations=s.num_generations,
                                          temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=self.seed)
        self.proxy_rewards = RewardModelOracle(self.proxy, self.tokenizer).score(
            self.samples.completion_prompts, self.samples.completions
        )
        self.conflict = score(self.samples.logprobs, self.proxy_rewards, s.num_generations)
        self.pool_gold = self.gold.score(self.samples.completion_prompts, self.samples.completions)
        # Where the proxy's rewards disagree with gold: what the gold-guided upper bound selects by.
        self.gold_conflict = score(self.pool_gold, self.proxy_rewards, s.num_generations)
        self.probe = sample_completions(self.policy, self.tokenizer, self.held_out,
                                        num_generations=s.probe_generations, temperature=s.temperature,
                                        max_new_tokens=s.max_new_tokens, seed=20_000 + self.seed)
        self.probe_gold = self.gold.score(self.probe.completion_prompts, self.probe.completions)
        self._reward_models: dict[tuple[int, ...] | None, Any] = {None: self.proxy}

    # -- arms ----------------------------------------------------------------------------------
    def selection(self, arm: Arm, budget: int, matched: int) -> np.ndarray:
        if arm.rule == "none":
            return np.zeros(0, dtype=np.int64)
        if arm.rule == "pool":
            return np.arange(len(self.pool), dtype=np.int64)
        if arm.rule == "gold":
            return select(self.gold_conflict, budget=budget, strategy="pacs")
        if arm.strategy is None:
            raise ValueError(f"arm {arm.name} selects by {arm.rule} without a strategy")
        if arm.rule == "threshold":
            # The paper's rule may well pick most of the pool; the report gives how many it picked.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ShfcasSelectionWarning)
                return select(self.conflict, threshold=self.settings.threshold, strategy=arm.strategy)
        size = matched if arm.rule == "matched" else budget
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        return select(self.conflict, budget=size, strategy=arm.strategy, seed=self.seed)

    def gold_precision(self, selected: np.ndarray) -> float:
        """The share of ``selected`` that the gold-guided selection of the same size also picks."""
        if selected.size == 0:
            return float("nan")
        guided = select(self.gold_conflict, budget=int(selected.size), strategy="pacs")
        return float(np.isin(selected, guided).mean())

    def new_pairs(self, selected: np.ndarray) -> Dataset:
        n = self.settings.num_generations
        rows = np.concatenate([np.arange(g * n, g * n + n) for g in selected]) if selected.size else np.zeros(0, int)
        prompts = [self.samples.completion_prompts[i] for i in rows]
        completions = [self.samples.completions[i] for i in rows]
        sizes = np.full(selected.size, n, dtype=np.int64)
        return preference_pairs(prompts, completions, self.pool_gold[rows], sizes).cast(self.preference_data.features)

    def reward_model(self, arm: Arm, selected: np.ndarray) -> Any:
        """The proxy (no retraining), or a reward model retrained from scratch; shared by arms that select
        the same prompts."""
        key = tuple(int(g) for g in sorted(selected)) if arm.retrain else None
        if key not in self._reward_models:
            data = concatenate_datasets([self.preference_data, self.new_pairs(selected)])
            # Another initialisation and data order than the proxy's: a retrain, not a replay of the proxy.
            seed = self.seed + 1
            set_seed(seed)
            start = copy.deepcopy(self.reward_init) if self.settings.policy_model else fresh_copy(self.reward_init, seed)
            args = self.reward_args("reward")
            args.seed = args.data_seed = seed
            self._reward_models[key] = train_reward_model(start, self.tokenizer, data, args)
        return self._reward_models[key]

    def refine(self, arm: Arm, reward: RewardModelOracle) -> Any:
        policy = copy.deepcopy(self.policy)
        set_seed(self.seed + 2)
        if arm.policy == "rso":
            rewards = reward.score(self.samples.completion_prompts, self.samples.completions)
            pairs = rso_pairs(self.samples, rewards, self.settings.rso_accepted, self.settings.rso_beta, self.seed)
            return refine_policy_dpo(policy, self.tokenizer, pairs, self.dpo_args("policy"))
        prompts = Dataset.from_dict({"prompt": self.pool})
        return refine_policy_grpo(policy, self.tokenizer, reward, prompts, self.grpo_args("policy"))

    def row(self, arm: str, policy: Any, reward_model: Any, selected: np.ndarray | None, **extra: Any) -> dict:
        s = self.settings
        evaluation = evaluate_policy(policy, self.tokenizer, self.held_out, self.held_out_categories, self.gold,
                                     num_generations=s.num_generations, temperature=s.temperature,
                                     max_new_tokens=s.max_new_tokens, seed=30_000 + self.seed)
        probe_rewards = RewardModelOracle(reward_model, self.tokenizer).score(
            self.probe.completion_prompts, self.probe.completions
        )
        agreement, best_of_n = reward_model_agreement(probe_rewards, self.probe_gold, s.probe_generations)
        overall, per_category = evaluation["overall"], evaluation["per_category"]
        categories = [self.task.category_of(self.pool[g]) for g in (selected if selected is not None else [])]
        return {
            "variant": self.variant,
            "seed": self.seed,
            "arm": arm,
            "budget": s.budget,
            "rounds": 1,
            **extra,
            "selected": None if selected is None else int(selected.size),
            "gold_precision": None if selected is None else self.gold_precision(selected),
            "selected_coverage": [coverage_of(category) for category in categories],
            "gold": overall["mean_score"],
            "proxy_blind_gold": float(np.mean([per_category[c]["mean_score"] for c in PROXY_BLIND_CATEGORIES])),
            "gold_by_category": {category: summary["mean_score"] for category, summary in per_category.items()},
            "conflict_vs_gold": overall["mean_abs_pacs"],
            "tau_vs_gold": overall["mean_tau"],
            "degenerate_prompt_share": overall["degenerate_share"],
            "degenerate_completion_share": overall["degenerate_completion_share"],
            "collapsed": bool(overall["degenerate_completion_share"] > COLLAPSE_SHARE),
            "rm_agreement": agreement,
            "best_of_n_gold": best_of_n,
        }

    def run_arm(self, arm: Arm, budget: int, matched: int) -> dict:
        selected = self.selection(arm, budget, matched)
        reward = self.reward_model(arm, selected)
        policy = self.refine(arm, RewardModelOracle(reward, self.tokenizer))
        row = self.row(arm.name, policy, reward, selected if arm.gets_feedback else None, budget=budget)
        if not arm.gets_feedback:
            row["selected"], row["selected_coverage"] = 0, []
        return row

    def run_rounds(self, arm: Arm) -> dict:
        """The multi-round variant: :class:`SHFCASLoop` itself, ``rounds`` rounds of ``budget`` prompts."""
        s = self.settings
        loop = SHFCASLoop(
            SHFCASConfig(output_dir=str(self.work_dir / f"rounds_{arm.name}"), num_rounds=s.rounds,
                         strategy=arm.strategy, budget=s.budget, num_generations=s.num_generations,
                         temperature=s.temperature, max_new_tokens=s.max_new_tokens,
                         eval_num_generations=s.num_generations, seed=self.seed, progress=False),
            copy.deepcopy(self.policy), self.tokenizer, RewardModelOracle(copy.deepcopy(self.proxy), self.tokenizer),
            self.gold, self.preference_data, self.pool, self.held_out, self.held_out_categories,
            reward_args=self.reward_args("rounds_reward"), policy_args=self.grpo_args("rounds_policy"),
        )
        loop.run()
        selected = np.concatenate([
            np.asarray(json.loads((loop.round_dir(r) / "selected.json").read_text()), dtype=np.int64)
            for r in range(s.rounds)
        ])
        row = self.row(arm.name, loop.policy, loop.proxy.model, None, rounds=s.rounds)
        row["selected"] = int(selected.size)
        return row

    def run(self, part: Part) -> list[dict]:
        """One part of this seed's work: "arms" (the base policy and every arm at the budget), "curve" (the
        curve arms at the other budgets) or "rounds" (the multi-round variant)."""
        s = self.settings
        self.prepare()
        by_name = {arm.name: arm for arm in ARMS}
        if part == "curve":
            return [self.run_arm(by_name[name], budget, 0) for budget in s.budget_curve for name in CURVE_ARMS]
        if part == "rounds":
            return [self.run_rounds(by_name[name]) for name in ROUND_ARMS]
        rows = [self.row("base", self.policy, self.proxy, None)]
        threshold_size = int(self.selection(by_name["threshold"], s.budget, 0).size)
        rows += [self.run_arm(arm, s.budget, threshold_size) for arm in s.arms(self.variant)]
        return rows


def _quiet_worker() -> None:
    """Hundreds of sub-second stages per seed: their library progress bars would bury the output."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _run_seed(
    settings: ExperimentSettings, variant: SharedIgnorance, seed: int, part: Part, output: Path
) -> list[dict]:
    """Run (or load) one part of one (variant, seed) and store its rows; a job of :func:`run_experiment`."""
    import torch

    path = output / "rows" / f"{variant}_seed_{seed}_{part}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    torch.set_num_threads(1)  # the models are so small that a second thread only waits on the first
    started = time.perf_counter()
    rows = _SeedRun(settings, variant, seed, output / "work" / f"{variant}_seed_{seed}_{part}").run(part)
    for row in rows:
        row["seed_seconds"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(rows))
    return rows


def run_experiment(
    settings: ExperimentSettings, output_dir: str | Path, *, jobs: int = 1, progress: bool = True
) -> list[dict[str, Any]]:
    """Run every variant, seed and arm; returns one row per (variant, seed, arm, budget, rounds).

    Each (variant, seed) is one job for its arms, one for the budget curve and one for the multi-round
    variant. Rows of finished jobs are stored under ``output_dir/rows/`` and loaded by a rerun with the same
    settings; a rerun with other settings is refused (``ShfcasValueError``) before any training.

    Args:
        settings: an :class:`ExperimentSettings`.
        output_dir: the run directory.
        jobs: seeds run at once, each in its own process on one CPU thread (on a GPU, keep 1).
        progress: a progress bar over seeds.
    """
    output = Path(output_dir)
    recorded = {key: value for key, value in settings.to_dict().items() if key != "report_to"}
    claim_output_dir(output, {**recorded, "settings_hash": settings.settings_hash()})
    parts: list[tuple[SharedIgnorance, Part]] = [(variant, "arms") for variant in settings.variants]
    if settings.budget_curve:
        parts.append((settings.variants[0], "curve"))
    if settings.rounds > 1:
        parts.append((settings.variants[0], "rounds"))
    work = [(variant, seed, part) for variant, part in parts for seed in range(settings.num_seeds)]
    bar = tqdm(total=len(work), desc="experiment", unit="seed", disable=None if progress else True)
    results: dict[tuple[SharedIgnorance, int, Part], list[dict]] = {}
    try:
        if jobs <= 1:
            for job in work:
                results[job] = _run_seed(settings, *job, output)
                bar.update()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # "spawn": a forked child would inherit torch's thread pools and locks mid-state.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_quiet_worker) as pool:
                futures = {pool.submit(_run_seed, settings, *job, output): job for job in work}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
    return [row for key in work for row in results[key]]
