"""The config key `device`: resolution, the start-up check, and every stage's tensors on the model's device.

The tests marked `cuda` run only where torch sees a GPU; the others pin the CPU path (the decoder's
sampled tokens for a seed are those it drew before it kept its tokens on the device).
"""

import subprocess
import sys

import pytest
import torch

from cream.config import Config, DPOConfig, LoggerConfig, ModelConfig
from cream.config.engine import ModelSource
from cream.config.runs import LoggerMode
from cream.engine.decode import Decoder
from cream.errors import ConfigError
from cream.engine.generation import chat_prompt_ids
from cream.engine.model_pool import ModelPool
from cream.engine.models import load_base_model, load_tokenizer, resolve_device
from cream.runs.model_ref import ModelRef
from cream.engine.scoring import sequence_logprobs
from tests.conftest import FIXTURE_DATA, REPO

TINY = ModelConfig(name="tiny", source=ModelSource.tiny, max_length=128)
QUESTIONS = ["Hi", "What is 2+2? Think step by step.", "Name three fruits that are red, and say why."]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")


def config(**overrides) -> Config:
    return Config(experiment_name="test", run_name="test", logger=LoggerConfig(mode=LoggerMode.disabled),
                  model=TINY, **overrides)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_base_model(str(tiny_model_dir), TINY), tokenizer, [chat_prompt_ids(tokenizer, q) for q in QUESTIONS]


def test_device_resolves_once_to_a_torch_device():
    assert config().device == "auto"
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_unknown_device_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="`device`"):
        config(device="tpu")


@no_cuda
def test_cuda_without_a_gpu_fails_at_start_up_naming_the_key():
    from cream import preflight

    preflight.check(config(device="cpu"))  # cpu and auto pass
    preflight.check(config(device="auto"))
    with pytest.raises(ConfigError, match="`device`.*no GPU"):
        preflight.check(config(device="cuda"))


def test_decoder_keeps_its_tensors_on_the_models_device(tiny):
    model, _, prompts = tiny
    decoder = Decoder(model, torch.float32)
    assert decoder.device == model.device
    stored = [decoder.embed, decoder.norm, decoder.lm_head] + [t for layer in decoder.layers for t in vars(layer).values()]
    assert all(t.device == model.device for t in stored)
    assert len(decoder.generate(prompts, 2, 4, 1.0, 0.9, -1, torch.Generator().manual_seed(0))) == 6


# Drawn with a seed by the decoder as it was before it kept its tokens on the device (it read every
# token back each step): the same seed must give the same tokens, whichever rows leave the batch when.
FREE = [[13901, 42154, 10819, 45388, 1859, 29007, 4215, 43453], [21872, 9238, 2120, 45961, 8592, 14002, 32063, 44473],
        [35957, 45899, 33116, 28324, 8722, 5802, 14427, 1570]]
CUT = [[13901, 42154], [21872, 9238, 5429, 32063, 33386, 10307, 15487, 27657],
       [35957, 45899, 22065, 44702, 3282, 779, 30382, 33400]]


def test_sampled_tokens_of_a_seed_are_pinned(tiny):
    model, _, prompts = tiny
    decoder = Decoder(model, torch.float32)
    assert decoder.generate(prompts, 1, 8, 1.0, 0.95, -1, torch.Generator().manual_seed(11)) == FREE
    # 42154 ends the first row at its second token: a third of the batch leaves it, and the others'
    # random draws shift accordingly
    assert decoder.generate(prompts, 1, 8, 1.0, 0.95, 42154, torch.Generator().manual_seed(11)) == CUT


def test_greedy_rows_end_at_their_first_end_of_turn(tiny):
    model, _, prompts = tiny
    decoder = Decoder(model, torch.float32)
    free = decoder.generate(prompts, 1, 12, 0.0, 1.0, -1, torch.Generator())
    eos = free[1][4]
    cut = decoder.generate(prompts, 1, 12, 0.0, 1.0, eos, torch.Generator())
    assert cut == [row[: row.index(eos) + 1] if eos in row else row for row in free]
    assert decoder.generate(prompts, 2, 0, 0.0, 1.0, eos, torch.Generator()) == [[]] * 6


