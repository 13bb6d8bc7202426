"""The stages of the loop, one module each, all with the same contract.

A stage module exports
- `NAME`: its folder in the run (`runs/<experiment>/<run_name>/iter_<k>/<NAME>/`);
- `READS`: the stages of the same iteration whose outputs it reads;
- `CONFIG`: the configuration keys its result depends on (sections, or dotted keys);
- `run(ctx, stage_dir) -> StageResult`: the work, writing its artifacts into `stage_dir`.

`cream.loop` runs them in order and hands each one the outputs of the earlier ones through the
`Context` (`cream.plugins.contracts`: filters and samplers receive it too). A stage already complete is
reused only while its `CONFIG` settings, the outputs of its `READS` stages, the models so far and the data
are those it was computed from. No stage imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cream.plugins.contracts import Output


@dataclass
class StageResult:
    metrics: dict  # logged to metrics.jsonl and W&B, and kept in the stage's manifest
    outputs: dict[str, Output] = field(default_factory=dict)  # artifact files, and `model` for a trained one
