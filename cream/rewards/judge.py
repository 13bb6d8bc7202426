"""SRLM's LLM-as-a-judge: the model grades each of its responses; unparsable judgements are dropped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from cream.config import JudgeConfig, SamplingConfig
from cream.engine.generation import chat_prompt_ids, generate
from cream.engine.model_pool import ModelPool
from cream.engine.models import load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.runs.rows import PromptSamples


def parse_score(text: str, pattern: str, min_score: int, max_score: int) -> Optional[int]:
    """The score a judgement gives, or None: no score, two different scores, or outside the range."""
    values = {int(m) for m in re.findall(pattern, text)}
    if len(values) != 1:
        return None
    (value,) = values
    return value if min_score <= value <= max_score else None


def judge_prompt(template: str, prompt: str, response: str) -> str:
    # str.replace, not str.format: the template, prompt and response may all contain braces.
    return template.replace("{prompt}", prompt).replace("{response}", response)


def judge_scores(pool: ModelPool, model_ref: ModelRef, cfg: JudgeConfig, engine: SamplingConfig, rows: list[PromptSamples],
                 max_length: int, seed: int, chunk_dir: Path) -> tuple[list[list[Optional[float]]], dict]:
    """Mean valid score of `cfg.samples` judgements per response (None when none parses), and stats."""
    tokenizer = load_tokenizer(model_ref.base)
    flat = [(r, resp) for r in rows for resp in r.responses]
    prefix = tokenizer(cfg.reply_prefix, add_special_tokens=False)["input_ids"] if cfg.reply_prefix else []
    encoded = [chat_prompt_ids(tokenizer, judge_prompt(cfg.template, r.prompt, resp.text)) + prefix for r, resp in flat]
    fits = [i for i, ids in enumerate(encoded) if len(ids) + cfg.max_new_tokens <= max_length]
    judgements = generate(pool, model_ref, tokenizer, [encoded[i] for i in fits], cfg, engine, seed, chunk_dir,
                          "judge", max_length)
    parsed: list[list[Optional[int]]] = [[] for _ in flat]
    for i, samples in zip(fits, judgements):
        parsed[i] = [parse_score(cfg.reply_prefix + s.text, cfg.pattern, cfg.min_score, cfg.max_score) for s in samples]
    means = [float(np.mean(v)) if (v := [x for x in p if x is not None]) else None for p in parsed]
    valid = [x for p in parsed for x in p if x is not None]
    attempted = len(fits) * cfg.samples
    stats = {
        "judge/judgements": attempted,
        "judge/parse_rate": len(valid) / attempted if attempted else 0.0,
        "judge/unparsable": attempted - len(valid),
        "judge/too_long": len(flat) - len(fits),
        "judge/unscored_responses": sum(m is None for m in means),
        "judge/top_score_share": sum(v == cfg.max_score for v in valid) / len(valid) if valid else 0.0,
        **{f"judge/score_{k}": sum(v == k for v in valid) for k in range(cfg.min_score, cfg.max_score + 1)},
    }
    cursor, out = 0, []
    for r in rows:
        out.append(means[cursor : cursor + len(r.responses)])
        cursor += len(r.responses)
    return out, stats
