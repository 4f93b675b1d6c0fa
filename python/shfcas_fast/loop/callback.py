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

import contextlib
import random
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from .evaluation import conflict_summary
from .oracles import Oracle
from .sampling import DEFAULT_NUM_GENERATIONS, DEFAULT_TEMPERATURE, sample_completions

__all__ = ["ConflictMonitorCallback"]


@contextlib.contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore the Python, NumPy and torch global random states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class ConflictMonitorCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps, re-samples a held-out prompt pool with the model being
    trained and logs the conflict between its log-probs and ``oracle`` (a gold model, or the proxy being
    optimised): ``conflict/mean_abs_pacs``, ``conflict/mean_tau``, ``conflict/high_conflict_share`` and
    ``conflict/mean_score``. Rising conflict against a gold oracle while the proxy reward climbs is the
    signature of reward hacking.

    A check asks the trainer to log that step and adds its values to the log, so they reach the loggers
    of ``report_to`` (TensorBoard, W&B) and ``state.log_history``; they are also kept in :attr:`history`
    as ``(global_step, summary)``. The loggers see them only if this callback runs before them: the
    loop's trainers put it first; with a trainer of your own, call :meth:`run_first` after building it.
    Sampling seeds itself with ``seed``, so every check draws the same way; the global random states are
    restored afterwards, so training goes on with its own random stream.

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
        num_generations: int = DEFAULT_NUM_GENERATIONS,
        temperature: float = DEFAULT_TEMPERATURE,
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
        self._pending: dict[str, float] = {}

    @staticmethod
    def run_first(trainer: Any) -> None:
        """Move every conflict monitor of ``trainer`` ahead of its other callbacks (the loggers among them)."""
        trainer.callback_handler.callbacks.sort(key=lambda callback: not isinstance(callback, ConflictMonitorCallback))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps != 0 or model is None:
            return control
        with _global_rng_preserved():
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
        self._pending = {f"conflict/{k}": v for k, v in summary.items()}
        control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None:
            logs.update(self._pending)
            # The trainer recorded this log in its history before the callbacks saw it.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = {}
        return control
