"""SFT: M0 -> M1 on the labelled seed conversations, loss on the assistant reply only -> `adapter/` (or `model/`).

The training is `cream.training.sft_trainer.sft`: in the loop's process, or under `accelerate launch` when
`sft.accelerate_config` is set.
"""

from __future__ import annotations

from pathlib import Path

from cream.plugins.contracts import Context
from cream.stages import StageResult
from cream.training.sft_trainer import sft

NAME = "sft"
DATA = ("sft_examples",)  # the parts of the run's data it reads (`data_identity`)
READS: tuple[str, ...] = ()
CONFIG = ("sft", "model", "data", "seed")  # the settings its result depends on


def run(ctx: Context, stage_dir: Path) -> StageResult:
    ctx.pool.release()  # training loads its own trainable copy
    model, metrics = sft(ctx.cfg.sft, ctx.cfg.model, ctx.models[0], ctx.sft_examples, stage_dir, ctx.cfg.seed,
                         ctx.device)
    return StageResult(metrics, {"model": model})
