"""Sample stage: N responses per prompt from the current model, with HF `generate` and its KV cache.

Prompts are sorted by length and generated in chunks; each chunk is kept on disk with its own
seed, so an interrupted stage resumes at the first missing chunk and reproduces the same text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from cream.artifacts import read_jsonl, write_jsonl
from cream.config import ModelConfig, SamplingConfig
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
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
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
    encoded.sort(key=lambda r: len(r["prompt_ids"]))
    per_call = max(1, cfg.batch_size // cfg.n)
    chunks = [encoded[i : i + per_call] for i in range(0, len(encoded), per_call)]
    chunk_dir = Path(stage_dir) / "chunks"

    with pool.use(model_ref) as model:
        for index, chunk in enumerate(tqdm(chunks, desc="sample", unit="batch")):
            path = chunk_dir / f"{index:05d}.jsonl"
            if path.is_file():
                continue  # kept from an interrupted run
            torch.manual_seed(seed * 1_000_003 + index)
            width = max(len(r["prompt_ids"]) for r in chunk)
            input_ids = torch.tensor([[pad_id] * (width - len(r["prompt_ids"])) + r["prompt_ids"] for r in chunk])
            attention = (torch.arange(width)[None, :] >= torch.tensor([width - len(r["prompt_ids"]) for r in chunk])[:, None]).long()
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
            for k, r in enumerate(chunk):
                responses = []
                for ids in generated[k * cfg.n : (k + 1) * cfg.n]:
                    ids, finished = _cut_response(ids, eos_id, pad_id)
                    responses.append({"text": tokenizer.decode(ids, skip_special_tokens=True), "ids": ids, "finished": finished})
                rows.append({**r, "responses": responses})
            write_jsonl(path, rows)

    rows = [row for index in range(len(chunks)) for row in read_jsonl(chunk_dir / f"{index:05d}.jsonl")]
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
