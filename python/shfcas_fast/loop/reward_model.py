"""Reward-model refinement with TRL's ``RewardTrainer`` (docs/method.md, section 3, step 7).

Example:
```python
>>> import tempfile
>>> from trl import RewardConfig
>>> from shfcas_fast.loop.reward_model import train_reward_model
>>> from shfcas_fast.loop.synthetic import SyntheticSafetyTask, build_tokenizer, tiny_reward_model
>>> tokenizer = build_tokenizer()
>>> with tempfile.TemporaryDirectory() as output_dir:
...     args = RewardConfig(output_dir=output_dir, max_steps=1, report_to="none", save_strategy="no", use_cpu=True,
...                         bf16=False, disable_tqdm=True)
...     model = train_reward_model(tiny_reward_model(tokenizer, seed=0), tokenizer,
...                                SyntheticSafetyTask().proxy_preference_data(8, seed=0), args)
>>> model.config.num_labels
1

```
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import RewardConfig, RewardTrainer

from ._training import train_and_return_model

__all__ = ["train_reward_model", "fresh_copy"]


def fresh_copy(model: Any, seed: int) -> Any:
    """A newly initialised model of the same architecture and config (the paper retrains from scratch)."""
    torch.manual_seed(seed)
    return type(model)(model.config)


def train_reward_model(
    model: Any,
    processing_class: Any,
    train_dataset: Dataset,
    args: RewardConfig,
    callbacks: Sequence[TrainerCallback] = (),
) -> Any:
    """Train ``model`` in place on preference pairs (``prompt``, ``chosen``, ``rejected``, ``margin``).

    Returns the trained model, in eval mode.
    """
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty; a reward model needs at least one preference pair")
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        callbacks=list(callbacks),
    )
    return train_and_return_model(trainer)
