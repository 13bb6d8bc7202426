"""Sampling from a model of the pool: N continuations per prompt, in resumable chunks.

Backends (`sampling.backend`): `torch`, cream's own decoder (cream/decode.py, the default);
`hf`, transformers' `generate`; `vllm`, vLLM's engine (cream/engine/vllm_sampling.py; GPUs, or vLLM's CPU
build). Prompts are sorted by length and generated in chunks, whatever the backend; each chunk is kept on
disk with its own seed, so an interrupted stage resumes at the first missing chunk and reproduces the
same text. The sample stage and the
judge both sample through `generate`.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from cream.runs.artifacts import read_jsonl, write_jsonl
from cream.config import JudgeConfig, SamplingConfig
from cream.config.engine import SamplingBackend
from cream.engine.decode import Decoder
from cream.engine.model_pool import ModelPool
from cream.engine.models import dtype_of, resolve_dtype
from cream.runs.model_ref import ModelRef
from cream.runs.rows import Response


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model sees it: one user turn in its chat template, then the assistant header."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def cut_response(ids: list[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """Generated ids up to and including the first end-of-turn token; whether it was reached."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1], True
    while ids and ids[-1] == pad_id:  # trailing padding of a batch whose other rows ran longer
        ids = ids[:-1]
    return ids, False


def _chunk_sampler(model, model_ref: ModelRef, cfg: SamplingConfig | JudgeConfig, engine: SamplingConfig,
                   eos_id: int, pad_id: int, max_length: int) -> Callable[[list[list[int]], int], list[list[int]]]:
    """A function from (prompts of one chunk, seed) to `cfg.n` generated id lists per prompt, prompt-major."""
    if engine.backend == SamplingBackend.vllm:
        from cream.engine.vllm_sampling import generate_vllm

        def vllm_chunk(prompts: list[list[int]], seed: int) -> list[list[int]]:
            generated = generate_vllm(model_ref, prompts, cfg, seed, max_length, engine.dtype,
                                      engine.tensor_parallel_size)
            return [sample["ids"] for row in generated for sample in row]

        return vllm_chunk
    dtype = dtype_of(resolve_dtype(engine.dtype, model.device.type))
    if engine.backend == SamplingBackend.torch:
        decoder = Decoder(model, dtype)  # weights copied once per stage, LoRA merged

        def torch_chunk(prompts: list[list[int]], seed: int) -> list[list[int]]:
            generator = torch.Generator().manual_seed(seed)
            return decoder.generate(prompts, cfg.n, cfg.max_new_tokens, cfg.temperature, cfg.top_p, eos_id, generator)

        return torch_chunk
    if model.dtype != dtype:  # a copy, so the pool's model keeps the weights scoring reads
        model = copy.deepcopy(model).to(dtype)

    def hf_chunk(prompts: list[list[int]], seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        width = max(len(p) for p in prompts)
        pads = [width - len(p) for p in prompts]
        input_ids = torch.tensor([[pad_id] * k + p for k, p in zip(pads, prompts)], device=model.device)
        attention = (torch.arange(width, device=model.device)[None, :] >= torch.tensor(pads, device=model.device)[:, None]).long()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                # temperature 0 is greedy (the self-reference judge's own answer): HF refuses it with sampling on
                **({"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
                   if cfg.temperature > 0 else {"do_sample": False}),
                max_new_tokens=cfg.max_new_tokens,
                num_return_sequences=cfg.n,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        return out[:, width:].tolist()

    return hf_chunk


def generate(
    pool: ModelPool,
    model_ref: ModelRef,
    tokenizer,
    prompt_ids: list[list[int]],
    cfg: SamplingConfig | JudgeConfig,
    engine: SamplingConfig,
    seed: int,
    chunk_dir: Path,
    desc: str,
    max_length: int,
) -> list[list[Response]]:
    """`cfg.n` sampled continuations of each prompt, in input order.

    `cfg` says what to sample (n, temperature, top_p, length, batch); `engine` (the run's sampling
    config) says with which backend and dtype. Prompts are generated in length order (less padding),
    `cfg.batch_size // cfg.n` per call. Every call's output is kept as a chunk file with its own
    seed: an interrupted run resumes at the first missing chunk with the same results.
    """
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    per_call = max(1, cfg.batch_size // cfg.n)
    chunks = [order[i : i + per_call] for i in range(0, len(order), per_call)]
    results: list[list[Response]] = [[] for _ in prompt_ids]
    with ExitStack() as in_use:
        sampler = None  # built at the first missing chunk: a resumed stage may need none, nor load the model
        for index, chunk in enumerate(tqdm(chunks, desc=desc, unit="batch")):
            path = Path(chunk_dir) / f"{index:05d}.jsonl"
            expected = [prompt_ids[i] for i in chunk]
            # kept from an interrupted run only if it holds these very prompts (each row records its own), each
            # with as many samples as asked for now
            rows = read_jsonl(path) if path.is_file() else []
            if [row.get("prompt_ids") for row in rows] != expected or any(len(row["samples"]) != cfg.n for row in rows):
                if sampler is None:  # vLLM loads its own copy of the weights: the pool's is not needed
                    model = None if engine.backend == SamplingBackend.vllm else in_use.enter_context(pool.use(model_ref))
                    sampler = _chunk_sampler(model, model_ref, cfg, engine, eos_id, pad_id, max_length)
                generated = sampler(expected, seed * 1_000_003 + index)
                rows = [{"prompt_ids": expected[k], "samples": [asdict(_response(tokenizer, ids, eos_id, pad_id))
                                                                for ids in generated[k * cfg.n : (k + 1) * cfg.n]]}
                        for k in range(len(chunk))]
                write_jsonl(path, rows)
            for i, row in zip(chunk, rows):
                results[i] = [Response(**s) for s in row["samples"]]
    return results


def _response(tokenizer, ids: list[int], eos_id: int, pad_id: int) -> Response:
    ids, finished = cut_response(ids, eos_id, pad_id)
    return Response(tokenizer.decode(ids, skip_special_tokens=True), ids, finished)
