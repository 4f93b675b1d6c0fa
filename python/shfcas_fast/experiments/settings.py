"""What the SHF-CAS experiment runs: the testbed's sizes, the trainers' settings and the arms.

Example:
```python
>>> from shfcas_fast.experiments.settings import ExperimentSettings
>>> settings = ExperimentSettings.preset("cpu")
>>> settings.budget, [arm.name for arm in settings.arms("different")][:4]
(12, ['none', 'retrain', 'random', 'pacs'])
>>> settings.settings_hash() == ExperimentSettings.preset("cpu").settings_hash()
True

```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal, get_args

from ..errors import ShfcasValueError
from ..scoring import DEFAULT_PACS_THRESHOLD, Strategy
from ..loop.synthetic import SharedIgnorance

__all__ = ["ARMS", "CORE_ARMS", "CURVE_ARMS", "ROUND_ARMS", "Arm", "ExperimentSettings", "Preset"]

Preset = Literal["cpu", "gpu", "fast"]

#: How an arm chooses its feedback prompts, given the engine's strategy (if any):
#: "budget": the top ``budget`` under the strategy (random: ``budget`` drawn uniformly);
#: "threshold": every prompt above the paper's threshold (mean |PACS| > 1.0);
#: "matched": as many prompts as the seed's "threshold" arm chose, under the strategy (random);
#: "gold": the ``budget`` prompts where the proxy's rewards disagree most with the gold scores (an upper
#: bound no real selection can reach: it reads the labels first); "pool": every prompt; "none": no feedback.
SelectionRule = Literal["budget", "threshold", "matched", "gold", "pool", "none"]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm of the experiment.

    Args:
        name: its label in tables and plots.
        rule, strategy: how it selects prompts for gold feedback (see ``SelectionRule``).
        retrain: retrain the reward model from scratch on the original data plus the new pairs (without
            it, the policy is refined against the proxy as it is).
        policy: ``"grpo"`` (online, against the reward model) or ``"rso"`` (statistical rejection sampling
            toward the reward-optimal policy from the base policy's samples, pairs ranked by the reward
            model, then DPO: Liu et al. 2023, arXiv 2309.06657).
    """

    name: str
    rule: SelectionRule
    strategy: Strategy | None = None
    retrain: bool = True
    policy: Literal["grpo", "rso"] = "grpo"

    @property
    def gets_feedback(self) -> bool:
        return self.rule != "none"


ARMS = (
    Arm("none", "none", retrain=False),
    Arm("retrain", "none"),
    Arm("random", "budget", "random"),
    Arm("pacs", "budget", "pacs"),
    Arm("kendall", "budget", "kendall"),
    Arm("threshold", "threshold", "pacs"),
    Arm("threshold_random", "matched", "random"),
    Arm("gold", "gold"),
    Arm("pool", "pool"),
    Arm("rso", "none", retrain=False, policy="rso"),
    Arm("rso_random", "budget", "random", policy="rso"),
)
#: The arms of the second shared-ignorance variant (the first runs every arm).
CORE_ARMS = ("none", "retrain", "random", "pacs", "gold", "pool")
#: The arms of the budget curve and of the multi-round variant (first variant only).
CURVE_ARMS = ("random", "pacs")
ROUND_ARMS = ("random", "pacs")

_TRAINER_PRESETS: dict[str, dict[str, Any]] = {
    # fp32 on the CPU: TRL's default bf16 is refused there, and the models are tiny.
    "cpu": {"use_cpu": True, "bf16": False, "gradient_checkpointing": False},
    "gpu": {"bf16": True, "gradient_checkpointing": False},
}


