"""Consistency: how far M_{t-1}'s ranking agrees with M_t's, per prompt, and the C each pair will train
with -> `consistency.jsonl` (`ConsistencyRow`s).

C_j is measured whatever the regularizer (with `none` it is a diagnostic); `regularizer.name` decides
the C that training reads: 1, the iteration's mean, or C_j.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cream.rewards.consistency import measured_consistency, training_consistency
from cream.runs.rows import ConsistencyRow, RewardRow, read_rows, write_rows
from cream.plugins.contracts import Context
from cream.stages import StageResult

NAME = "consistency"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS = ("reward",)
CONFIG = ("regularizer",)
CONSISTENCY = "consistency.jsonl"


def run(ctx: Context, stage_dir: Path) -> StageResult:
    regularizer = ctx.cfg.regularizer
    rows = read_rows(ctx.file("reward", "rewards"), RewardRow)
    current = {r.id: r.rewards for r in rows}
    previous = {r.id: r.previous_rewards for r in rows if r.previous_rewards is not None}
    measured = measured_consistency(current, previous, regularizer.measure)
    trained = training_consistency(measured, [r.id for r in rows], regularizer.name)
    write_rows(Path(stage_dir) / CONSISTENCY, [ConsistencyRow(r.id, measured.get(r.id), trained[r.id]) for r in rows])
    values = np.array(list(measured.values()), dtype=float)
    ctx.logger.histogram(ctx.iteration, "consistency/histogram", values.tolist())
    metrics = {
        "consistency/mean": float(values.mean()) if values.size else float("nan"),
        "consistency/std": float(values.std()) if values.size else float("nan"),
        "consistency/prompts": int(values.size),
        "consistency/measure": regularizer.measure.value,
    }
    return StageResult(metrics, {"consistency": Path(stage_dir) / CONSISTENCY})
