"""Policy refinement: GRPO against a (refined) reward model, or DPO on the new preference pairs.

TRL removed PPO, which the paper used; GRPO is its online replacement here. When the tokenizer has a
chat template, prompts (and DPO's answers) go to TRL as conversations, so TRL applies the template; oracles
still receive the plain prompt and completion texts.

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

import contextlib
import copy
import tempfile
from collections.abc import Iterator
from typing import Any, Sequence

from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

from ._training import train_and_return_model
from .oracles import Oracle

__all__ = ["refine_policy_grpo", "refine_policy_dpo", "oracle_reward_function"]


def _has_chat_template(processing_class: Any) -> bool:
    return bool(getattr(processing_class, "chat_template", None))


def _text(message: Any) -> str:
    """The text of a plain prompt/completion, or of the last turn of a conversation."""
    return message if isinstance(message, str) else message[-1]["content"]


def _user_turn(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _assistant_turn(completion: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": completion}]


def oracle_reward_function(oracle: Oracle, name: str = "reward_model"):
    """An oracle as a GRPO reward function (``prompts``, ``completions`` -> list of floats); conversations
    are scored by the text of their last turn."""

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return oracle.score([_text(p) for p in prompts], [_text(c) for c in completions]).tolist()

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

    ``train_dataset`` needs a ``prompt`` column of plain texts. With ``args.beta > 0`` the KL term is
    taken toward ``model`` as it is when the call starts (the base policy). Returns the refined policy,
    in eval mode.
    """
    if "prompt" not in train_dataset.column_names:
        raise ValueError(f"train_dataset needs a 'prompt' column, got {train_dataset.column_names}")
    if _has_chat_template(processing_class):
        train_dataset = train_dataset.map(lambda row: {"prompt": _user_turn(row["prompt"])})
    with _reference_loadable(model, needed=args.beta != 0.0):
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=oracle_reward_function(reward),
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=list(callbacks),
        )
    return train_and_return_model(trainer)


@contextlib.contextmanager
def _reference_loadable(model: Any, needed: bool) -> Iterator[None]:
    """Let GRPOTrainer build its KL reference from ``model``'s current weights.

    GRPOTrainer takes no reference model: with ``beta > 0`` it loads one from ``model.config._name_or_path``,
    which is empty (a crash) for a model built in memory, or names the checkpoint the policy started from
    rather than the policy being refined. The policy is saved to a temporary directory and named there
    while the trainer is built.
    """
    if not needed:
        yield
        return
    original = model.config._name_or_path
    with tempfile.TemporaryDirectory(prefix="shfcas-reference-") as directory:
        model.save_pretrained(directory)
        model.config._name_or_path = directory
        try:
            yield
        finally:
            model.config._name_or_path = original


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
    pairs = train_dataset.select_columns(["prompt", "chosen", "rejected"])
    if _has_chat_template(processing_class):
        pairs = pairs.map(
            lambda row: {
                "prompt": _user_turn(row["prompt"]),
                "chosen": _assistant_turn(row["chosen"]),
                "rejected": _assistant_turn(row["rejected"]),
            }
        )
    trainer = DPOTrainer(
        model=model,
        # An explicit frozen copy: TRL would otherwise reload the reference from model.name_or_path.
        ref_model=copy.deepcopy(model).eval(),
        args=args,
        train_dataset=pairs,
        processing_class=processing_class,
        callbacks=list(callbacks),
    )
    return train_and_return_model(trainer)
