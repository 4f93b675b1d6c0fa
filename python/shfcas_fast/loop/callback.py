"""A reward-hacking monitor for any TRL/transformers training run.

Example:
```python
>>> from shfcas_fast.loop.callback import ConflictMonitorCallback
>>> from shfcas_fast.loop.oracles import CallableOracle
>>> from shfcas_fast.loop.synthetic import build_tokenizer
>>> monitor = ConflictMonitorCallback(["drugs : how get -> "], CallableOracle(lambda p, c: [0.0] * len(c)),
...                                   build_tokenizer(), every_n_steps=10)
>>> monitor.history
[]

```
"""

from __future__ import annotations

from typing import Any, Sequence

from transformers import TrainerCallback

from .evaluation import conflict_summary
from .oracles import Oracle
from .sampling import sample_completions

__all__ = ["ConflictMonitorCallback"]


class ConflictMonitorCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps, re-samples a held-out prompt pool with the model being
    trained and logs the conflict between its log-probs and ``oracle`` (a gold model, or the proxy being
    optimised): ``conflict/mean_abs_pacs``, ``conflict/mean_tau``, ``conflict/high_conflict_share`` and
    ``conflict/mean_score``. Rising conflict against a gold oracle while the proxy reward climbs is the
    signature of reward hacking.

    The values are appended to the trainer's ``state.log_history`` and to :attr:`history` as
    ``(global_step, summary)``.

    Args:
        prompts: the held-out prompt pool.
        oracle: scores completions (higher = better).
        processing_class: the policy's tokenizer.
        every_n_steps: monitoring period in optimizer steps.
        num_generations, temperature, max_new_tokens, seed: sampling of the pool.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        oracle: Oracle,
        processing_class: Any,
        *,
        every_n_steps: int = 50,
        num_generations: int = 8,
        temperature: float = 0.7,
        max_new_tokens: int = 64,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not prompts:
            raise ValueError("prompts must not be empty")
        self.prompts = list(prompts)
        self.oracle = oracle
        self.processing_class = processing_class
        self.every_n_steps = every_n_steps
        self.num_generations = num_generations
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps != 0 or model is None:
            return control
        samples = sample_completions(
            model,
            self.processing_class,
            self.prompts,
            num_generations=self.num_generations,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )
        scores = self.oracle.score(samples.completion_prompts, samples.completions)
        summary = conflict_summary(samples.logprobs, scores, self.num_generations)
        self.history.append((state.global_step, summary))
        state.log_history.append({"step": state.global_step, **{f"conflict/{k}": v for k, v in summary.items()}})
        return control