def test_pool_loads_onto_its_device_and_releases(tiny_model_dir):
    pool = ModelPool(TINY, "cpu")
    with pool.use(ModelRef("m0", str(tiny_model_dir))) as model:
        assert model.device.type == "cpu"
    pool.release()
    assert pool._model is None


def test_training_follows_the_device_setting(tmp_path):
    from cream.training.dpo_trainer import training_args

    args = training_args(DPOConfig(bf16=False), tmp_path, 0, 4, "cpu")
    assert args.use_cpu and not args.dataloader_pin_memory


@cuda
def test_decoder_on_cuda_equals_decoder_on_cpu_greedy(tiny_model_dir, tiny):
    model, _, prompts = tiny
    on_gpu = load_base_model(str(tiny_model_dir), TINY).to("cuda")
    expected = Decoder(model, torch.float32).generate(prompts, 2, 16, 0.0, 1.0, -1, torch.Generator())
    assert Decoder(on_gpu, torch.float32).generate(prompts, 2, 16, 0.0, 1.0, -1, torch.Generator()) == expected
    sampled = Decoder(on_gpu, torch.float32).generate(prompts, 2, 16, 1.0, 0.9, -1, torch.Generator().manual_seed(0))
    assert [len(s) for s in sampled] == [16] * 6


@cuda
def test_scoring_on_cuda_is_close_to_cpu(tiny_model_dir, tiny):
    model, tokenizer, prompts = tiny
    on_gpu = load_base_model(str(tiny_model_dir), TINY).to("cuda")
    responses = [tokenizer.encode(t, add_special_tokens=False) for t in ("Four.", "Apples, cherries.", "Hello there!")]
    sequences = [(p, r) for p in prompts for r in responses]
    cpu = sequence_logprobs(model, sequences, 4, tokenizer.pad_token_id, "cpu")
    gpu = sequence_logprobs(on_gpu, sequences, 4, tokenizer.pad_token_id, "cuda")
    assert gpu == pytest.approx(cpu, abs=1e-3, rel=1e-4)


@cuda
def test_smoke_run_on_cuda(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=smoke", "device=cuda",
                             f"paths.runs={tmp_path / 'runs'}", f"paths.data={FIXTURE_DATA}"],
                            cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                 "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx avx2 fma", False),  # the AVX2-only EPYC of 2026-12-03: bf16 emulated
    ("avx2 avx512f avx512_bf16", True),
    ("avx2 amx_bf16 amx_tile", True),
    ("avx2 avx512f avx512_bf16x", False),  # whole flags only
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    from cream.engine.models import native_bf16_cpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert native_bf16_cpu(cpuinfo) is native
    assert native_bf16_cpu(tmp_path / "absent") is False


@pytest.mark.parametrize("setting", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_are_kept_on_any_device(setting):
    from cream.engine.models import resolve_dtype

    assert resolve_dtype(setting, "cpu") == resolve_dtype(setting, "cuda") == setting


def test_auto_dtype_on_the_cpu_follows_its_flags(monkeypatch):
    import cream.engine.models as models

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(models, "native_bf16_cpu", lambda native=native: native)
        assert models.resolve_dtype("auto", "cpu") == expected


@pytest.mark.parametrize("key", ["model.dtype", "sampling.dtype", "eval.dtype"])
def test_bfloat16_where_the_cpu_emulates_it_is_a_warning_naming_the_key(monkeypatch, caplog, key):
    import cream.engine.models as models
    from cream.preflight import warn_emulated_bf16
    from tests.test_sweeps import _load

    cfg, _ = _load(("experiment=smoke", "device=cpu", f"{key}=bfloat16"))
    for native, warned in ((True, False), (False, True)):
        caplog.clear()
        monkeypatch.setattr(models, "native_bf16_cpu", lambda native=native: native)
        warn_emulated_bf16(cfg)
        assert (f"config key `{key}`: bfloat16 on a CPU without native bf16" in caplog.text) is warned
