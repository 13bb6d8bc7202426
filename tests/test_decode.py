"""cream's own decoder (sampling.backend=torch) against transformers, and its nucleus sampling."""

import pytest
import torch

from cream.config import ModelConfig, SamplingConfig
from cream.config.engine import ModelSource, SamplingBackend
from cream.engine.decode import Decoder, sample_tokens
from cream.errors import ConfigError
from cream.engine.generation import chat_prompt_ids
from cream.engine.models import load_base_model, load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.stages import sample
from tests.conftest import stage_context

TINY = ModelConfig(name="tiny", source=ModelSource.tiny, max_length=128)
QUESTIONS = ["Hi", "What is 2+2? Think step by step.", "Name three fruits that are red, and say why."]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_base_model(str(tiny_model_dir), TINY), tokenizer, [chat_prompt_ids(tokenizer, q) for q in QUESTIONS]


def hf_greedy(model, prompt: list[int], new_tokens: int, eos_id: int) -> list[int]:
    """transformers' greedy continuation of one unpadded prompt, cut after the first `eos_id`."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new_tokens,
                             pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    return out[: out.index(eos_id) + 1] if eos_id in out else out


def greedy(decoder: Decoder, prompts, new_tokens: int, eos_id: int) -> list[list[int]]:
    return decoder.generate(prompts, 1, new_tokens, 0.0, 1.0, eos_id, torch.Generator().manual_seed(0))


def test_greedy_equals_transformers_with_left_padding(tiny):
    model, _, prompts = tiny
    ours = greedy(Decoder(model, torch.float32), prompts, 12, eos_id=-1)
    assert ours == [hf_greedy(model, p, 12, eos_id=-1) for p in prompts]


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny):
    """An end-of-turn token chosen so that one row stops early: the other rows are unchanged."""
    model, _, prompts = tiny
    decoder = Decoder(model, torch.float32)
    free = greedy(decoder, prompts, 12, eos_id=-1)
    eos_id = free[0][2]  # the first prompt's third token ends its turn
    cut = greedy(decoder, prompts, 12, eos_id=eos_id)
    assert len(cut[0]) <= 3 and cut[0][-1] == eos_id
    assert cut == [hf_greedy(model, p, 12, eos_id) for p in prompts]


def test_lora_adapter_is_merged_and_disabled_like_peft(tiny, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = load_base_model(str(tiny_model_dir), TINY)
    _, _, prompts = tiny
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)  # a non-zero adapter (B starts at zero)
    peft_model.eval()
    with torch.inference_mode():
        adapted = peft_model(torch.tensor([prompts[1]])).logits[0, -1]
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([prompts[1]])).logits[0, -1]
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapter matters
    for expected, context in ((adapted, None), (base, peft_model.disable_adapter())):
        if context is None:
            decoder = Decoder(peft_model, torch.float32)
        else:
            with context:
                decoder = Decoder(peft_model, torch.float32)
        ids = torch.tensor([prompts[1]])
        slots = ids.shape[1] + 1
        shape = (1, decoder.kv_heads, slots, decoder.head_dim)
        cache = [(torch.zeros(shape), torch.zeros(shape)) for _ in decoder.layers]
        causal = torch.arange(slots)[None, :] <= torch.arange(ids.shape[1])[:, None]
        with torch.inference_mode():
            logits = decoder._step(ids, torch.arange(ids.shape[1])[None], cache, 0, causal[None, None])[0]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_samples_are_seeded_and_n_per_prompt(tiny):
    model, tokenizer, prompts = tiny
    decoder = Decoder(model, torch.bfloat16)
    def draw(seed):
        return decoder.generate(prompts, 3, 10, 0.8, 0.95, tokenizer.eos_token_id, torch.Generator().manual_seed(seed))
    first = draw(0)
    assert len(first) == 3 * len(prompts) and all(1 <= len(s) <= 10 for s in first)
    assert draw(0) == first and draw(1) != first
    assert len({tuple(s) for s in first[:3]}) > 1  # the n samples of one prompt differ


@pytest.mark.parametrize(
    "probs, top_p, nucleus",
    [
        ([0.5, 0.3, 0.15, 0.05], 0.8, {0, 1}),  # the token reaching top_p exactly closes the nucleus
        ([0.5, 0.3, 0.15, 0.05], 0.81, {0, 1, 2}),
        ([0.05, 0.15, 0.3, 0.5], 0.5, {3}),  # order of the vocabulary does not matter
        ([0.25, 0.25, 0.25, 0.25], 1.0, {0, 1, 2, 3}),
    ],
)
def test_nucleus_members_and_frequencies(probs, top_p, nucleus):
    logits = torch.tensor(probs).log().repeat(20000, 1)
    drawn = sample_tokens(logits, 1.0, top_p, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == nucleus
    mass = sum(probs[i] for i in nucleus)
    for token in nucleus:
        assert (drawn == token).float().mean().item() == pytest.approx(probs[token] / mass, abs=0.015)


def test_wide_nucleus_falls_back_beyond_the_candidates():
    """A flat distribution over 5000 tokens: the nucleus holds ~4750 of them, far past the top-k."""
    logits = torch.zeros(64, 5000) + torch.linspace(0, 1e-3, 5000)
    drawn = sample_tokens(logits, 1.0, 0.95, torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) > 50
    assert 5000 * 0.05 - 1 <= drawn.min() < 5000 - 1024  # inside the nucleus, beyond the widest top-k


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 4.9]])
    assert sample_tokens(logits, 0.0, 0.9, torch.Generator()).tolist() == [1, 0]


def test_other_architectures_get_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="sampling.backend"):
        Decoder(gpt2, torch.float32)


@pytest.mark.parametrize("backend", [SamplingBackend.torch, SamplingBackend.hf])
def test_sample_stage_on_each_backend(tiny_model_dir, tmp_path, backend):
    prompts = [{"id": f"p{i}", "task": "gsm8k", "prompt": q, "answer": "1"} for i, q in enumerate(QUESTIONS)]
    m1 = ModelRef("m1", str(tiny_model_dir))
    ctx = stage_context(tmp_path, [m1, m1], prompts, model=TINY,
                        sampling=SamplingConfig(backend=backend, n=2, max_new_tokens=6, batch_size=4))
    metrics = sample.run(ctx, tmp_path / "sample").metrics
    assert metrics["sample/responses"] == 6 and metrics["sample/mean_response_tokens"] <= 6
    with ctx.pool.use(ModelRef("m1", str(tiny_model_dir))) as model:
        assert model.dtype == torch.float32  # sampling in bf16 left the scoring weights alone
