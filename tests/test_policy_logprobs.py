"""``policy_logprobs`` on tiny randomly initialised transformers models, against the naive logits.

The naive computation is ``model(input_ids, attention_mask=..., position_ids=...).logits`` with the
position ids ``generate`` uses, shifted by one, a float64 log-softmax, the label gathered and summed
over the response tokens. The Triton backend of the same function is tested in test_kernels.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from shfcas_fast import logprobs as lp
from shfcas_fast.errors import ShfcasValueError

VOCAB = 211


def tiny_gpt2() -> transformers.PreTrainedModel:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()  # tied input and output embeddings


def tiny_llama() -> transformers.PreTrainedModel:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()  # untied LM head


def left_padded_batch(seed: int, empty_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five sequences of width 10: left padding, a prompt, then a response of varying length; with
    ``empty_prompts`` the response is the whole text (its first token included)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (5, 10), generator=generator)
    positions = torch.arange(10)
    pad = torch.tensor([0, 2, 1, 3, 0]).unsqueeze(1)
    response_start = pad if empty_prompts else torch.tensor([4, 5, 6, 7, 3]).unsqueeze(1)
    attention_mask = (positions >= pad).long()
    input_ids = torch.where(attention_mask.bool(), input_ids, 0)
    return input_ids, attention_mask, (positions >= response_start).long()


def naive_logprobs(model, input_ids, attention_mask, response_mask, temperature=1.0) -> torch.Tensor:
    # transformers' GenerationMixin._prepare_position_ids_for_generation: padding gets position 0.
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    with torch.no_grad():
        outputs = model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    logits = outputs.logits[:, :-1].double() / temperature
    picked = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    # The first real token has no context: it is never scored, from a pad position or otherwise.
    counted = (response_mask[:, 1:] * attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
    return torch.where(counted, picked, 0.0).sum(dim=1)


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize(("temperature", "empty_prompts"), [(1.0, False), (0.7, False), (1.0, True)])
def test_policy_logprobs_match_the_naive_logits(make_model, temperature, empty_prompts):
    torch.manual_seed(0)
    model = make_model()
    batch = left_padded_batch(seed=1, empty_prompts=empty_prompts)
    got = lp.policy_logprobs(model, *batch, batch_size=2, temperature=temperature, backend="torch")
    assert got.shape == (5,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), naive_logprobs(model, *batch, temperature), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("empty_prompts", [False, True], ids=["prompt", "empty-prompt"])
def test_left_padding_does_not_change_a_sequence_logprob(make_model, empty_prompts):
    torch.manual_seed(0)
    model = make_model()
    input_ids, attention_mask, response_mask = left_padded_batch(seed=5, empty_prompts=empty_prompts)
    padded = lp.policy_logprobs(model, input_ids, attention_mask, response_mask, backend="torch")
    for row, pad in enumerate((attention_mask == 0).sum(dim=1).tolist()):
        unpadded_ids = input_ids[row : row + 1, pad:]
        unpadded = lp.policy_logprobs(
            model, unpadded_ids, torch.ones_like(unpadded_ids), response_mask[row : row + 1, pad:], backend="torch"
        )
        torch.testing.assert_close(padded[row : row + 1], unpadded, rtol=1e-5, atol=1e-5)


def test_policy_logprobs_do_not_depend_on_the_batch_size():
    torch.manual_seed(0)
    model = tiny_llama()
    batch = left_padded_batch(seed=2)
    one_pass = lp.policy_logprobs(model, *batch, batch_size=5, backend="torch")
    per_sequence = lp.policy_logprobs(model, *batch, batch_size=1, backend="torch")
    torch.testing.assert_close(per_sequence, one_pass, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_pass.double(), naive_logprobs(model, *batch), rtol=1e-5, atol=1e-4)


def test_models_with_a_final_logit_transform_are_refused():
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    model = transformers.Gemma2ForCausalLM(config).eval()
    input_ids, attention_mask, response_mask = left_padded_batch(seed=3)
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        lp.policy_logprobs(model, input_ids, attention_mask, response_mask)


def test_an_empty_batch_gives_an_empty_result():
    empty = torch.zeros(0, 6, dtype=torch.long)
    got = lp.policy_logprobs(tiny_gpt2(), empty, empty, empty, backend="torch")
    assert got.shape == (0,) and got.dtype == torch.float32


def test_bad_arguments_are_named():
    model = tiny_gpt2()
    input_ids, attention_mask, response_mask = left_padded_batch(seed=4)
    with pytest.raises(ShfcasValueError, match="temperature must be finite and positive"):
        lp.policy_logprobs(model, input_ids, attention_mask, response_mask, temperature=-1.0)
    with pytest.raises(ShfcasValueError, match="input_ids is a meta tensor"):
        lp.policy_logprobs(model, input_ids.to("meta"), attention_mask, response_mask)
    with pytest.raises(ShfcasValueError, match="model's output embedding weight is a meta tensor"):
        lp.policy_logprobs(tiny_gpt2().to("meta"), input_ids, attention_mask, response_mask)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        lp.policy_logprobs(model, input_ids, attention_mask, response_mask, batch_size=0)
    with pytest.raises(ValueError, match="response_mask must have the shape of input_ids"):
        lp.policy_logprobs(model, input_ids, attention_mask, response_mask[:, 1:])
    with pytest.raises(TypeError, match="input_ids must hold integers, got dtype float32"):
        lp.policy_logprobs(model, input_ids.float(), attention_mask, response_mask)
    with pytest.raises(TypeError, match="input_ids must hold integers, got dtype bool"):
        lp.policy_logprobs(model, input_ids.bool(), attention_mask, response_mask)
    too_large = input_ids.clone()
    too_large[2, 7] = VOCAB
    with pytest.raises(ValueError, match=rf"input_ids\[2, 7\] is {VOCAB}, outside the vocabulary \[0, {VOCAB}\)"):
        lp.policy_logprobs(model, too_large, attention_mask, response_mask)
    negative = input_ids.clone()
    negative[1, 0] = -1  # a padding position: the embedding is looked up there too
    with pytest.raises(ValueError, match=r"input_ids\[1, 0\] is -1, outside the vocabulary"):
        lp.policy_logprobs(model, negative, attention_mask, response_mask)
