"""DPO: the loss of `dpo.loss` from M_t to M_{t+1} on the pairs stage's examples -> `adapter/` (or `model/`).

The training is `cream.training.dpo_trainer.train`: the reference log-probs come from the reward stage, each
example's label and weight reach the loss. The loss's layout names the examples it reads: the pairs
(`pairs.jsonl`) or every scored response (`scored_responses.jsonl`). Training runs in the loop's process, or
under `accelerate launch` (DeepSpeed ZeRO-3, FSDP) when `dpo.accelerate_config` is set.
"""

from __future__ import annotations

from pathlib import Path

from cream.plugins.contracts import Context
from cream.plugins.registry import LOSSES, settings_of
from cream.stages import StageResult
from cream.training.dpo_trainer import train

NAME = "dpo"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS = ("pairs",)
CONFIG = ("dpo", "model", "seed")


def plugin_settings(cfg) -> tuple[str, ...]:
    return settings_of([LOSSES.get(cfg.dpo.loss)], cfg)



def run(ctx: Context, stage_dir: Path) -> StageResult:
    ctx.pool.release()  # training loads its own trainable copy
    t = ctx.iteration
    examples = ctx.file("pairs", LOSSES.get(ctx.cfg.dpo.loss).layout)  # the pairs stage's output of that name
    model, metrics = train(ctx.cfg.dpo, ctx.cfg.model, ctx.policy, examples, stage_dir,
                           ctx.cfg.seed + t, f"m{t + 1}", ctx.device)
    return StageResult(metrics, {"model": model})
