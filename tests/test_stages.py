"""Sampling and scoring on the tiny model: masking, batching, long prompts, empty and NaN outputs."""

import math

import pytest
import torch

from cream.config import ModelConfig, RewarderConfig, SamplingConfig
from cream.config.engine import ModelSource
from cream.config.rewards import AgreementMeasure
from cream.rewards.consistency import prompt_consistency
from cream.errors import StageError
from cream.engine.generation import chat_prompt_ids, cut_response
from cream.engine.models import load_base_model, load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.engine.scoring import distinct_count, plan_batches, sequence_logprobs
from cream.stages import reward, sample
from tests.conftest import stage_context

TINY = ModelConfig(name="tiny", source=ModelSource.tiny, max_length=128)


@pytest.mark.parametrize(
    "ids, expected, finished",
    [
        ([5, 6, 2, 0, 0], [5, 6, 2], True),  # cut after the end-of-turn token
        ([2, 2, 2], [2], True),  # an empty response: just the end of turn
        ([5, 6, 7], [5, 6, 7], False),  # ran out of tokens
        ([5, 0, 0], [5], False),  # trailing batch padding removed
    ],
)
def test_cut_response(ids, expected, finished):
    assert cut_response(ids, eos_id=2, pad_id=0) == (expected, finished)


def test_batched_scoring_equals_one_by_one_and_masks_the_prompt(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir), TINY)
    seqs = [(chat_prompt_ids(tokenizer, q), tokenizer(a, add_special_tokens=False)["input_ids"])
            for q, a in [("Hi", "Hello there, friend."), ("What is 2+2? Think.", "4"), ("Name a fruit", "An apple")]]
    batched = sequence_logprobs(model, seqs, 3, tokenizer.pad_token_id, "t")
    single = [sequence_logprobs(model, [s], 1, tokenizer.pad_token_id, "t")[0] for s in seqs]
    assert batched == pytest.approx(single, abs=1e-4)
    # by hand: sum of log-softmax at the response positions only
    prompt, response = seqs[0]
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    manual = logits[torch.arange(len(targets)), targets][len(prompt) - 1 :].sum().item()
    assert batched[0] == pytest.approx(manual, abs=1e-4)


def test_responses_sharing_a_prompt_score_as_whole_sequences_under_an_adapter(tiny_model_dir):
    """The prompt's encoding is shared among its responses (adapters applied there too)."""
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = get_peft_model(load_base_model(str(tiny_model_dir), TINY), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    model.eval()
    long, short = chat_prompt_ids(tokenizer, "Explain why the sky is blue, briefly."), chat_prompt_ids(tokenizer, "Hi")
    answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in ("Rayleigh scattering.", "No idea", "")]
    seqs = [(long, answers[0]), (short, answers[1]), (long, answers[1]), (long, answers[2]), (short, answers[0])]
    shared = sequence_logprobs(model, seqs, 4, tokenizer.pad_token_id, "t")
    alone = sequence_logprobs(model, seqs, 4, tokenizer.pad_token_id, "t", share_prompts=False)
    with torch.no_grad():
        whole = []
        for prompt, response in seqs:
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, :-1].log_softmax(-1)
            targets = torch.tensor(prompt + response)[1:]
            whole.append(logits[torch.arange(len(targets)), targets][len(prompt) - 1 :].sum().item())
    assert shared == pytest.approx(whole, abs=1e-4) and alone == pytest.approx(whole, abs=1e-4)
    assert shared[3] == 0.0  # an empty response has no token to score


def test_identical_responses_get_identical_log_probs(tiny_model_dir):
    """The same (prompt, response) is scored once: in two batch rows its log-probs would differ by ~1e-6,
    and Kendall's tie rule would read an order into an all-duplicate prompt (C = 0.83 instead of 0.5)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir), TINY)
    prompt, other = chat_prompt_ids(tokenizer, "What is 2+2?"), chat_prompt_ids(tokenizer, "Name a colour.")
    same = tokenizer("It is four, I think.", add_special_tokens=False)["input_ids"]
    longer = tokenizer("A long answer that pads the batch " * 3, add_special_tokens=False)["input_ids"]
    seqs = [(prompt, same), (other, longer), (prompt, same), (other, same), (prompt, longer), (prompt, same), (prompt, same)]
    values = sequence_logprobs(model, seqs, 2, tokenizer.pad_token_id, "t")
    planned = [r for _, groups in plan_batches([(tuple(p), tuple(r)) for p, r in seqs], 2) for _, rs in groups for r in rs]
    duplicates = [values[i] for i in (0, 2, 5, 6)]
    assert len(set(duplicates)) == 1 and len(planned) == distinct_count(seqs) == 4
    assert values[3] != values[0]  # the same response after another prompt is another sequence
    current = [v - 1.0 for v in duplicates]  # an implicit reward over the same log-probs: all tied
    assert prompt_consistency(current, duplicates, AgreementMeasure.kendall) == 0.5


def test_prompts_longer_than_the_context_are_skipped_and_counted(tiny_model_dir, tmp_path):
    prompts = [{"id": "short", "task": "gsm8k", "prompt": "What is 1+1?", "answer": "2"},
               {"id": "long", "task": "gsm8k", "prompt": "word " * 200, "answer": "1"}]
    m1 = ModelRef("m1", str(tiny_model_dir))
    ctx = stage_context(tmp_path, [m1, m1], prompts, sampling=SamplingConfig(n=2, max_new_tokens=8, batch_size=4))
    metrics = sample.run(ctx, tmp_path / "s").metrics
    assert metrics["sample/prompts"] == 1 and metrics["sample/prompts_skipped_too_long"] == 1
    assert metrics["sample/responses"] == 2


def test_nan_log_probs_stop_the_stage_naming_the_model(tiny_model_dir, tmp_path):
    prompts = [{"id": "a", "task": "gsm8k", "prompt": "What is 1+1?", "answer": "2"}]
    m0, m1 = ModelRef("m0", str(tiny_model_dir)), ModelRef("m1", str(tiny_model_dir))
    ctx = stage_context(tmp_path, [m0, m1], prompts, sampling=SamplingConfig(n=2, max_new_tokens=6, batch_size=2),
                        rewarder=RewarderConfig(name="likelihood", batch_size=2))
    ctx.outputs["sample"] = sample.run(ctx, tmp_path / "s").outputs
    with ctx.pool.use(m1) as model:
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))  # a broken checkpoint
        with pytest.raises(StageError, match="non-finite log-prob under model m1"):
            reward.run(ctx, tmp_path / "r")
    assert not (tmp_path / "r" / "rewards.jsonl").exists()
