"""Shape-only models (`model.source=random`): a named architecture with random weights and the embedded tokenizer,
for timing where the weights cannot be had; the one-GPU preset; `make gpu-check` without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from cream.config import ModelConfig, load_config
from cream.config.engine import ModelShape, ModelSource
from cream.engine.models import build_random_model, shape_footprint
from cream.errors import ConfigError
from tests.conftest import REPO


def test_the_one_gpu_preset_composes_with_the_8b_shape():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        composed = compose(config_name="config", overrides=["experiment=cream_llama_1gpu", "model=llama3_8b_shape",
                                                             "run_name=t"], return_hydra_config=True)
    HydraConfig.instance().set_config(composed)
    cfg = load_config(composed)
    assert (cfg.model.source, cfg.model.shape, cfg.dpo.lora is not None) == (ModelSource.random, ModelShape(), True)
    assert (cfg.sampling.n, cfg.sampling.max_new_tokens, cfg.sampling.temperature) == (5, 768, 0.8)


def test_the_8b_shape_is_counted_on_the_meta_device_without_allocating():
    # Llama-3-8B by hand: embeddings and head 2 x 128256 x 4096 = 1,050,673,152; per layer q, o 2 x 4096^2,
    # k, v 2 x 4096 x 1024, MLP 3 x 4096 x 14336, two norms 2 x 4096: 218,112,000, x 32; the final norm 4096
    footprint = shape_footprint(ModelShape(), "bfloat16")
    assert footprint["parameters"] == 1_050_673_152 + 32 * 218_112_000 + 4096 == 8_030_261_248
    assert footprint["weights_gib"] == pytest.approx(8_030_261_248 * 2 / 2**30)  # 14.96 GiB


def test_a_small_shape_builds_with_random_weights_and_the_embedded_tokenizer(cache_dir):
    shape = ModelShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512)
    folder = build_random_model(ModelConfig(name="small", source=ModelSource.random, path="", shape=shape), cache_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (64, 2, 49152)
    assert sum(p.numel() for p in model.parameters()) == shape_footprint(shape, "float32")["parameters"]
    ids = torch.tensor([tokenizer("Hello")["input_ids"]])
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)


@pytest.mark.parametrize("build, key", [
    (lambda: ModelConfig(name="x", path="", source=ModelSource.random), "model.shape"),
    (lambda: ModelConfig(name="x", path="", source=ModelSource.hub, shape=ModelShape()), "model.shape"),
    (lambda: ModelShape(vocab_size=1000), "model.shape.vocab_size"),  # the embedded tokenizer's ids need embeddings
    (lambda: ModelShape(num_key_value_heads=5), "model.shape.num_key_value_heads"),
])
def test_a_shape_goes_with_source_random_only_and_must_be_a_llama(build, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_check_stops_in_one_line_without_a_gpu():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: make gpu-check needs a CUDA GPU, and torch sees none on this machine (torch.cuda.is_available() is False)"]
