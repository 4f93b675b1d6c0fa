"""The whole loop in a fast configuration, and resuming after a simulated crash in every stage."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from trl import GRPOConfig, RewardConfig

from shfcas_fast.loop import STAGES, CallableOracle, RewardModelOracle, SHFCASConfig, SHFCASLoop

#: The user's trainer settings: CPU, fp32 (a resumed run then equals an uninterrupted one), no logging.
CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "save_strategy": "no", "logging_strategy": "no",
       "disable_tqdm": True, "gradient_checkpointing": False}


class SimulatedCrash(RuntimeError):
    pass


def make_loop(tmp_path, policy, reward_model, tokenizer, task, pool, *, stage_hook=None, policy_args=None,
              **overrides):
    prompts, categories = pool
    settings = {"strategy": "pacs", "budget": 2, **overrides}
    config = SHFCASConfig(
        output_dir=str(tmp_path / "run"),
        num_generations=4,
        max_new_tokens=3,
        eval_num_generations=4,
        progress=False,
        **settings,
    )
    if policy_args is None:
        policy_args = GRPOConfig(max_steps=1, per_device_train_batch_size=4, num_generations=4,
                                 max_completion_length=3, learning_rate=1e-4, **CPU)
    return SHFCASLoop(
        config,
        policy,
        tokenizer,
        RewardModelOracle(reward_model, tokenizer),
        CallableOracle(task.gold_scores),
        task.proxy_preference_data(8, seed=0),
        prompts,
        prompts,
        categories,
        reward_args=RewardConfig(num_train_epochs=1.0, learning_rate=1e-3, per_device_train_batch_size=32, **CPU),
        policy_args=policy_args,
        stage_hook=stage_hook,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tokenizer, task, pool):
    from shfcas_fast.loop.synthetic import tiny_causal_lm, tiny_reward_model

    ran = []
    tmp_path = tmp_path_factory.mktemp("reference")
    loop = make_loop(tmp_path, tiny_causal_lm(tokenizer, 0), tiny_reward_model(tokenizer, 0), tokenizer, task, pool,
                     stage_hook=lambda r, stage: ran.append(stage))
    return loop, loop.run(), ran


def test_the_loop_runs_every_stage_and_writes_its_artefacts(reference_run):
    loop, results, ran = reference_run
    assert ran == list(STAGES)
    round_dir = loop.round_dir(0)
    selected = json.loads((round_dir / "selected.json").read_text())
    feedback = json.loads((round_dir / "feedback.json").read_text())
    assert len(selected) == 2 and len(feedback) == 2 * 4
    for artefact in ("samples.json", "scores.npz", "pairs.json", "reward_model", "policy", "evaluation.json"):
        assert (round_dir / artefact).exists(), artefact
    assert results[0] == json.loads((round_dir / "evaluation.json").read_text())


def test_a_finished_run_redoes_nothing(reference_run, tokenizer, task, pool):
    loop, results, _ = reference_run
    ran = []
    # Progress bars do not change what a run computes: toggling them still resumes.
    config = dataclasses.replace(loop.config, progress=not loop.config.progress)
    rerun = SHFCASLoop(config, loop.policy, tokenizer, loop.proxy, loop.oracle, loop.preference_data,
                       loop.pool_prompts, loop.eval_prompts, loop.eval_categories, reward_args=loop.reward_args,
                       policy_args=loop.policy_args, stage_hook=lambda r, stage: ran.append(stage))
    assert rerun.run() == results and ran == []


@pytest.mark.parametrize("crash_stage", STAGES)
def test_resume_after_a_crash_in_every_stage(tmp_path, crash_stage, policy, reward_model, tokenizer, task, pool,
                                             reference_run):
    def crash(round_index, stage):
        if stage == crash_stage:
            raise SimulatedCrash(stage)

    with pytest.raises(SimulatedCrash):
        make_loop(tmp_path, policy, reward_model, tokenizer, task, pool, stage_hook=crash).run()

    from shfcas_fast.loop.synthetic import tiny_causal_lm, tiny_reward_model

    ran = []
    resumed = make_loop(tmp_path, tiny_causal_lm(tokenizer, 0), tiny_reward_model(tokenizer, 0), tokenizer, task,
                        pool, stage_hook=lambda r, stage: ran.append(stage))
    results = resumed.run()
    assert ran == list(STAGES[STAGES.index(crash_stage):])  # finished stages are loaded, not redone
    reference_loop, reference_results, _ = reference_run
    for artefact in ("samples.json", "selected.json", "feedback.json"):
        expected = (reference_loop.round_dir(0) / artefact).read_text()
        assert (resumed.round_dir(0) / artefact).read_text() == expected, artefact
    # Every stage seeds itself, so the resumed run ends exactly where the uninterrupted one did.
    assert results == reference_results


def test_the_no_feedback_arm_never_asks_the_oracle(tmp_path, policy, reward_model, tokenizer, task, pool):
    def refuse(prompts, completions):
        raise AssertionError("the oracle was asked")

    loop = make_loop(tmp_path, policy, reward_model, tokenizer, task, pool, strategy=None, budget=None)
    loop.oracle = CallableOracle(refuse)
    loop.eval_oracle = CallableOracle(task.gold_scores)
    results = loop.run()
    assert set(results[0]["overall"]) >= {"mean_score", "mean_abs_pacs", "mean_tau"}
    assert json.loads((loop.round_dir(0) / "selected.json").read_text()) == []
    assert not (loop.round_dir(0) / "reward_model").exists()
    # Resuming loads the empty pairs of this arm back.
    assert loop.run() == results


def test_a_rerun_with_another_config_is_refused(reference_run):
    loop, _, _ = reference_run
    changed = SHFCASLoop(dataclasses.replace(loop.config, budget=3), loop.policy, loop.processing_class, loop.proxy,
                         loop.oracle, loop.preference_data, loop.pool_prompts, loop.eval_prompts, loop.eval_categories,
                         reward_args=loop.reward_args, policy_args=loop.policy_args)
    with pytest.raises(ValueError, match=r"holds a run with another config \(budget=2 there, 3 now\)"):
        changed.run()


def test_a_rerun_with_other_trainer_settings_is_refused_but_logging_may_change(reference_run):
    loop, results, _ = reference_run
    logging_only = copy.copy(loop.policy_args)
    logging_only.report_to, logging_only.logging_strategy = ["tensorboard"], "steps"
    rerun = SHFCASLoop(loop.config, loop.policy, loop.processing_class, loop.proxy, loop.oracle, loop.preference_data,
                       loop.pool_prompts, loop.eval_prompts, loop.eval_categories, reward_args=loop.reward_args,
                       policy_args=logging_only)
    assert rerun.run() == results
    faster = copy.copy(loop.policy_args)
    faster.learning_rate = 1e-2
    changed = SHFCASLoop(loop.config, loop.policy, loop.processing_class, loop.proxy, loop.oracle, loop.preference_data,
                         loop.pool_prompts, loop.eval_prompts, loop.eval_categories, reward_args=loop.reward_args,
                         policy_args=faster)
    with pytest.raises(ValueError, match="policy_args="):
        changed.run()


def test_the_retrain_only_arm_retrains_the_reward_model_without_asking_the_oracle(tmp_path, policy, reward_model,
                                                                                  tokenizer, task, pool):
    def refuse(prompts, completions):
        raise AssertionError("the oracle was asked")

    loop = make_loop(tmp_path, policy, reward_model, tokenizer, task, pool, strategy=None, budget=None,
                     retrain_without_feedback=True)
    loop.oracle = CallableOracle(refuse)
    loop.eval_oracle = CallableOracle(task.gold_scores)
    before = loop.proxy.model
    loop.run()
    assert (loop.round_dir(0) / "reward_model").exists() and loop.proxy.model is not before


def test_grpo_with_a_kl_term_toward_the_base_policy(tmp_path, policy, reward_model, tokenizer, task, pool):
    # Regression: with beta > 0 TRL loaded its reference model from the policy's (empty) model path and crashed.
    args = GRPOConfig(max_steps=1, per_device_train_batch_size=4, num_generations=4, max_completion_length=3,
                      beta=0.1, **CPU)
    loop = make_loop(tmp_path, policy, reward_model, tokenizer, task, pool, policy_args=args)
    results = loop.run()
    assert (loop.round_dir(0) / "policy").exists() and "mean_score" in results[0]["overall"]
    assert policy.config._name_or_path == ""  # the temporary reference path does not stick to the policy


def test_a_cost_proxy_cannot_seed_reward_model_refinement(tmp_path, policy, reward_model, tokenizer, task, pool):
    loop = make_loop(tmp_path, policy, reward_model, tokenizer, task, pool)
    config = dataclasses.replace(loop.config, reward_model_init="proxy")
    with pytest.raises(ValueError, match="proxy.is_cost=True"):
        SHFCASLoop(config, policy, tokenizer, RewardModelOracle(reward_model, tokenizer, is_cost=True), loop.oracle,
                   loop.preference_data, loop.pool_prompts, loop.eval_prompts, loop.eval_categories)


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="strategy"):
        SHFCASConfig(output_dir=str(tmp_path), strategy="best")
    with pytest.raises(ValueError, match="budget"):
        SHFCASConfig(output_dir=str(tmp_path), strategy="random")
    with pytest.raises(ValueError, match="num_rounds"):
        SHFCASConfig(output_dir=str(tmp_path), num_rounds=0)


def test_the_loop_rejects_trainer_configs_of_the_wrong_kind(tmp_path, policy, reward_model, tokenizer, task, pool):
    loop = make_loop(tmp_path, policy, reward_model, tokenizer, task, pool)
    with pytest.raises(TypeError, match="reward_args must be a trl.RewardConfig"):
        SHFCASLoop(loop.config, policy, tokenizer, loop.proxy, loop.oracle, loop.preference_data, loop.pool_prompts,
                   loop.eval_prompts, loop.eval_categories, reward_args=loop.policy_args)
