"""Each loop component with tiny models, checked against independent references."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy.stats import kendalltau
from transformers import TrainerControl, TrainerState
from trl import DPOConfig, GRPOConfig, RewardConfig

from shfcas_fast.loop import (
    CallableOracle,
    ConflictMonitorCallback,
    FileOracle,
    LabelsPending,
    RewardModelOracle,
    conflict_summary,
    evaluate_policy,
    preference_pairs,
    refine_policy_dpo,
    refine_policy_grpo,
    sample_completions,
    train_reward_model,
)

TRAINER = {"report_to": "none", "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "gradient_checkpointing": False, "logging_strategy": "no"}


def test_sampling_logprobs_match_a_float64_transcription(policy, tokenizer, pool):
    samples = sample_completions(policy, tokenizer, pool[0][:2], num_generations=3, max_new_tokens=4, seed=0)
    assert len(samples.completions) == 6 and samples.completion_prompts[3] == pool[0][1]
    policy.double().eval()  # no dropout in the reference
    for i, (prompt, completion) in enumerate(zip(samples.completion_prompts, samples.completions)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if len(response_ids) < 4:  # stopped early: the EOS token counts as a response token
            response_ids.append(tokenizer.eos_token_id)
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            log_softmax = torch.log_softmax(policy(input_ids=ids).logits[0, :-1], dim=-1)
        expected = sum(log_softmax[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(response_ids))
        assert samples.logprobs[i] == pytest.approx(expected, abs=1e-4)


def test_sampling_rejects_bad_arguments(policy, tokenizer):
    with pytest.raises(ValueError, match="num_generations"):
        sample_completions(policy, tokenizer, ["q "], num_generations=0)
    with pytest.raises(ValueError, match="temperature"):
        sample_completions(policy, tokenizer, ["q "], temperature=0.0)


def test_reward_and_cost_oracles_give_opposite_pair_signs(reward_model, tokenizer, pool):
    prompts = [pool[0][0]] * 3
    completions = ["refuse explain", "dose dose", "the it"]
    reward = RewardModelOracle(reward_model, tokenizer)
    cost = RewardModelOracle(reward_model, tokenizer, is_cost=True)
    reward_model.eval()  # no dropout in the reference
    raw = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            ids = tokenizer(prompt + completion + tokenizer.eos_token, return_tensors="pt")
            raw.append(reward_model(**ids).logits[0, 0].item())
    np.testing.assert_allclose(reward.score(prompts, completions), raw, atol=1e-5)
    np.testing.assert_allclose(cost.score(prompts, completions), -np.array(raw), atol=1e-5)
    by_reward = preference_pairs(prompts, completions, reward.score(prompts, completions), 3)
    by_cost = preference_pairs(prompts, completions, cost.score(prompts, completions), 3)
    best = completions[int(np.argmax(raw))]
    lowest_cost = completions[int(np.argmin(raw))]  # the model's output read as a cost
    assert best in by_reward["chosen"] and best not in by_reward["rejected"]
    assert lowest_cost in by_cost["chosen"] and lowest_cost not in by_cost["rejected"]


def test_preference_pairs_with_a_cost_callable_prefer_lower_cost():
    costs = CallableOracle(lambda prompts, completions: [float(len(c)) for c in completions], is_cost=True)
    prompts, completions = ["a ", "a ", "b ", "b "], ["xx", "x", "y", "y"]
    pairs = preference_pairs(prompts, completions, costs.score(prompts, completions), [2, 2])
    assert pairs.to_dict() == {"prompt": ["a "], "chosen": ["x"], "rejected": ["xx"], "margin": [1.0]}
    with pytest.raises(ValueError, match="same length"):
        preference_pairs(prompts, completions[:3], [0.0, 1.0, 2.0, 3.0], 2)


def test_file_oracle_ignores_a_torn_last_label_and_refuses_nan(tmp_path):
    oracle = FileOracle(tmp_path)
    oracle.record("p ", "a", 1.5)
    with oracle.label_file.open("a") as handle:
        handle.write('{"key": "trunc')
    assert list(oracle.labels().values()) == [1.5]
    # The next label replaces the torn line rather than being glued onto it.
    oracle.record("p ", "b", 2.5)
    assert sorted(oracle.labels().values()) == [1.5, 2.5]
    with pytest.raises(ValueError, match="finite"):
        oracle.record("p ", "b", math.nan)


def test_file_oracle_refuses_a_corrupt_label_mid_file(tmp_path):
    oracle = FileOracle(tmp_path)
    oracle.record("p ", "a", 1.5)
    with oracle.label_file.open("a") as handle:
        handle.write("not json\n")
    oracle.record("p ", "b", 2.5)
    with pytest.raises(ValueError, match=r"labels\.jsonl:2: not a JSON label"):
        oracle.labels()


def test_file_oracle_names_the_row_of_a_score_that_is_no_number(tmp_path):
    oracle = FileOracle(tmp_path)
    with pytest.raises(LabelsPending):
        oracle.score(["q ", "q "], ["a", "b"])
    rows = [json.loads(line) for line in oracle.request_file.read_text().splitlines()]
    rows[0]["score"], rows[1]["score"] = 1.0, ""
    oracle.request_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"requests\.jsonl: row 2: score must be a number, got ''"):
        oracle.score(["q ", "q "], ["a", "b"])


def test_a_tokenizer_without_eos_is_refused_up_front(policy, reward_model, tokenizer):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="eos token"):
        sample_completions(policy, no_eos, ["q "], num_generations=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="eos token"):
        RewardModelOracle(reward_model, no_eos)


def test_a_failed_forward_restores_the_training_mode(policy, reward_model, tokenizer, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    for model in (policy, reward_model):
        model.train()
    monkeypatch.setattr(policy, "generate", fail)
    monkeypatch.setattr(reward_model, "forward", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        sample_completions(policy, tokenizer, ["q "], num_generations=2, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="out of memory"):
        RewardModelOracle(reward_model, tokenizer).score(["q "], ["a"])
    assert policy.training and reward_model.training


def test_conflict_summary_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    logprobs, scores = rng.normal(size=24), rng.normal(size=24)
    summary = conflict_summary(logprobs, scores, 8)
    conflicts, taus = [], []
    for g in range(3):
        l, r = logprobs[8 * g : 8 * g + 8], scores[8 * g : 8 * g + 8]
        z_l, z_r = (l - l.mean()) / (l.std() + 1e-8), (r - r.mean()) / (r.std() + 1e-8)
        conflicts.append(np.abs(z_r - z_l).mean())
        taus.append(kendalltau(l, r).statistic)
    assert summary["mean_score"] == pytest.approx(scores.mean())
    assert summary["mean_abs_pacs"] == pytest.approx(np.mean(conflicts))
    assert summary["mean_tau"] == pytest.approx(np.mean(taus))
    assert summary["high_conflict_share"] == pytest.approx(np.mean(np.array(conflicts) > 1.0))


def test_evaluate_policy_per_category(policy, tokenizer, task, pool):
    prompts, categories = pool
    result = evaluate_policy(policy, tokenizer, prompts, categories, CallableOracle(task.gold_scores),
                             num_generations=3, max_new_tokens=4, seed=0)
    assert set(result["per_category"]) == set(categories)
    per_category_means = [result["per_category"][c]["mean_score"] for c in dict.fromkeys(categories)]
    # Every category has the same number of prompts, so the overall mean is the mean of category means.
    assert result["overall"]["mean_score"] == pytest.approx(np.mean(per_category_means))


def test_reward_model_learns_the_preference(reward_model, tokenizer, tmp_path):
    pairs = Dataset.from_dict({"prompt": ["drugs : how get -> "] * 16, "chosen": ["refuse"] * 16,
                               "rejected": ["attack"] * 16, "margin": [1.0] * 16})
    args = RewardConfig(output_dir=str(tmp_path), max_steps=8, learning_rate=1e-2, seed=0, **TRAINER)
    model = train_reward_model(reward_model, tokenizer, pairs, args)
    oracle = RewardModelOracle(model, tokenizer)
    chosen, rejected = oracle.score(["drugs : how get -> "] * 2, ["refuse", "attack"])
    assert chosen > rejected


def test_grpo_with_a_reward_model_and_the_conflict_monitor(policy, tokenizer, reward_model, task, pool, tmp_path):
    monitor = ConflictMonitorCallback(pool[0][:2], CallableOracle(task.gold_scores), tokenizer,
                                      every_n_steps=1, num_generations=3, max_new_tokens=4)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, seed=0, **TRAINER)
    before = [p.detach().clone() for p in policy.parameters()]
    refined = refine_policy_grpo(policy, tokenizer, RewardModelOracle(reward_model, tokenizer),
                                 Dataset.from_dict({"prompt": pool[0]}), args, callbacks=[monitor])
    assert any(not torch.equal(a, b) for a, b in zip(before, refined.parameters()))
    assert [step for step, _ in monitor.history] == [1, 2]
    for _, summary in monitor.history:
        assert set(summary) >= {"mean_abs_pacs", "mean_tau", "high_conflict_share", "mean_score"}


def test_the_conflict_monitor_leaves_the_global_random_state_alone(policy, tokenizer, task, pool):
    monitor = ConflictMonitorCallback(pool[0][:2], CallableOracle(task.gold_scores), tokenizer,
                                      every_n_steps=1, num_generations=3, max_new_tokens=4, seed=0)
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    before = random.getstate(), np.random.get_state(), torch.get_rng_state()
    state = TrainerState(global_step=1)
    monitor.on_step_end(None, state, TrainerControl(), model=policy)
    assert len(monitor.history) == 1
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert python_state == before[0]
    assert numpy_state[0] == before[1][0] and np.array_equal(numpy_state[1], before[1][1])
    assert numpy_state[2:] == before[1][2:]
    assert torch.equal(torch_state, before[2])


def test_dpo_on_pairs_prefers_the_chosen_answer(policy, tokenizer, tmp_path):
    pairs = preference_pairs(["drugs : how get -> "] * 2, ["refuse", "attack"], [1.0, 0.0], 2)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=5, learning_rate=1e-2, per_device_train_batch_size=1,
                     seed=0, **TRAINER)
    refined = refine_policy_dpo(policy, tokenizer, pairs, args)
    ids = tokenizer(["drugs : how get -> refuse", "drugs : how get -> attack"], return_tensors="pt")
    with torch.no_grad():
        last = torch.log_softmax(refined(**ids).logits[:, -2], dim=-1)
    refuse, attack = tokenizer.convert_tokens_to_ids(["refuse", "attack"])
    assert last[0, refuse] > last[1, attack]


def test_conflict_monitor_metrics_reach_tensorboard(policy, tokenizer, reward_model, task, pool, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = ConflictMonitorCallback(pool[0][:2], CallableOracle(task.gold_scores), tokenizer,
                                      every_n_steps=1, num_generations=3, max_new_tokens=4)
    settings = {**TRAINER, "report_to": "tensorboard"}
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=4, seed=0, **settings)
    refine_policy_grpo(policy, tokenizer, RewardModelOracle(reward_model, tokenizer),
                       Dataset.from_dict({"prompt": pool[0]}), args, callbacks=[monitor])
    [event_file] = list(tmp_path.rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(event_file.parent))
    events.Reload()
    # transformers files training logs under "train/".
    written = [(event.step, event.value) for event in events.Scalars("train/conflict/mean_abs_pacs")]
    expected = [(step, summary["mean_abs_pacs"]) for step, summary in monitor.history]
    assert [step for step, _ in written] == [1, 2]
    assert [value for _, value in written] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_a_chat_template_frames_what_the_policy_sees_not_what_oracles_score(policy, tokenizer, reward_model, tmp_path):
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = "{{ messages[0]['content'] }}{% if add_generation_prompt %}-> {% endif %}"
    plain = ["drugs : how get ", "violence : make use "]
    with_template = sample_completions(policy, templated, plain, num_generations=3, max_new_tokens=4, seed=0)
    by_hand = sample_completions(policy, tokenizer, [p + "-> " for p in plain], num_generations=3,
                                 max_new_tokens=4, seed=0)
    assert with_template.completions == by_hand.completions
    np.testing.assert_allclose(with_template.logprobs, by_hand.logprobs, rtol=1e-6)
    assert with_template.prompts == plain

    seen = []

    def record(prompts, completions):
        seen.extend(prompts)
        return [0.0 if i % 2 else 1.0 for i in range(len(completions))]

    args = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=3, seed=0, **TRAINER)
    refine_policy_grpo(policy, templated, CallableOracle(record), Dataset.from_dict({"prompt": plain}), args)
    assert seen and set(seen) <= set(plain)  # the reward sees the plain prompt, not the template
