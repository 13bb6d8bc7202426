"""The self-rewarding loop: the stages of each iteration, and the run folder that makes them resumable.

    iteration 0:  evaluate_m0 -> sft -> evaluate
    iteration t:  sample -> reward -> consistency -> pairs -> train -> evaluate

Each stage (cream/stages/) writes into `runs/<experiment>/<run_name>/iter_<k>/<stage>/`. A stage folder
with its DONE mark is reused, so rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from cream.artifacts import MANIFEST, config_hash, is_complete, mark_complete, read_json, verify_outputs, write_json
from cream.config import Config, ResumeMode, to_plain_dict
from cream.data import check_shards, load_prompts, load_sft_examples, resolve_data_dir
from cream.errors import ConfigError
from cream.logger import RunLogger
from cream.model_pool import ModelPool
from cream.models import ModelRef, resolve_model_dir
from cream.stages import Context, StageResult, consistency, evaluate, pairs, reward, sample, sft, train

ITERATION = (sample, reward, consistency, pairs, train, evaluate)
RUN_MANIFEST = "run.json"
# Keys that may change between a run and its resumption without changing any result.
_NOT_RESULT_KEYS = ("logger", "run_name", "threads", "resume", "paths")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _encode(outputs: dict, stage_dir: Path) -> dict:
    """A stage's outputs as JSON for its manifest: files relative to the stage folder, models as dicts."""
    return {k: {"model": v.as_dict()} if isinstance(v, ModelRef) else {"file": str(Path(v).relative_to(stage_dir))}
            for k, v in outputs.items()}


def _decode(encoded: dict, stage_dir: Path) -> dict:
    return {k: ModelRef(**v["model"]) if "model" in v else stage_dir / v["file"] for k, v in encoded.items()}


class Run:
    """The run folder: its manifest, its logger and the stage runner."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.dir = Path(cfg.paths.runs) / cfg.experiment_name / cfg.run_name
        if cfg.resume == ResumeMode.false:
            suffix = 1
            while (self.dir / RUN_MANIFEST).exists():
                suffix += 1
                self.dir = Path(cfg.paths.runs) / cfg.experiment_name / f"{cfg.run_name}_{suffix}"
        self.result_config = {k: v for k, v in to_plain_dict(cfg).items() if k not in _NOT_RESULT_KEYS}
        manifest_path = self.dir / RUN_MANIFEST
        run_id = None
        if manifest_path.is_file():
            previous = read_json(manifest_path)
            old, new = _flatten(previous["config"]), _flatten(self.result_config)
            differing = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if differing and cfg.resume != ResumeMode.force:
                changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing[:10])
                raise ConfigError(
                    f"run folder {self.dir} holds a run with another configuration ({changes}); "
                    f"choose a new `run_name`, `resume=false` for a new folder, or `resume=force` to reuse it anyway"
                )
            run_id = previous.get("wandb_id")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logger = RunLogger(cfg, self.dir, run_id=run_id)
        write_json(manifest_path, {"config": self.result_config, "wandb_id": self.logger.run_id})
        self.stage_seconds: dict[str, float] = {}

    def stage(self, ctx: Context, stage: ModuleType, name: Optional[str] = None) -> StageResult:
        """Run `stage` unless its folder is complete; log its metrics; hand its outputs to the context."""
        name = name or stage.NAME
        iteration = ctx.iteration
        stage_dir = self.dir / f"iter_{iteration}" / name
        if is_complete(stage_dir):
            verify_outputs(stage_dir)
            manifest = read_json(stage_dir / MANIFEST)
            print(f"[cream] iter {iteration} {name}: complete, reusing {stage_dir}")
            result = StageResult(manifest["metrics"], _decode(manifest["artifacts"], stage_dir))
        else:
            inputs = [f for s in stage.READS for f in ctx.outputs[s].values() if isinstance(f, Path)]
            print(f"[cream] iter {iteration} {name} ...")
            start = time.perf_counter()
            result = stage.run(ctx, stage_dir)
            seconds = time.perf_counter() - start
            result.metrics = {**result.metrics, f"time/{name}": seconds, "memory/peak_rss_mb": peak_rss_mb()}
            self.stage_seconds[f"iter_{iteration}/{name}"] = seconds
            mark_complete(stage_dir, config_hash(self.result_config), inputs,
                          extra={"metrics": result.metrics, "artifacts": _encode(result.outputs, stage_dir)})
            self.logger.log(iteration, name, result.metrics)
        ctx.outputs[name] = result.outputs
        if "model" in result.outputs:
            ctx.models.append(result.outputs["model"])
        return result


def run(cfg: Config) -> dict:
    """Run the whole experiment; returns the evaluation scores per model."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # Everything that can fail on bad input is checked before any model loads.
    data_dir = resolve_data_dir(cfg.paths.data, cfg.data.source)
    prompts = load_prompts(cfg.data, data_dir, cfg.seed)
    check_shards(len(prompts), cfg.iterations, cfg.data.shard_size)
    sft_examples = load_sft_examples(cfg.data.sft_split, data_dir, cfg.sft.max_examples, cfg.seed) if cfg.sft.enabled else []

    run_ = Run(cfg)
    m0 = ModelRef("m0", resolve_model_dir(cfg.model, Path(cfg.paths.cache).expanduser()))
    ctx = Context(cfg=cfg, pool=ModelPool(cfg.model), device="cuda" if torch.cuda.is_available() else "cpu",
                  logger=run_.logger, data_dir=data_dir, prompts=prompts, sft_examples=sft_examples, models=[m0])
    scores: dict[str, dict] = {}

    def evaluate_newest(name: str) -> None:
        if cfg.eval.enabled:
            metrics = run_.stage(ctx, evaluate, name).metrics
            scores[ctx.newest.name] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/")}
            print(score_table(scores))

    evaluate_newest("evaluate_m0")
    if cfg.sft.enabled:
        run_.stage(ctx, sft)
        evaluate_newest(evaluate.NAME)
    else:
        ctx.models.append(ModelRef("m1", m0.base))  # M1 = M0
    for t in range(1, cfg.iterations + 1):
        ctx.iteration, ctx.outputs = t, {}
        for stage in ITERATION[:-1]:
            run_.stage(ctx, stage)
        evaluate_newest(evaluate.NAME)

    ctx.pool.release()
    if scores:
        run_.logger.table(cfg.iterations, "eval/summary", ["model", *next(iter(scores.values())).keys()],
                          [[m, *s.values()] for m, s in scores.items()])
    run_.logger.summary({"time/stages": run_.stage_seconds, "memory/peak_rss_mb": peak_rss_mb()})
    run_.logger.finish()
    print(f"[cream] run folder: {run_.dir}")
    return scores


def score_table(scores: dict[str, dict]) -> str:
    tasks = list(next(iter(scores.values())).keys())
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{s.get(t, float('nan')):.1f}" for t in tasks) + " |" for m, s in scores.items()]
    return "\n".join(lines)
