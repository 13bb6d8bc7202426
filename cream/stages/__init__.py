"""The stages of the loop, one module each, all with the same contract.

A stage module exports
- `NAME`: its folder in the run (`runs/<experiment>/<run_name>/iter_<k>/<NAME>/`);
- `READS`: the stages of the same iteration whose outputs it reads;
- `CONFIG`: the configuration keys its own code reads (sections, or dotted keys);
- `plugin_settings(cfg)`: the keys the plug-ins it runs under `cfg` read (each entry's `settings`,
  `cream.plugins.registry.settings_of`), so a method's setting recomputes only the stages that run it, and only
  when the configuration selects it;
- `run(ctx, stage_dir) -> StageResult`: the work, writing its artifacts into `stage_dir`.

`cream.loop` runs them in order and hands each one the outputs of the earlier ones through the
`Context` (`cream.plugins.contracts`: filters and samplers receive it too). A stage already complete is
reused only while its settings (`settings(stage, cfg)`), the outputs of its `READS` stages, the models so far and the data
are those it was computed from. No stage imports another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from cream.plugins.contracts import Output

if TYPE_CHECKING:
    from cream.config import Config


@dataclass
class StageResult:
    metrics: dict  # logged to metrics.jsonl and W&B, and kept in the stage's manifest
    outputs: dict[str, Output] = field(default_factory=dict)  # artifact files, and `model` for a trained one


def settings(stage: ModuleType, cfg: "Config") -> tuple[str, ...]:
    """The configuration keys a stage's result depends on under `cfg`: its own and its selected plug-ins'."""
    own = getattr(stage, "plugin_settings", None)
    return tuple(dict.fromkeys([*stage.CONFIG, *(own(cfg) if own else ())]))