@dataclasses.dataclass(frozen=True)
class ExperimentSettings:
    """Every setting of :func:`~shfcas_fast.experiments.run_experiment` that changes its results.

    Args:
        num_seeds: seeds; each trains its own base policy and proxy, and every arm starts from them.
        budget: prompts sent to the gold oracle by the budgeted arms.
        budget_curve: further budgets at which the ``CURVE_ARMS`` run, first variant only (empty: none).
        rounds: rounds of the multi-round variant of the ``ROUND_ARMS``, first variant only (1: none).
        variants: the shared-ignorance variants to run ("same": both models make the same mistakes in
            the categories neither saw; "different": they make different ones); the first runs every
            arm, the others the ``CORE_ARMS``.
        pool_per_category, eval_per_category: mining-pool and held-out prompts per category (disjoint).
        num_generations, temperature, max_new_tokens: sampling of the pool and of held-out evaluation.
        probe_generations: base-policy completions per held-out prompt on which each reward model is
            judged (agreement with gold, best-of-n gold).
        policy_texts, policy_epochs: base-policy training (pre-training + SFT stand-in).
        preference_pairs: the proxy's biased preference data.
        reward_epochs, reward_learning_rate, reward_batch_size: reward-model training (the proxy and every
            retraining). The CPU default (2 epochs) does not converge; see docs/demo.md.
        policy_steps, policy_learning_rate, policy_batch_size: policy refinement (GRPO or RSO's DPO).
        grpo_beta: GRPO's KL coefficient toward the base policy.
        rso_beta, rso_accepted: RSO's temperature (reward units) and accepted samples per prompt.
        device: ``"cpu"`` or ``"gpu"`` trainer settings (precision, device).
        policy_model: a Hugging Face causal LM to start from (its tokenizer too) instead of the tiny
            in-process GPT-2; the reward models start from the same checkpoint.
        report_to: TRL/transformers ``report_to`` of every trainer.
    """

    num_seeds: int = 6
    budget: int = 12
    budget_curve: tuple[int, ...] = (4, 40)
    rounds: int = 1
    variants: tuple[SharedIgnorance, ...] = ("different", "same")
    pool_per_category: int = 8
    eval_per_category: int = 10
    num_generations: int = 8
    temperature: float = 0.7
    max_new_tokens: int = 6
    probe_generations: int = 16
    policy_texts: int = 3000
    policy_epochs: int = 3
    preference_pairs: int = 600
    reward_epochs: float = 2.0
    reward_learning_rate: float = 1e-3
    reward_batch_size: int = 32
    policy_steps: int = 30
    policy_learning_rate: float = 5e-4
    policy_batch_size: int = 16
    grpo_beta: float = 0.05
    rso_beta: float = 0.5
    rso_accepted: int = 4
    device: Literal["cpu", "gpu"] = "cpu"
    policy_model: str | None = None
    report_to: str = "none"

    def __post_init__(self) -> None:
        for name in ("num_seeds", "budget", "rounds", "pool_per_category", "eval_per_category", "num_generations",
                     "max_new_tokens", "probe_generations", "policy_steps", "rso_accepted"):
            if getattr(self, name) < 1:
                raise ShfcasValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_seeds < 2:
            raise ShfcasValueError(f"num_seeds must be >= 2 for paired statistics, got {self.num_seeds}")
        pool_size = self.pool_per_category * 10
        for budget in (self.budget, *self.budget_curve):
            if not 1 <= budget <= pool_size:
                raise ShfcasValueError(f"budgets must be in [1, {pool_size}] (the pool), got {budget}")
        for variant in self.variants:
            if variant not in get_args(SharedIgnorance):
                raise ShfcasValueError(f'variants must be "same" or "different", got {variant!r}')
        if not self.variants:
            raise ShfcasValueError("variants must name at least one shared-ignorance variant")
        if self.device not in _TRAINER_PRESETS:
            raise ShfcasValueError(f'device must be "cpu" or "gpu", got {self.device!r}')
        if self.policy_batch_size % self.num_generations:
            raise ShfcasValueError(
                f"policy_batch_size ({self.policy_batch_size}) must be a multiple of num_generations "
                f"({self.num_generations}): GRPO groups the completions of one prompt in a batch"
            )

    @classmethod
    def preset(cls, name: Preset, **overrides: Any) -> ExperimentSettings:
        """``"cpu"``: the default, minutes on two CPU cores. ``"fast"``: a smoke test (seconds, no
        conclusions). ``"gpu"``: one GPU, a real small model (downloads ``EleutherAI/pythia-70m``)."""
        if name == "cpu":
            base = cls()
        elif name == "fast":
            base = cls(num_seeds=2, budget=2, budget_curve=(), variants=("different",), pool_per_category=2,
                       eval_per_category=1, probe_generations=4, policy_texts=400, policy_epochs=1,
                       preference_pairs=100, reward_epochs=1.0, policy_steps=2, max_new_tokens=4)
        elif name == "gpu":
            base = cls(num_seeds=10, budget_curve=(4, 40), rounds=3, max_new_tokens=8, policy_steps=100,
                       policy_texts=6000, policy_epochs=2, device="gpu", policy_model="EleutherAI/pythia-70m",
                       reward_learning_rate=2e-5, policy_learning_rate=5e-6, grpo_beta=0.04)
        else:
            raise ShfcasValueError(f'preset must be "cpu", "gpu" or "fast", got {name!r}')
        return dataclasses.replace(base, **overrides)

    def arms(self, variant: SharedIgnorance) -> tuple[Arm, ...]:
        """Every arm in the first variant; the core arms in the others (to keep the default run short)."""
        if variant == self.variants[0]:
            return ARMS
        return tuple(arm for arm in ARMS if arm.name in CORE_ARMS)

    @property
    def threshold(self) -> float:
        """The paper's selection threshold on mean |PACS|."""
        return DEFAULT_PACS_THRESHOLD

    def trainer_settings(self) -> dict[str, Any]:
        """Settings shared by every TRL config of the run (device, precision, logging)."""
        return {
            **_TRAINER_PRESETS[self.device],
            "report_to": self.report_to,
            "save_strategy": "no",
            "logging_strategy": "no" if self.report_to == "none" else "steps",
            "disable_tqdm": True,
        }

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def settings_hash(self) -> str:
        """A short hash of every setting (``report_to`` aside: it changes no result)."""
        recorded = {key: value for key, value in self.to_dict().items() if key != "report_to"}
        return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:12]
