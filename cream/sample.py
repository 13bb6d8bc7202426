"""Sample stage: N responses per prompt from the current model, with HF `generate` and its KV cache.

Prompts are sorted by length and generated in chunks; each chunk is kept on disk with its own
seed, so an interrupted stage resumes at the first missing chunk and reproduces the same text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cream.artifacts import read_jsonl, write_jsonl
from cream.config import JudgeConfig, ModelConfig, SamplingConfig
from cream.errors import StageError
from cream.models import ModelPool, ModelRef, load_tokenizer

RESPONSES = "responses.jsonl"


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model sees it: one user turn in its chat template, then the assistant header."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _cut_response(ids: list[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """Generated ids up to and including the first end-of-turn token; whether it was reached."""
    if eos_id in ids:
        return ids[: ids.index(eos_id) + 1], True
    while ids and ids[-1] == pad_id:  # trailing padding of a batch whose other rows ran longer
        ids = ids[:-1]
    return ids, False


def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    cfg: SamplingConfig | JudgeConfig,
    seed: int,
    chunk_dir: Path,
    desc: str,
) -> list[list[dict]]:
    """`cfg.n` sampled continuations of each prompt, in input order: {"text", "ids", "finished"}.

    Prompts are generated in length order (less padding), `cfg.batch_size // cfg.n` per call, so
    each prompt is encoded once for its n samples. Every call's output is kept as a chunk file with
    its own seed: an interrupted run resumes at the first missing chunk with the same results.
    """
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    per_call = max(1, cfg.batch_size // cfg.n)
    chunks = [order[i : i + per_call] for i in range(0, len(order), per_call)]
    results: list[list[dict]] = [[] for _ in prompt_ids]
    for index, chunk in enumerate(tqdm(chunks, desc=desc, unit="batch")):
        path = Path(chunk_dir) / f"{index:05d}.jsonl"
        if not path.is_file():  # else kept from an interrupted run
            torch.manual_seed(seed * 1_000_003 + index)
            width = max(len(prompt_ids[i]) for i in chunk)
            pads = [width - len(prompt_ids[i]) for i in chunk]
            input_ids = torch.tensor([[pad_id] * p + prompt_ids[i] for p, i in zip(pads, chunk)])
            attention = (torch.arange(width)[None, :] >= torch.tensor(pads)[:, None]).long()
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    do_sample=True,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    top_k=0,
                    max_new_tokens=cfg.max_new_tokens,
                    num_return_sequences=cfg.n,
                    pad_token_id=pad_id,
                    eos_token_id=eos_id,
                )
            generated = out[:, width:].tolist()
            rows = []
            for k in range(len(chunk)):
                samples = []
                for ids in generated[k * cfg.n : (k + 1) * cfg.n]:
                    ids, finished = _cut_response(ids, eos_id, pad_id)
                    samples.append({"text": tokenizer.decode(ids, skip_special_tokens=True), "ids": ids, "finished": finished})
                rows.append({"samples": samples})
            write_jsonl(path, rows)
        for i, row in zip(chunk, read_jsonl(path)):
            results[i] = row["samples"]
    return results


def sample(
    cfg: SamplingConfig,
    model_cfg: ModelConfig,
    pool: ModelPool,
    model_ref: ModelRef,
    prompts: list[dict],
    stage_dir: Path,
    seed: int,
) -> dict:
    """Write `responses.jsonl` (one row per prompt with its N responses) and return the stage metrics."""
    tokenizer = load_tokenizer(model_ref.base)
    budget = model_cfg.max_length - cfg.max_new_tokens
    encoded, too_long = [], 0
    for p in prompts:
        ids = chat_prompt_ids(tokenizer, p["prompt"])
        if len(ids) > budget:
            too_long += 1  # skipped, not truncated: a cut question has no right answer
            continue
        encoded.append({**p, "prompt_ids": ids})
    if not encoded:
        raise StageError(
            f"no prompt fits in model.max_length={model_cfg.max_length} minus sampling.max_new_tokens="
            f"{cfg.max_new_tokens} ({too_long} prompts too long)"
        )
    with pool.use(model_ref) as model:
        samples = generate(model, tokenizer, [r["prompt_ids"] for r in encoded], cfg, seed,
                           Path(stage_dir) / "chunks", desc="sample")
    rows = [{**r, "responses": s} for r, s in zip(encoded, samples)]
    write_jsonl(Path(stage_dir) / RESPONSES, rows)
    responses = [resp for row in rows for resp in row["responses"]]
    lengths = [len(resp["ids"]) for resp in responses]
    return {
        "sample/prompts": len(rows),
        "sample/prompts_skipped_too_long": too_long,
        "sample/responses": len(responses),
        "sample/empty_responses": sum(not resp["text"].strip() for resp in responses),
        "sample/unfinished_responses": sum(not resp["finished"] for resp in responses),
        "sample/mean_response_tokens": sum(lengths) / len(lengths),
        "sample/distinct_per_prompt": sum(len({x["text"] for x in row["responses"]}) for row in rows) / len(rows),
    }
