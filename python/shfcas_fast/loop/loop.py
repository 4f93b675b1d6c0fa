"""The SHF-CAS loop (SPEC section 3) as a resumable runner over a run directory.

Example:
```python
>>> from shfcas_fast.loop.loop import SHFCASConfig
>>> config = SHFCASConfig(output_dir="/tmp/shfcas-run", strategy="random", budget=4)
>>> config.num_generations, config.temperature
(8, 0.7)

```

One round = ``sample`` (N completions per pool prompt, policy log-probs, proxy rewards), ``score``
(PACS, conflict, Kendall), ``select`` (budget/threshold under the strategy), ``feedback`` (the oracle
scores every completion of the selected prompts), ``pairs``, ``reward_model`` (retrained on the
original preference data plus every new pair so far), ``policy`` (GRPO against the refined reward
model, or DPO on the new pairs) and ``evaluate`` (held-out prompts, gold oracle). Each stage writes its
artefacts under ``<output_dir>/round_<r>/`` and then, atomically and last, ``<stage>.done.json``; a
rerun loads finished stages instead of redoing them, so a run killed anywhere resumes where it stopped.
``<output_dir>/config.json`` records the configuration: a rerun with a different one is refused rather
than mixed with the old run's artefacts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import set_seed
from trl import DPOConfig, GRPOConfig, RewardConfig

from ..io import atomic_output
from ..scoring import ConflictScores, score, select
from .evaluation import evaluate_policy
from .oracles import Oracle, RewardModelOracle
from .policy import refine_policy_dpo, refine_policy_grpo
from .preference import preference_pairs
from .reward_model import fresh_copy, train_reward_model
from .sampling import DEFAULT_NUM_GENERATIONS, DEFAULT_TEMPERATURE, SampledCompletions, sample_completions

__all__ = ["SHFCASConfig", "SHFCASLoop", "STAGES"]

logger = logging.getLogger(__name__)

#: Which prompts get feedback: the engine's selection strategies, or "none" (no extra feedback).
LoopStrategy = Literal["pacs", "kendall", "random", "none"]

STAGES = ("sample", "score", "select", "feedback", "pairs", "reward_model", "policy", "evaluate")


@dataclasses.dataclass
class SHFCASConfig:
    """Configuration of :class:`SHFCASLoop`.

    Args:
        output_dir: the run directory (artefacts and stage markers).
        num_rounds: rounds of sample -> ... -> evaluate.
        strategy: ``"pacs"`` (SHF-CAS), ``"kendall"``, ``"random"`` (the paper's baseline) or ``"none"``
            (no extra feedback: the policy is refined against the unchanged proxy).
        budget: prompts sent to the oracle per round (top conflict, or drawn at random).
        threshold: conflict threshold (the paper: mean |PACS| > 1.0); with ``budget``, both apply.
        num_generations, temperature, max_new_tokens, sampling_batch_size: sampling (the paper: 8, 0.7).
        reward_model_init: ``"fresh"`` retrains from a new initialisation (the paper), ``"proxy"``
            continues from the current reward model.
        reward_epochs, reward_learning_rate, reward_batch_size: ``RewardTrainer`` settings.
        policy_method: ``"grpo"`` (online, against the refined reward model) or ``"dpo"`` (offline, on the
            new pairs).
        policy_steps, policy_learning_rate, policy_batch_size: trainer settings of the policy stage.
        grpo_beta: KL coefficient of GRPO toward the starting policy.
        eval_num_generations: completions per held-out prompt in ``evaluate``.
        seed: every stage seeds from it, so a resumed stage redoes exactly what it would have done.
        progress: progress bars.
    """

    output_dir: str
    num_rounds: int = 1
    strategy: LoopStrategy = "pacs"
    budget: int | None = None
    threshold: float | None = None
    num_generations: int = DEFAULT_NUM_GENERATIONS
    temperature: float = DEFAULT_TEMPERATURE
    max_new_tokens: int = 64
    sampling_batch_size: int = 16
    reward_model_init: Literal["fresh", "proxy"] = "fresh"
    reward_epochs: float = 1.0
    reward_learning_rate: float = 1e-3
    reward_batch_size: int = 32
    policy_method: Literal["grpo", "dpo"] = "grpo"
    policy_steps: int = 20
    policy_learning_rate: float = 1e-4
    policy_batch_size: int = 16
    grpo_beta: float = 0.0
    eval_num_generations: int = 8
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in ("pacs", "kendall", "random", "none"):
            raise ValueError(f'strategy must be "pacs", "kendall", "random" or "none", got {self.strategy!r}')
        if self.strategy == "random" and self.budget is None:
            raise ValueError('strategy="random" needs a budget')
        if self.reward_model_init not in ("fresh", "proxy"):
            raise ValueError(f'reward_model_init must be "fresh" or "proxy", got {self.reward_model_init!r}')
        if self.policy_method not in ("grpo", "dpo"):
            raise ValueError(f'policy_method must be "grpo" or "dpo", got {self.policy_method!r}')
        for name in ("num_rounds", "num_generations", "max_new_tokens", "policy_steps", "eval_num_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.policy_batch_size % self.num_generations:
            raise ValueError(
                f"policy_batch_size ({self.policy_batch_size}) must be a multiple of num_generations "
                f"({self.num_generations}): GRPO groups the completions of one prompt in a batch"
            )


#: Config fields that do not change what a run computes, so a rerun may change them.
_COSMETIC_FIELDS = ("output_dir", "progress")


def _write_atomic(path: Path, text: str) -> None:
    with atomic_output(path, overwrite=True) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _claim_output_dir(output_dir: Path, config: dict[str, Any], cosmetic: Sequence[str]) -> None:
    """Record ``config`` in ``output_dir/config.json``, or, when a run is already recorded there, check that
    it had the same config (``cosmetic`` keys aside): resuming under another config would silently reuse
    artefacts that the new config would not have produced."""
    path = output_dir / "config.json"
    current = json.loads(json.dumps(config))  # tuples -> lists, as they were stored
    if not path.exists():
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(current, indent=2))
        return
    stored = json.loads(path.read_text(encoding="utf-8"))
    for key in dict.fromkeys([*current, *stored]):
        if key not in cosmetic and stored.get(key) != current.get(key):
            raise ValueError(
                f"{output_dir} holds a run with another config ({key}={stored.get(key)!r} there, "
                f"{current.get(key)!r} now): choose another output directory, or delete this one to start over"
            )


class SHFCASLoop:
    """Runs SHF-CAS rounds, resumably, with TRL trainers.

    Example:
    ```python
    >>> from shfcas_fast.loop import SHFCASConfig, SHFCASLoop  # doctest: +SKIP
    >>> loop = SHFCASLoop(config, policy, tokenizer, proxy, oracle, preference_data,
    ...                   pool_prompts, eval_prompts, eval_categories)  # doctest: +SKIP
    >>> results = loop.run()  # one evaluation dict per round  # doctest: +SKIP

    ```

    Args:
        config: a :class:`SHFCASConfig`.
        policy: the base (SFT) causal LM; refined copies are saved per round.
        processing_class: the tokenizer of the policy and the reward model.
        proxy: the proxy reward model as a :class:`RewardModelOracle` (``is_cost`` handled there).
        oracle: the feedback oracle (the human, or a gold model).
        preference_data: the proxy's original preference data (``prompt``, ``chosen``, ``rejected``,
            ``margin``), which every retraining starts from. Reward-oriented whatever ``proxy.is_cost``
            says: ``chosen`` is the better answer.
        pool_prompts: prompts to mine for conflict.
        eval_prompts, eval_categories: held-out prompts and their categories.
        eval_oracle: gold scorer of the evaluation (defaults to ``oracle``).
        stage_hook: called as ``stage_hook(round, stage)`` after a stage has written its artefacts and
            before its marker: for logging, or for simulating a crash in tests.
    """

    def __init__(
        self,
        config: SHFCASConfig,
        policy: Any,
        processing_class: Any,
        proxy: RewardModelOracle,
        oracle: Oracle,
        preference_data: Dataset,
        pool_prompts: Sequence[str],
        eval_prompts: Sequence[str],
        eval_categories: Sequence[str],
        *,
        eval_oracle: Oracle | None = None,
        stage_hook: Callable[[int, str], None] | None = None,
    ) -> None:
        if not isinstance(proxy, RewardModelOracle):
            raise TypeError(f"proxy must be a RewardModelOracle, got {type(proxy).__name__}")
        if proxy.is_cost and config.reward_model_init == "proxy":
            # Refinement trains a reward (higher = better): starting from a cost model's weights inverts it.
            raise ValueError(
                'reward_model_init="proxy" needs a reward model, but proxy.is_cost=True; use reward_model_init="fresh"'
            )
        self.config = config
        self.policy = policy
        self.processing_class = processing_class
        self.proxy = proxy
        self.oracle = oracle
        self.preference_data = preference_data
        self.pool_prompts = list(pool_prompts)
        self.eval_prompts = list(eval_prompts)
        self.eval_categories = list(eval_categories)
        self.eval_oracle = eval_oracle if eval_oracle is not None else oracle
        self.stage_hook = stage_hook

    # -- run directory -------------------------------------------------------------------------
    def round_dir(self, round_index: int) -> Path:
        return Path(self.config.output_dir) / f"round_{round_index}"

    def _marker(self, round_index: int, stage: str) -> Path:
        return self.round_dir(round_index) / f"{stage}.done.json"

    def is_done(self, round_index: int, stage: str) -> bool:
        return self._marker(round_index, stage).exists()

    def _finish(self, round_index: int, stage: str, started: float) -> None:
        if self.stage_hook is not None:
            self.stage_hook(round_index, stage)
        summary = {"stage": stage, "round": round_index, "seconds": time.perf_counter() - started}
        _write_atomic(self._marker(round_index, stage), json.dumps(summary))
        logger.info("round %d: %s done in %.1f s", round_index, stage, summary["seconds"])

    def _seed(self, round_index: int, stage: str) -> int:
        """The seed a stage sets at its start: a function of (seed, round, stage) only, never of what ran
        earlier in the process, so a resumed stage redoes exactly what an uninterrupted run did."""
        return self.config.seed + 1000 * round_index + STAGES.index(stage)

    def _trainer_kwargs(self, round_index: int, stage: str, learning_rate: float, batch_size: int) -> dict:
        return {
            "output_dir": str(self.round_dir(round_index) / f"{stage}_trainer"),
            "learning_rate": learning_rate,
            "per_device_train_batch_size": batch_size,
            "seed": self._seed(round_index, stage),
            "data_seed": self._seed(round_index, stage),
            "report_to": "none",
            "save_strategy": "no",
            "logging_strategy": "no",
            "use_cpu": True,
            # TRL defaults to bf16, and the trainer leaves a bf16-autocast forward on the in-memory model:
            # the model the next stage uses would then score differently from the same model saved and
            # reloaded by a resumed run. fp32 throughout keeps a resumed run equal to an uninterrupted one.
            "bf16": False,
            "gradient_checkpointing": False,  # TRL turns it on by default; it only costs time on tiny models
            "disable_tqdm": not self.config.progress,
        }

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) every round; returns each round's evaluation."""
        _claim_output_dir(Path(self.config.output_dir), dataclasses.asdict(self.config), _COSMETIC_FIELDS)
        new_pairs: list[Dataset] = []
        results = []
        for round_index in range(self.config.num_rounds):
            self.round_dir(round_index).mkdir(parents=True, exist_ok=True)
            samples, rewards = self._sample(round_index)
            conflict = self._score(round_index, samples, rewards)
            selected = self._select(round_index, conflict)
            feedback = self._feedback(round_index, samples, selected)
            new_pairs.append(self._pairs(round_index, samples, selected, feedback))
            self._refine_reward_model(round_index, new_pairs)
            self._refine_policy(round_index, new_pairs[-1])
            results.append(self._evaluate(round_index))
        return results

    def _sample(self, round_index: int) -> tuple[SampledCompletions, np.ndarray]:
        path = self.round_dir(round_index) / "samples.json"
        if self.is_done(round_index, "sample"):
            data = json.loads(path.read_text(encoding="utf-8"))
            return SampledCompletions.from_dict(data), np.asarray(data["rewards"], dtype=np.float64)
        started = time.perf_counter()
        cfg = self.config
        samples = sample_completions(
            self.policy,
            self.processing_class,
            self.pool_prompts,
            num_generations=cfg.num_generations,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.sampling_batch_size,
            seed=self._seed(round_index, "sample"),
            progress=cfg.progress,
        )
        rewards = self.proxy.score(samples.completion_prompts, samples.completions)
        _write_atomic(path, json.dumps({**samples.to_dict(), "rewards": rewards.tolist()}))
        self._finish(round_index, "sample", started)
        return samples, rewards

    def _score(self, round_index: int, samples: SampledCompletions, rewards: np.ndarray) -> ConflictScores:
        path = self.round_dir(round_index) / "scores.npz"
        if self.is_done(round_index, "score"):
            with np.load(path) as stored:
                return ConflictScores(**{name: stored[name] for name in stored.files})
        started = time.perf_counter()
        conflict = score(samples.logprobs, rewards, samples.num_generations)
        with path.open("wb") as handle:
            np.savez(handle, **dataclasses.asdict(conflict))
        self._finish(round_index, "score", started)
        return conflict

    def _select(self, round_index: int, conflict: ConflictScores) -> np.ndarray:
        path = self.round_dir(round_index) / "selected.json"
        if self.is_done(round_index, "select"):
            return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.int64)
        started = time.perf_counter()
        cfg = self.config
        if cfg.strategy == "none":
            selected = np.zeros(0, dtype=np.int64)
        else:
            selected = select(
                conflict,
                budget=cfg.budget,
                threshold=cfg.threshold,
                strategy=cfg.strategy,
                seed=self._seed(round_index, "select"),
            )
        _write_atomic(path, json.dumps(selected.tolist()))
        self._finish(round_index, "select", started)
        return selected

    def _selected_items(self, samples: SampledCompletions, selected: np.ndarray) -> tuple[list[str], list[str]]:
        """Prompts and completions of every completion of the selected prompts, grouped."""
        n = samples.num_generations
        prompts = [samples.prompts[g] for g in selected for _ in range(n)]
        completions = [samples.completions[g * n + i] for g in selected for i in range(n)]
        return prompts, completions

    def _feedback(self, round_index: int, samples: SampledCompletions, selected: np.ndarray) -> np.ndarray:
        path = self.round_dir(round_index) / "feedback.json"
        if self.is_done(round_index, "feedback"):
            return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float64)
        started = time.perf_counter()
        prompts, completions = self._selected_items(samples, selected)
        scores = self.oracle.score(prompts, completions) if prompts else np.zeros(0, dtype=np.float64)
        _write_atomic(path, json.dumps(np.asarray(scores, dtype=np.float64).tolist()))
        self._finish(round_index, "feedback", started)
        return scores

    def _pairs(self, round_index: int, samples: SampledCompletions, selected: np.ndarray, feedback: np.ndarray) -> Dataset:
        # JSON rather than save_to_disk: datasets cannot load back an empty saved dataset (no selection).
        path = self.round_dir(round_index) / "pairs.json"
        features = self.preference_data.features
        if self.is_done(round_index, "pairs"):
            rows = json.loads(path.read_text(encoding="utf-8"))
            return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)
        started = time.perf_counter()
        prompts, completions = self._selected_items(samples, selected)
        sizes = np.full(len(selected), samples.num_generations, dtype=np.int64)
        pairs = preference_pairs(prompts, completions, feedback, sizes).cast(features)
        _write_atomic(path, json.dumps(pairs.to_list()))
        self._finish(round_index, "pairs", started)
        return pairs

    def _refine_reward_model(self, round_index: int, new_pairs: list[Dataset]) -> None:
        path = self.round_dir(round_index) / "reward_model"
        if self.is_done(round_index, "reward_model"):
            if path.exists():
                model = type(self.proxy.model).from_pretrained(str(path)).eval()
                self.proxy = RewardModelOracle(model, self.processing_class, batch_size=self.proxy.batch_size)
            return
        started = time.perf_counter()
        cfg = self.config
        if sum(len(pairs) for pairs in new_pairs):
            seed = self._seed(round_index, "reward_model")
            set_seed(seed)
            start = fresh_copy(self.proxy.model, seed) if cfg.reward_model_init == "fresh" else self.proxy.model
            args = RewardConfig(
                num_train_epochs=cfg.reward_epochs,
                **self._trainer_kwargs(round_index, "reward_model", cfg.reward_learning_rate, cfg.reward_batch_size),
            )
            data = concatenate_datasets([self.preference_data, *new_pairs])
            model = train_reward_model(start, self.processing_class, data, args)
            model.save_pretrained(str(path))
            # A refined model is trained on oracle scores, which are higher = better.
            self.proxy = RewardModelOracle(model, self.processing_class, batch_size=self.proxy.batch_size)
        self._finish(round_index, "reward_model", started)

    def _refine_policy(self, round_index: int, pairs: Dataset) -> None:
        path = self.round_dir(round_index) / "policy"
        if self.is_done(round_index, "policy"):
            if path.exists():
                self.policy = type(self.policy).from_pretrained(str(path)).eval()
            return
        started = time.perf_counter()
        cfg = self.config
        set_seed(self._seed(round_index, "policy"))
        kwargs = self._trainer_kwargs(round_index, "policy", cfg.policy_learning_rate, cfg.policy_batch_size)
        if cfg.policy_method == "grpo":
            grpo_args = GRPOConfig(
                max_steps=cfg.policy_steps,
                num_generations=cfg.num_generations,
                max_completion_length=cfg.max_new_tokens,
                temperature=cfg.temperature,
                beta=cfg.grpo_beta,
                **kwargs,
            )
            prompts = Dataset.from_dict({"prompt": self.pool_prompts})
            self.policy = refine_policy_grpo(self.policy, self.processing_class, self.proxy, prompts, grpo_args)
            self.policy.save_pretrained(str(path))
        elif len(pairs):
            dpo_args = DPOConfig(max_steps=cfg.policy_steps, **kwargs)
            self.policy = refine_policy_dpo(self.policy, self.processing_class, pairs, dpo_args)
            self.policy.save_pretrained(str(path))
        self._finish(round_index, "policy", started)

    def _evaluate(self, round_index: int) -> dict[str, Any]:
        path = self.round_dir(round_index) / "evaluation.json"
        if self.is_done(round_index, "evaluate"):
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        cfg = self.config
        result = evaluate_policy(
            self.policy,
            self.processing_class,
            self.eval_prompts,
            self.eval_categories,
            self.eval_oracle,
            num_generations=cfg.eval_num_generations,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            seed=self._seed(round_index, "evaluate"),
            progress=cfg.progress,
        )
        _write_atomic(path, json.dumps(result, indent=2))
        self._finish(round_index, "evaluate", started)
        return result
