"""The SHF-CAS loop as a resumable runner over a run directory.

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
``<output_dir>/config.json`` records the configuration and the trainer settings: a rerun with different
ones is refused rather than mixed with the old run's artefacts.

The trainers' settings (device, precision, learning rate, steps, batch size, ``report_to``, logging) are
the TRL config objects the caller passes (``RewardConfig``, and ``GRPOConfig`` or ``DPOConfig``); the loop
only gives each stage its own ``output_dir`` and seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import set_seed
from trl import DPOConfig, GRPOConfig, RewardConfig

from ..errors import ShfcasTypeError, ShfcasValueError
from ..scoring import ConflictScores, Strategy, check_strategy, score, select
from ._training import hardware_defaults, recorded_settings, stage_args
from .evaluation import evaluate_policy
from .oracles import Oracle, RewardModelOracle
from .policy import refine_policy_dpo, refine_policy_grpo
from .preference import preference_pairs
from .reward_model import fresh_copy, train_reward_model
from .run_directory import claim_output_dir, write_text_atomic
from .sampling import DEFAULT_NUM_GENERATIONS, DEFAULT_TEMPERATURE, SampledCompletions, sample_completions

__all__ = ["SHFCASConfig", "SHFCASLoop", "STAGES"]

logger = logging.getLogger(__name__)

STAGES = ("sample", "score", "select", "feedback", "pairs", "reward_model", "policy", "evaluate")

T = TypeVar("T")


@dataclasses.dataclass
class SHFCASConfig:
    """What :class:`SHFCASLoop` computes (the trainers' settings are TRL configs passed to the loop).

    Args:
        output_dir: the run directory (artefacts and stage markers).
        num_rounds: rounds of sample -> ... -> evaluate.
        strategy: the engine's selection strategy (``"pacs"`` is SHF-CAS, ``"random"`` the paper's
            baseline, ``"kendall"``), or None: no extra feedback.
        budget: prompts sent to the oracle per round (top conflict, or drawn at random).
        threshold: conflict threshold (the paper: mean |PACS| > 1.0); with ``budget``, both apply.
        num_generations, temperature, max_new_tokens, sampling_batch_size: sampling (the paper: 8, 0.7).
        reward_model_init: ``"fresh"`` retrains from a new initialisation (the paper), ``"proxy"``
            continues from the current reward model.
        retrain_without_feedback: retrain the reward model even when a round brought no new pairs (on the
            original preference data alone): the control that separates retraining from feedback.
        eval_num_generations: completions per held-out prompt in ``evaluate``.
        seed: every stage seeds from it, so a resumed stage redoes exactly what it would have done.
        progress: progress bars.
    """

    output_dir: str
    num_rounds: int = 1
    strategy: Strategy | None = "pacs"
    budget: int | None = None
    threshold: float | None = None
    num_generations: int = DEFAULT_NUM_GENERATIONS
    temperature: float = DEFAULT_TEMPERATURE
    max_new_tokens: int = 64
    sampling_batch_size: int = 16
    reward_model_init: Literal["fresh", "proxy"] = "fresh"
    retrain_without_feedback: bool = False
    eval_num_generations: int = 8
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy is not None:
            check_strategy(self.strategy, budget=self.budget, threshold=self.threshold)
        if self.reward_model_init not in ("fresh", "proxy"):
            raise ShfcasValueError(f'reward_model_init must be "fresh" or "proxy", got {self.reward_model_init!r}')
        for name in ("num_rounds", "num_generations", "max_new_tokens", "eval_num_generations"):
            if getattr(self, name) < 1:
                raise ShfcasValueError(f"{name} must be >= 1, got {getattr(self, name)}")


#: Config fields that do not change what a run computes, so a rerun may change them.
_COSMETIC_FIELDS = ("output_dir", "progress")


class SHFCASLoop:
    """Runs SHF-CAS rounds, resumably, with TRL trainers.

    Example:
    ```python
    >>> from trl import GRPOConfig, RewardConfig
    >>> from shfcas_fast.loop import SHFCASConfig, SHFCASLoop  # doctest: +SKIP
    >>> loop = SHFCASLoop(config, policy, tokenizer, proxy, oracle, preference_data, pool_prompts,
    ...                   eval_prompts, eval_categories, reward_args=RewardConfig(bf16=True, report_to="wandb"),
    ...                   policy_args=GRPOConfig(max_steps=200, beta=0.04))  # doctest: +SKIP
    >>> results = loop.run()  # one evaluation dict per round  # doctest: +SKIP

    ```

    Args:
        config: a :class:`SHFCASConfig`.
        policy: the base (SFT) causal LM; refined copies are saved per round.
        processing_class: the tokenizer of the policy and the reward model; its chat template, if any, is
            applied to every prompt the policy sees.
        proxy: the proxy reward model as a :class:`RewardModelOracle` (``is_cost`` handled there).
        oracle: the feedback oracle (the human, or a gold model).
        preference_data: the proxy's original preference data (``prompt``, ``chosen``, ``rejected``,
            ``margin``), which every retraining starts from. Reward-oriented whatever ``proxy.is_cost``
            says: ``chosen`` is the better answer.
        pool_prompts: prompts to mine for conflict.
        eval_prompts, eval_categories: held-out prompts and their categories.
        reward_args: the ``RewardConfig`` of reward-model retraining (default: TRL's, in bf16 only where
            the GPU supports it).
        policy_args: a ``GRPOConfig`` (online refinement against the refined reward model) or a
            ``DPOConfig`` (offline, on the new pairs); default: GRPO with the loop's sampling settings.
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
        reward_args: RewardConfig | None = None,
        policy_args: GRPOConfig | DPOConfig | None = None,
        eval_oracle: Oracle | None = None,
        stage_hook: Callable[[int, str], None] | None = None,
    ) -> None:
        if not isinstance(proxy, RewardModelOracle):
            raise ShfcasTypeError(f"proxy must be a RewardModelOracle, got {type(proxy).__name__}")
        if proxy.is_cost and config.reward_model_init == "proxy":
            # Refinement trains a reward (higher = better): starting from a cost model's weights inverts it.
            raise ShfcasValueError(
                'reward_model_init="proxy" needs a reward model, but proxy.is_cost=True; use reward_model_init="fresh"'
            )
        if reward_args is not None and not isinstance(reward_args, RewardConfig):
            raise ShfcasTypeError(f"reward_args must be a trl.RewardConfig, got {type(reward_args).__name__}")
        if policy_args is not None and not isinstance(policy_args, (GRPOConfig, DPOConfig)):
            raise ShfcasTypeError(f"policy_args must be a trl.GRPOConfig or DPOConfig, got {type(policy_args).__name__}")
        self.config = config
        self.policy = policy
        self.processing_class = processing_class
        self.proxy = proxy
        self.oracle = oracle
        self.preference_data = preference_data
        self.pool_prompts = list(pool_prompts)
        self.eval_prompts = list(eval_prompts)
        self.eval_categories = list(eval_categories)
        self.reward_args = reward_args
        self.policy_args = policy_args
        self.eval_oracle = eval_oracle if eval_oracle is not None else oracle
        self.stage_hook = stage_hook

    # -- trainer settings ----------------------------------------------------------------------
    def reward_trainer_args(self) -> RewardConfig:
        """The reward stage's ``RewardConfig``: the one given, or TRL's defaults for this hardware."""
        return self.reward_args if self.reward_args is not None else RewardConfig(**hardware_defaults())

    def policy_trainer_args(self) -> GRPOConfig | DPOConfig:
        """The policy stage's config: the one given, or GRPO with the loop's sampling settings."""
        if self.policy_args is not None:
            return self.policy_args
        cfg = self.config
        return GRPOConfig(
            num_generations=cfg.num_generations,
            per_device_train_batch_size=cfg.num_generations,
            max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature,
            **hardware_defaults(),
        )

    # -- run directory -------------------------------------------------------------------------
    def round_dir(self, round_index: int) -> Path:
        return Path(self.config.output_dir) / f"round_{round_index}"

    def marker(self, round_index: int, stage: str) -> Path:
        """The file whose existence says that ``stage`` of round ``round_index`` finished."""
        return self.round_dir(round_index) / f"{stage}.done.json"

    def is_done(self, round_index: int, stage: str) -> bool:
        return self.marker(round_index, stage).exists()

    def stage_seed(self, round_index: int, stage: str) -> int:
        """The seed a stage sets at its start: a function of (seed, round, stage) only, never of what ran
        earlier in the process, so a resumed stage redoes exactly what an uninterrupted run did."""
        return self.config.seed + 1000 * round_index + STAGES.index(stage)

    def _stage(self, round_index: int, stage: str, load: Callable[[], T], compute: Callable[[], T]) -> T:
        """The skeleton of every stage: load a finished stage's artefacts, or seed, compute (which writes
        the artefacts), call the hook, and write the marker last."""
        if self.is_done(round_index, stage):
            return load()
        started = time.perf_counter()
        set_seed(self.stage_seed(round_index, stage))
        result = compute()
        if self.stage_hook is not None:
            self.stage_hook(round_index, stage)
        summary = {"stage": stage, "round": round_index, "seconds": time.perf_counter() - started}
        write_text_atomic(self.marker(round_index, stage), json.dumps(summary))
        logger.info("round %d: %s done in %.1f s", round_index, stage, summary["seconds"])
        return result

    def _trainer_args(self, args: Any, round_index: int, stage: str) -> Any:
        return stage_args(
            args, output_dir=str(self.round_dir(round_index) / f"{stage}_trainer"), seed=self.stage_seed(round_index, stage)
        )

    def recorded_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the loop's config and the settings of both trainers."""
        return {
            **dataclasses.asdict(self.config),
            "reward_args": recorded_settings(self.reward_trainer_args()),
            "policy_args": recorded_settings(self.policy_trainer_args()),
        }

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run (or resume) every round; returns each round's evaluation."""
        claim_output_dir(Path(self.config.output_dir), self.recorded_config(), _COSMETIC_FIELDS)
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

        def load() -> tuple[SampledCompletions, np.ndarray]:
            data = json.loads(path.read_text(encoding="utf-8"))
            return SampledCompletions.from_dict(data), np.asarray(data["rewards"], dtype=np.float64)

        def compute() -> tuple[SampledCompletions, np.ndarray]:
            cfg = self.config
            samples = sample_completions(
                self.policy,
                self.processing_class,
                self.pool_prompts,
                num_generations=cfg.num_generations,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.sampling_batch_size,
                seed=self.stage_seed(round_index, "sample"),
                progress=cfg.progress,
            )
            rewards = self.proxy.score(samples.completion_prompts, samples.completions)
            write_text_atomic(path, json.dumps({**samples.to_dict(), "rewards": rewards.tolist()}))
            return samples, rewards

        return self._stage(round_index, "sample", load, compute)

    def _score(self, round_index: int, samples: SampledCompletions, rewards: np.ndarray) -> ConflictScores:
        path = self.round_dir(round_index) / "scores.npz"

        def load() -> ConflictScores:
            with np.load(path) as stored:
                return ConflictScores(**{name: stored[name] for name in stored.files})

        def compute() -> ConflictScores:
            conflict = score(samples.logprobs, rewards, samples.num_generations)
            with path.open("wb") as handle:
                np.savez(handle, **dataclasses.asdict(conflict))
            return conflict

        return self._stage(round_index, "score", load, compute)

    def _select(self, round_index: int, conflict: ConflictScores) -> np.ndarray:
        path = self.round_dir(round_index) / "selected.json"

        def load() -> np.ndarray:
            return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.int64)

        def compute() -> np.ndarray:
            cfg = self.config
            if cfg.strategy is None:
                selected = np.zeros(0, dtype=np.int64)
            else:
                selected = select(
                    conflict,
                    budget=cfg.budget,
                    threshold=cfg.threshold,
                    strategy=cfg.strategy,
                    seed=self.stage_seed(round_index, "select"),
                )
            write_text_atomic(path, json.dumps(selected.tolist()))
            return selected

        return self._stage(round_index, "select", load, compute)

    def _selected_items(self, samples: SampledCompletions, selected: np.ndarray) -> tuple[list[str], list[str]]:
        """Prompts and completions of every completion of the selected prompts, grouped."""
        n = samples.num_generations
        prompts = [samples.prompts[g] for g in selected for _ in range(n)]
        completions = [samples.completions[g * n + i] for g in selected for i in range(n)]
        return prompts, completions

    def _feedback(self, round_index: int, samples: SampledCompletions, selected: np.ndarray) -> np.ndarray:
        path = self.round_dir(round_index) / "feedback.json"

        def load() -> np.ndarray:
            return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float64)

        def compute() -> np.ndarray:
            prompts, completions = self._selected_items(samples, selected)
            scores = self.oracle.score(prompts, completions) if prompts else np.zeros(0, dtype=np.float64)
            write_text_atomic(path, json.dumps(np.asarray(scores, dtype=np.float64).tolist()))
            return scores

        return self._stage(round_index, "feedback", load, compute)

    def _pairs(self, round_index: int, samples: SampledCompletions, selected: np.ndarray, feedback: np.ndarray) -> Dataset:
        # JSON rather than save_to_disk: datasets cannot load back an empty saved dataset (no selection).
        path = self.round_dir(round_index) / "pairs.json"
        features = self.preference_data.features

        def load() -> Dataset:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)

        def compute() -> Dataset:
            prompts, completions = self._selected_items(samples, selected)
            sizes = np.full(len(selected), samples.num_generations, dtype=np.int64)
            pairs = preference_pairs(prompts, completions, feedback, sizes).cast(features)
            write_text_atomic(path, json.dumps(pairs.to_list()))
            return pairs

        return self._stage(round_index, "pairs", load, compute)

    def _refine_reward_model(self, round_index: int, new_pairs: list[Dataset]) -> None:
        path = self.round_dir(round_index) / "reward_model"

        def use(model: Any) -> None:
            # A refined model is trained on oracle scores, which are higher = better.
            self.proxy = RewardModelOracle(model, self.processing_class, batch_size=self.proxy.batch_size)

        def load() -> None:
            if path.exists():
                use(type(self.proxy.model).from_pretrained(str(path)).eval())

        def compute() -> None:
            if not (self.config.retrain_without_feedback or any(len(pairs) for pairs in new_pairs)):
                return
            seed = self.stage_seed(round_index, "reward_model")
            start = fresh_copy(self.proxy.model, seed) if self.config.reward_model_init == "fresh" else self.proxy.model
            args = self._trainer_args(self.reward_trainer_args(), round_index, "reward_model")
            data = concatenate_datasets([self.preference_data, *new_pairs])
            model = train_reward_model(start, self.processing_class, data, args)
            model.save_pretrained(str(path))
            use(model)

        self._stage(round_index, "reward_model", load, compute)

    def _refine_policy(self, round_index: int, pairs: Dataset) -> None:
        path = self.round_dir(round_index) / "policy"

        def load() -> None:
            if path.exists():
                self.policy = type(self.policy).from_pretrained(str(path)).eval()

        def compute() -> None:
            args = self._trainer_args(self.policy_trainer_args(), round_index, "policy")
            if isinstance(args, GRPOConfig):
                prompts = Dataset.from_dict({"prompt": self.pool_prompts})
                self.policy = refine_policy_grpo(self.policy, self.processing_class, self.proxy, prompts, args)
            elif len(pairs):
                self.policy = refine_policy_dpo(self.policy, self.processing_class, pairs, args)
            else:
                return
            self.policy.save_pretrained(str(path))

        self._stage(round_index, "policy", load, compute)

    def _evaluate(self, round_index: int) -> dict[str, Any]:
        path = self.round_dir(round_index) / "evaluation.json"

        def load() -> dict[str, Any]:
            return json.loads(path.read_text(encoding="utf-8"))

        def compute() -> dict[str, Any]:
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
                seed=self.stage_seed(round_index, "evaluate"),
                progress=cfg.progress,
            )
            write_text_atomic(path, json.dumps(result, indent=2))
            return result

        return self._stage(round_index, "evaluate", load, compute)
