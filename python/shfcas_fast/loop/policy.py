"""Policy refinement: GRPO against a (refined) reward model, or DPO on the new preference pairs.

TRL removed PPO, which the paper used; GRPO is its online replacement here (SPEC section 3, step 8).

Example:
```python
>>> import tempfile
>>> from datasets import Dataset
>>> from trl import GRPOConfig
>>> from shfcas_fast.loop.oracles import CallableOracle
>>> from shfcas_fast.loop.policy import refine_policy_grpo
>>> from shfcas_fast.loop.synthetic import build_tokenizer, tiny_causal_lm
>>> tokenizer = build_tokenizer()
>>> oracle = CallableOracle(lambda prompts, completions: [len(c) for c in completions])
>>> with tempfile.TemporaryDirectory() as output_dir:
...     args = GRPOConfig(output_dir=output_dir, max_steps=1, per_device_train_batch_size=4, num_generations=4,
...                       max_completion_length=3, report_to="none", save_strategy="no", use_cpu=True, bf16=False,
...                       disable_tqdm=True)
...     policy = refine_policy_grpo(tiny_causal_lm(tokenizer, seed=0), tokenizer, oracle,
...                                 Dataset.from_dict({"prompt": ["drugs : how get -> "]}), args)
>>> policy.training
False

```
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

from ._training import train_and_return_model
from .oracles import Oracle

__all__ = ["refine_policy_grpo", "refine_policy_dpo", "oracle_reward_function"]


def oracle_reward_function(oracle: Oracle, name: str = "reward_model"):
    """An oracle as a GRPO reward function (``prompts``, ``completions`` -> list of floats)."""

    def reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return oracle.score(prompts, completions).tolist()

    reward.__name__ = name  # GRPO logs each reward function under its name
    return reward


def refine_policy_grpo(
    model: Any,
    processing_class: Any,
    reward: Oracle,
    train_dataset: Dataset,
    args: GRPOConfig,
    callbacks: Sequence[TrainerCallback] = (),
) -> Any:
    """Online RL with TRL's ``GRPOTrainer``, rewarded by ``reward`` (e.g. a :class:`RewardModelOracle`).

    ``train_dataset`` needs a ``prompt`` column. Returns the refined policy, in eval mode.
    """
    if "prompt" not in train_dataset.column_names:
        raise ValueError(f"train_dataset needs a 'prompt' column, got {train_dataset.column_names}")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=oracle_reward_function(reward),
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        callbacks=list(callbacks),
    )
    return train_and_return_model(trainer)


def refine_policy_dpo(
    model: Any,
    processing_class: Any,
    train_dataset: Dataset,
    args: DPOConfig,
    callbacks: Sequence[TrainerCallback] = (),
) -> Any:
    """Offline refinement with TRL's ``DPOTrainer`` on preference pairs (``prompt``, ``chosen``, ``rejected``).

    Returns the refined policy, in eval mode.
    """
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty; DPO needs at least one preference pair")
    trainer = DPOTrainer(
        model=model,
        # An explicit frozen copy: TRL would otherwise reload the reference from model.name_or_path.
        ref_model=copy.deepcopy(model).eval(),
        args=args,
        train_dataset=train_dataset.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=processing_class,
        callbacks=list(callbacks),
    )
    return train_and_return_model(trainer)
