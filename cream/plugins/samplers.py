"""The built-in adaptive sampler `none` (`sampling.adaptive`): the shard is sampled with `sampling` as configured."""

from __future__ import annotations

from pathlib import Path

from cream.config import Config
from cream.plugins.contracts import Context, SamplingChoice
from cream.plugins.registry import ADAPTIVE_SAMPLERS
from cream.runs.rows import PromptSamples


class Configured:
    """`none`: the configured `sampling` settings."""

    def check(self, cfg: Config) -> None:
        pass

    def choose(self, ctx: Context, rows: list[PromptSamples], stage_dir: Path) -> SamplingChoice:
        return SamplingChoice(ctx.cfg.sampling)


ADAPTIVE_SAMPLERS.register("none", Configured())
