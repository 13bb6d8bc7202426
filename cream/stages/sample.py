"""Sample: N responses per prompt of shard t from M_t -> `responses.jsonl` (`PromptSamples` rows).

Prompts too long for `model.max_length` minus the response budget are skipped, not truncated: a
cut question has no right answer. Chunks are kept in `chunks/`, so an interrupted stage resumes.

What the shard is sampled with is chosen by the adaptive sampler `sampling.adaptive` names, looked up in
`cream.plugins.registry.ADAPTIVE_SAMPLERS`: `none` (`cream.plugins.samplers`) samples with `sampling` as
configured; a plug-in (B-STaR's `bstar`, cream/methods/bstar.py) may pick other settings from the current
model first, and write what later stages read of its choice (e.g. a reward threshold) to `adaptive.json`.
"""

from __future__ import annotations

from pathlib import Path

from cream.runs.artifacts import write_json
from cream.data.load import shard
from cream.errors import StageError
from cream.engine.generation import chat_prompt_ids, generate
from cream.engine.models import load_tokenizer
from cream.plugins.contracts import Context
from cream.plugins.registry import ADAPTIVE_SAMPLERS, settings_of
from cream.runs.rows import PromptSamples, write_rows
from cream.stages import StageResult

NAME = "sample"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS: tuple[str, ...] = ()
CONFIG = ("sampling", "model", "data", "seed")


def plugin_settings(cfg) -> tuple[str, ...]:
    """The adaptive sampler's (B-STaR's probe scores with the run's rewarder: its settings too)."""
    return settings_of([ADAPTIVE_SAMPLERS.get(cfg.sampling.adaptive)], cfg)

RESPONSES, ADAPTIVE = "responses.jsonl", "adaptive.json"


def run(ctx: Context, stage_dir: Path) -> StageResult:
    cfg, model_cfg, policy = ctx.cfg.sampling, ctx.cfg.model, ctx.policy
    prompts = shard(ctx.prompts, ctx.iteration, ctx.cfg.data.shard_size)
    tokenizer = load_tokenizer(policy.base)
    budget = model_cfg.max_length - cfg.max_new_tokens
    rows, too_long = [], 0
    for p in prompts:
        ids = chat_prompt_ids(tokenizer, p["prompt"])
        if len(ids) > budget:
            too_long += 1
            continue
        rows.append(PromptSamples(p["id"], p["task"], p["prompt"], p["answer"], ids))
    if not rows:
        raise StageError(
            f"no prompt fits in model.max_length={model_cfg.max_length} minus sampling.max_new_tokens="
            f"{cfg.max_new_tokens} ({too_long} prompts too long)"
        )
    choice = ADAPTIVE_SAMPLERS.get(cfg.adaptive).choose(ctx, rows, Path(stage_dir))
    samples = generate(ctx.pool, policy, tokenizer, [r.prompt_ids for r in rows], choice.sampling, cfg, ctx.sampling_seed,
                       Path(stage_dir) / "chunks", "sample", model_cfg.max_length)
    for row, responses in zip(rows, samples):
        row.responses = responses
    write_rows(Path(stage_dir) / RESPONSES, rows)
    responses = [resp for row in rows for resp in row.responses]
    lengths = [len(resp.ids) for resp in responses]
    metrics = {
        "sample/prompts": len(rows),
        "sample/prompts_skipped_too_long": too_long,
        "sample/responses": len(responses),
        "sample/empty_responses": sum(not resp.text.strip() for resp in responses),
        "sample/unfinished_responses": sum(not resp.finished for resp in responses),
        "sample/mean_response_tokens": sum(lengths) / len(lengths),
        "sample/distinct_per_prompt": sum(len({x.text for x in row.responses}) for row in rows) / len(rows),
        "sample/temperature": choice.sampling.temperature,
        **choice.metrics,
    }
    outputs = {"responses": Path(stage_dir) / RESPONSES}
    if choice.settings:
        outputs["adaptive"] = Path(stage_dir) / ADAPTIVE
        write_json(outputs["adaptive"], choice.settings)
    return StageResult(metrics, outputs)
