"""Evaluate: benchmark scores of the newest model (M0, M1, M_{t+1}) through lm-eval -> `eval.json`,
`predictions.jsonl`. The protocols and backends are in `cream.eval.harness`."""

from __future__ import annotations

from pathlib import Path

from cream.engine.models import resolve_dtype
from cream.runs.artifacts import read_json
from cream.eval.harness import evaluate_model, wrong_answers
from cream.plugins.contracts import Context
from cream.stages import StageResult

NAME = "evaluate"
DATA = ("eval_files",)  # the parts of the run's data it reads (`data_identity`)
READS: tuple[str, ...] = ()
CONFIG = ("eval", "model", "seed")
WRONG_ANSWERS_LOGGED = 20


def run(ctx: Context, stage_dir: Path) -> StageResult:
    model = ctx.newest
    ctx.pool.release()  # lm-eval loads its own copy
    scores = evaluate_model(ctx.cfg.eval, ctx.data_dir, Path(model.base), Path(model.adapter) if model.adapter else None,
                            stage_dir, dtype=resolve_dtype(ctx.cfg.eval.dtype or ctx.cfg.model.dtype, ctx.device), seed=ctx.cfg.seed, device=ctx.device)
    timing = read_json(Path(stage_dir) / "eval.json")
    metrics = {f"eval/{task}": score for task, score in scores.items()}
    # standard error of each score, percent points (older eval.json files have none)
    metrics |= {f"eval/{task}_stderr": se for task, se in timing.get("stderr", {}).items() if se is not None}
    metrics["time/eval_items_per_s"] = timing["items"] / max(timing["seconds"], 1e-9)
    wrong = wrong_answers(stage_dir, WRONG_ANSWERS_LOGGED)
    if wrong:
        columns = list(dict.fromkeys(c for w in wrong for c in w))  # generated and multiple-choice items differ
        ctx.logger.table(ctx.iteration, f"eval/wrong_answers_{model.name}", columns,
                         [[w.get(c) for c in columns] for w in wrong])
    return StageResult(metrics, {"eval": Path(stage_dir) / "eval.json", "predictions": Path(stage_dir) / "predictions.jsonl"})
