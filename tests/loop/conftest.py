"""Tiny models and data shared by the loop tests (seconds on CPU)."""

from __future__ import annotations

import pytest
import torch

from shfcas_fast.loop.synthetic import (
    CATEGORIES,
    SyntheticSafetyTask,
    build_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
)


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """One intra-op thread: on models this small, a second thread costs more in synchronisation than it
    saves (ten times slower training on a busy two-core machine). Restored for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def task():
    return SyntheticSafetyTask(completion_words=3)


@pytest.fixture()
def policy(tokenizer):
    return tiny_causal_lm(tokenizer, seed=0)


@pytest.fixture()
def reward_model(tokenizer):
    return tiny_reward_model(tokenizer, seed=0)


@pytest.fixture(scope="session")
def pool(task):
    prompts, categories = task.sample_prompts(CATEGORIES[:3], per_category=2, seed=0)
    return prompts, categories
