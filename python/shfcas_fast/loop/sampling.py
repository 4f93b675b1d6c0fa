"""Sampling N completions per prompt and the policy's sequence log-probs over their response tokens.

Example:
```python
>>> from shfcas_fast.loop.sampling import sample_completions
>>> from shfcas_fast.loop.synthetic import build_tokenizer, tiny_causal_lm
>>> tokenizer = build_tokenizer()
>>> samples = sample_completions(tiny_causal_lm(tokenizer, seed=0), tokenizer, ["drugs : how get -> "],
...                              num_generations=4, max_new_tokens=3, seed=0)
>>> len(samples.completions), samples.logprobs.shape
(4, (4,))

```
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import set_seed

from ..logprobs import policy_logprobs

__all__ = ["SampledCompletions", "model_prompts", "sample_completions"]

#: The paper's sampling defaults (docs/method.md, section 1).
DEFAULT_NUM_GENERATIONS = 8
DEFAULT_TEMPERATURE = 0.7


@dataclasses.dataclass(frozen=True)
class SampledCompletions:
    """``num_generations`` completions of each prompt, grouped, with the policy's log-probs.

    Attributes:
        prompts: the ``g`` prompts.
        completions: ``n = g * num_generations`` completion texts; prompt ``i`` owns a contiguous block.
        logprobs: float64 ``[n]``, the policy's summed log-prob of each completion's response tokens.
        num_generations: completions per prompt.
    """

    prompts: list[str]
    completions: list[str]
    logprobs: np.ndarray
    num_generations: int

    @property
    def completion_prompts(self) -> list[str]:
        """The prompt of every completion (``n`` strings), as oracles and reward models take them."""
        return [prompt for prompt in self.prompts for _ in range(self.num_generations)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "completions": self.completions,
            "logprobs": self.logprobs.tolist(),
            "num_generations": self.num_generations,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampledCompletions:
        return cls(
            prompts=list(data["prompts"]),
            completions=list(data["completions"]),
            logprobs=np.asarray(data["logprobs"], dtype=np.float64),
            num_generations=int(data["num_generations"]),
        )


def model_prompts(processing_class: Any, prompts: Sequence[str]) -> list[str]:
    """The text the policy sees for each prompt: the tokenizer's chat template applied (one user turn and
    the generation prompt) when it has one, the prompt itself otherwise.

    Example:
    ```python
    >>> from shfcas_fast.loop.sampling import model_prompts
    >>> from shfcas_fast.loop.synthetic import build_tokenizer
    >>> tokenizer = build_tokenizer()
    >>> model_prompts(tokenizer, ["drugs : how get "])
    ['drugs : how get ']
    >>> tokenizer.chat_template = "{{ messages[0]['content'] }}{% if add_generation_prompt %}-> {% endif %}"
    >>> model_prompts(tokenizer, ["drugs : how get "])
    ['drugs : how get -> ']

    ```
    """
    if not getattr(processing_class, "chat_template", None):
        return list(prompts)
    return [
        processing_class.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        for prompt in prompts
    ]


def _response_mask(generated: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True on generated tokens up to and including the first EOS (what ``generate`` pads after)."""
    is_eos = generated == eos_token_id
    after_first_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ~after_first_eos


@torch.no_grad()
def sample_completions(
    model: Any,
    processing_class: Any,
    prompts: Sequence[str],
    *,
    num_generations: int = DEFAULT_NUM_GENERATIONS,
    temperature: float = DEFAULT_TEMPERATURE,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> SampledCompletions:
    """Sample completions with ``model.generate`` and score them with the policy's own log-probs.

    Log-probs are taken over the generated ids (not a re-tokenisation of the text), response tokens
    only, up to and including the first EOS, with :func:`shfcas_fast.logprobs.policy_logprobs`. The
    policy sees each prompt through :func:`model_prompts` (its chat template, if any); the returned
    ``prompts`` are the prompts as given, which is what oracles and reward models score.

    Args:
        model: a causal LM.
        processing_class: its tokenizer; prompts are left-padded.
        prompts: the ``g`` prompts.
        num_generations: completions per prompt (the paper: 8).
        temperature: sampling temperature (the paper: 0.7).
        max_new_tokens: length limit of a completion.
        batch_size: prompts per ``generate`` call.
        seed: sampling seed.
        progress: show a progress bar.
    """
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if processing_class.pad_token_id is None:
        raise ValueError("processing_class needs a pad token to batch prompts")
    if processing_class.eos_token_id is None:
        raise ValueError("processing_class needs an eos token to end completions")
    set_seed(seed)
    was_training = model.training
    model.eval()
    try:
        completions, logprobs = _sample_batches(
            model, processing_class, model_prompts(processing_class, prompts), num_generations, temperature, max_new_tokens, batch_size, progress
        )
    finally:
        model.train(was_training)
    return SampledCompletions(
        prompts=list(prompts),
        completions=completions,
        logprobs=torch.cat(logprobs).numpy() if logprobs else np.zeros(0, dtype=np.float64),
        num_generations=num_generations,
    )


def _sample_batches(
    model: Any,
    processing_class: Any,
    prompts: Sequence[str],
    num_generations: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
) -> tuple[list[str], list[torch.Tensor]]:
    """The completions and float64 log-probs of :func:`sample_completions`, batch by batch."""
    device = next(model.parameters()).device
    completions: list[str] = []
    logprobs: list[torch.Tensor] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="Sampling", disable=not progress, unit="batch"):
        encoded = processing_class(
            list(prompts[start : start + batch_size]),
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        ).to(device)
        sequences = model.generate(
            **encoded,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_generations,
            pad_token_id=processing_class.pad_token_id,
            eos_token_id=processing_class.eos_token_id,
        )
        prompt_length = encoded["input_ids"].shape[1]
        generated = sequences[:, prompt_length:]
        response = _response_mask(generated, processing_class.eos_token_id)
        prompt_mask = encoded["attention_mask"].repeat_interleave(num_generations, dim=0)
        attention_mask = torch.cat([prompt_mask, response.long()], dim=1)
        response_mask = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), response], dim=1)
        logprobs.append(policy_logprobs(model, sequences, attention_mask, response_mask).double().cpu())
        completions.extend(processing_class.batch_decode(generated, skip_special_tokens=True))
    return completions, logprobs
