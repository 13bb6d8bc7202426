"""The stages of the loop, one module each, all with the same contract.

A stage module exports
- `NAME`: its folder in the run (`runs/<experiment>/<run_name>/iter_<k>/<NAME>/`);
- `READS`: the stages of the same iteration whose outputs it reads;
- `CONFIG`: the configuration keys its result depends on (sections, or dotted keys);
- `run(ctx, stage_dir) -> StageResult`: the work, writing its artifacts into `stage_dir`.

`cream.loop` runs them in order and hands each one the outputs of the earlier ones through the
`Context`. A stage already complete is reused only while its `CONFIG` settings, the outputs of its
`READS` stages, the models so far and the data are those it was computed from. No stage imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from cream.config import Config
from cream.runs.logger import RunLogger
from cream.engine.model_pool import ModelPool
from cream.engine.models import ModelRef

Output = Union[Path, ModelRef]


@dataclass
class StageResult:
    metrics: dict  # logged to metrics.jsonl and W&B, and kept in the stage's manifest
    outputs: dict[str, Output] = field(default_factory=dict)  # artifact files, and `model` for a trained one


@dataclass
class Context:
    """What a stage may read: the run's configuration and data, the models so far, earlier stages' outputs."""

    cfg: Config
    pool: ModelPool
    device: str  # "cuda" when a GPU is visible, else "cpu"
    logger: RunLogger
    data_dir: Optional[Path]  # None: the hub
    prompts: list[dict]  # every unlabelled prompt, shuffled; iteration t reads shard t
    sft_examples: list[dict]
    models: list[ModelRef]  # models[k] is M_k: M0, M1 (after SFT), ..., the newest last
    iteration: int = 0
    outputs: dict[str, dict[str, Output]] = field(default_factory=dict)  # this iteration's, by stage name
    digests: dict[str, str] = field(default_factory=dict)  # the identity of those outputs, by stage name

    @property
    def policy(self) -> ModelRef:
        """M_t, the model iteration t samples from and trains."""
        return self.models[self.iteration]

    @property
    def newest(self) -> ModelRef:
        return self.models[-1]

    def file(self, stage: str, name: str) -> Path:
        """An artifact of an earlier stage of this iteration."""
        return self.outputs[stage][name]

    @property
    def sampling_seed(self) -> int:
        """The iteration's own seed for sampling and judging."""
        return self.cfg.seed * 1000 + self.iteration
