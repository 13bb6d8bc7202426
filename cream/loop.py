"""The self-rewarding loop: the stages of each iteration, and the run folder that makes them resumable.

    iteration 0:  evaluate_m0 -> sft -> evaluate
    iteration t:  sample -> reward -> consistency -> pairs -> dpo [-> diagnose] -> evaluate

Each stage (cream/stages/) writes into `runs/<experiment>/<run_name>/iter_<k>/<stage>/`. A stage folder
with its DONE mark is reused, so rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from cream.errors import StageError
from cream.runs.artifacts import MANIFEST, is_complete, iter_jsonl, mark_complete, read_json, verify_outputs
from cream import preflight
from cream.config import Config
from cream.config.eval import EvalProtocol
from cream.data.load import check_shards, load_prompts, load_sft_examples, resolve_data_dir
from cream.eval.task_files import check_data, lm_tasks
from cream.runs.logger import METRICS, RunLogger
from cream.engine.model_pool import ModelPool
from cream.engine.models import resolve_device, resolve_dtype, resolve_model_dir
from cream.runs.model_ref import ModelRef
from cream.runs.run_folder import (EVALUATE_M0, RunFolder, data_identity, digest, outputs_digest, prepare_stage, select,
                                   stage_folder)
from cream.plugins.contracts import Context
from cream.stages import StageResult, consistency, diagnose, evaluate, pairs, reward, sample, sft, dpo
from cream.stages import settings as stage_settings

log = logging.getLogger("cream")
ITERATION = (sample, reward, consistency, pairs, dpo)  # then evaluate, when eval.enabled


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Run:
    """The run folder, its logger and the stage runner."""

    def __init__(self, cfg: Config, data: dict):
        self.folder = RunFolder(cfg, data)
        self.dir = self.folder.dir
        self.data = data
        self.logged = _logged_stages(self.dir / METRICS)
        self.logger = RunLogger(cfg, self.dir, run_id=self.folder.manifest["wandb_id"])
        self.folder.save(self.logger.run_id)
        self.model_digests: dict[str, str] = {}  # model name -> digest of the stage that produced it
        self.stage_seconds: dict[str, float] = {}

    def fingerprint(self, ctx: Context, stage: ModuleType) -> dict:
        # a model no stage produced (M0) is what the `model` settings say
        models = [self.model_digests.get(m.name, m.name) for m in ctx.models]
        return fingerprint(stage, ctx.cfg, self.folder.config, self.data, {s: ctx.digests[s] for s in stage.READS}, models)

    def stage(self, ctx: Context, stage: ModuleType, name: Optional[str] = None,
              shared: Optional[Path] = None) -> StageResult:
        """Run `stage` unless its folder is complete with the current fingerprint; log its metrics once.

        `shared`: a folder outside the run where runs keep this stage's result, one subfolder per fingerprint
        (the stages before the first iteration: `shared_stage_dir`); copied from when complete there, published
        to otherwise."""
        name = name or stage.NAME
        iteration = ctx.iteration
        stage_dir = stage_folder(self.dir, iteration, name)
        fingerprint = self.fingerprint(ctx, stage)
        if shared is not None:
            shared = shared / digest(fingerprint)
        manifest = read_json(stage_dir / MANIFEST) if is_complete(stage_dir) else None
        if manifest is not None and manifest.get("fingerprint") == fingerprint:
            verify_outputs(stage_dir)
            log.info(f"iter {iteration} {name}: complete, reusing {stage_dir}")
            result = StageResult(manifest["metrics"], self._decode(manifest["artifacts"], stage_dir))
            if (iteration, name) not in self.logged:  # killed between its DONE and its record
                self.logger.log(iteration, name, result.metrics)
            if shared is not None:  # a run older than the shared copy, or killed before publishing
                publish(stage_dir, shared)
        elif shared is not None and (manifest := shared_manifest(shared, fingerprint)) is not None:
            start = time.perf_counter()
            prepare_stage(stage_dir, fingerprint)
            for rel in manifest["outputs"]:
                link_or_copy(shared / rel, stage_dir / rel)
            # the time is this run's (the copy's); the computing run's stays in the shared manifest
            metrics = {**manifest["metrics"], f"time/{name}": time.perf_counter() - start}
            mark_complete(stage_dir, extra={"fingerprint": fingerprint, "metrics": metrics,
                                            "artifacts": manifest["artifacts"], "copied_from": str(shared)})
            verify_outputs(stage_dir)
            log.info(f"iter {iteration} {name}: computed by another run with the same settings; copied from {shared}")
            result = StageResult(metrics, self._decode(manifest["artifacts"], stage_dir))
            self.logger.log(iteration, name, result.metrics)
        else:
            if manifest is not None:
                log.info(f"iter {iteration} {name}: computed from other settings, inputs or data; recomputing")
            prepare_stage(stage_dir, fingerprint)
            log.info(f"iter {iteration} {name} ...")
            start = time.perf_counter()
            result = stage.run(ctx, stage_dir)
            seconds = time.perf_counter() - start
            result.metrics = {**result.metrics, f"time/{name}": seconds, "memory/peak_rss_mb": peak_rss_mb()}
            self.stage_seconds[f"iter_{iteration}/{name}"] = seconds
            mark_complete(stage_dir, extra={"fingerprint": fingerprint, "metrics": result.metrics,
                                            "artifacts": self._encode(result.outputs, stage_dir)})
            self.logger.log(iteration, name, result.metrics)
            if shared is not None:
                publish(stage_dir, shared)
        self.logged.add((iteration, name))
        ctx.outputs[name] = result.outputs
        ctx.digests[name] = outputs_digest(stage_dir)
        if "model" in result.outputs:
            ctx.models.append(result.outputs["model"])
            self.model_digests[result.outputs["model"].name] = ctx.digests[name]
        return result

    def _encode(self, outputs: dict, stage_dir: Path) -> dict:
        """A stage's outputs as JSON: files relative to the stage folder, models' paths relative to the run."""
        return {k: {"model": self.folder.portable(v)} if isinstance(v, ModelRef) else {"file": str(Path(v).relative_to(stage_dir))}
                for k, v in outputs.items()}

    def _decode(self, encoded: dict, stage_dir: Path) -> dict:
        return {k: self.folder.model(v["model"]) if "model" in v else stage_dir / v["file"] for k, v in encoded.items()}


def shared_stage_dir(cfg: Config, model_dir: str, name: str) -> Path:
    """Where runs share a result that only the settings, the data and M0 decide, one subfolder per
    fingerprint: keyed by M0's files (name, size, modification time), so a model folder changed in place is
    never served an old result."""
    folder = Path(model_dir)
    files = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else model_dir  # a hub id
    return Path(cfg.paths.cache).expanduser() / "shared_stages" / name / digest([str(folder.resolve()), files])


def shared_manifest(shared: Path, fingerprint: dict) -> Optional[dict]:
    """The manifest of a complete shared copy made under `fingerprint` whose files still match it, else None."""
    if not is_complete(shared):
        return None
    manifest = read_json(shared / MANIFEST)
    if manifest.get("fingerprint") != fingerprint:
        return None
    try:
        verify_outputs(shared)
    except StageError as e:  # a damaged copy is recomputed, never served
        log.warning(f"{e}; computing the stage instead")
        return None
    return manifest


def link_or_copy(source, target) -> None:
    """A hard link where the file system allows one (a model is not stored twice; every artifact is written
    once, to a new file renamed into place, so neither side is ever edited under the other), else a copy."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish(stage_dir: Path, shared: Path) -> None:
    """A complete stage folder copied to `shared`, atomically: a reader sees all of it or nothing."""
    if is_complete(shared):
        return
    tmp = shared.with_name(f".{shared.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(stage_dir, tmp, copy_function=link_or_copy)
    shutil.rmtree(shared, ignore_errors=True)  # an incomplete copy
    try:
        os.replace(tmp, shared)
    except OSError:  # another run published it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(shared):
            raise


def fingerprint(stage: ModuleType, cfg: Config, plain_config: dict, data: dict, inputs: dict[str, str],
                models: list[str]) -> dict:
    """What a stage's result depends on: its settings and its selected plug-ins' (`cream.stages.settings`, read
    from the run's `plain_config`), the outputs of the stages it reads (`inputs`), the models so far, and the
    parts of the data it reads (`DATA`: an edited evaluation file recomputes the evaluations only)."""
    return {
        "config": digest(select(plain_config, stage_settings(stage, cfg))),
        "inputs": inputs,
        "models": models,
        "data": digest({part: data[part] for part in stage.DATA}),
    }


def _logged_stages(metrics_path: Path) -> set[tuple[int, str]]:
    """The (iteration, stage) records of metrics.jsonl. A last line without its newline was torn by a kill: it is
    dropped (its stage's manifest restores the record), so the next record starts a line of its own."""
    if not metrics_path.is_file():
        return set()
    content = metrics_path.read_bytes()
    if content and not content.endswith(b"\n"):
        metrics_path.write_bytes(content[:content.rfind(b"\n") + 1])
    return {(r["iteration"], r["stage"]) for r in iter_jsonl(metrics_path)}  # other damage: DataError naming the line


def eval_files(cfg: Config, data_dir: Optional[Path]) -> list[Path]:
    """The local split files the evaluation reads, each checked now (a missing, empty or malformed one is
    reported before any model loads, naming the file and line)."""
    if not cfg.eval.enabled or data_dir is None:
        return []
    protocol = EvalProtocol(cfg.eval.protocol)
    return [check_data(task, lm_tasks(task, protocol, hub=False), data_dir, cfg.eval.split)[0] for task in cfg.eval.tasks]


def run(cfg: Config) -> dict:
    """Run the whole experiment; returns the evaluation scores per model."""
    preflight.check(cfg)  # optional backends, the model's location, names: before anything is written
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # Everything that can fail on bad input is checked before any model loads.
    data_dir = resolve_data_dir(cfg.paths.data, cfg.data.source)
    prompts = load_prompts(cfg.data, data_dir, cfg.seed)
    check_shards(len(prompts), cfg.iterations, cfg.data.shard_size)
    if cfg.diagnose.enabled:
        diagnose.held_out(prompts, cfg)  # enough prompts beyond the shards
    sft_examples = load_sft_examples(cfg.data.sft_split, data_dir, cfg.sft.max_examples, cfg.seed) if cfg.sft.enabled else []
    identity = data_identity(prompts, sft_examples, eval_files(cfg, data_dir))

    m0 = ModelRef("m0", resolve_model_dir(cfg.model, Path(cfg.paths.cache).expanduser()))
    device = resolve_device(cfg.device)
    # `auto` dtypes become what this machine computes fastest before run.json and the fingerprints record them:
    # a stage computed in bfloat16 elsewhere is not reused as if it were float32
    cfg.sampling.dtype = resolve_dtype(cfg.sampling.dtype, device)
    if cfg.eval.dtype is not None:
        cfg.eval.dtype = resolve_dtype(cfg.eval.dtype, device)
    run_ = Run(cfg, identity)
    ctx = Context(cfg=cfg, pool=ModelPool(cfg.model, device), device=device,
                  logger=run_.logger, data_dir=data_dir, prompts=prompts, sft_examples=sft_examples, models=[m0])
    scores: dict[str, dict] = {}

    final = cfg.iterations + 1  # the index of the last model, M_{T+1}

    def shared(name: str) -> Optional[Path]:
        # Before the first iteration (M0's evaluation, the SFT, M1's evaluation) a result depends on the
        # settings, the data and M0 alone: the runs of a comparison (one seed, several methods) share it
        return shared_stage_dir(cfg, m0.base, f"iter_0/{name}") if ctx.iteration == 0 else None

    def evaluate_newest(name: str) -> None:
        if cfg.eval.enabled and evaluated(len(ctx.models) - 1, final, cfg.eval.every):
            metrics = run_.stage(ctx, evaluate, name, shared(name)).metrics
            scores[ctx.newest.name] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/")}
            log.info("scores\n%s", score_table(scores))

    evaluate_newest(EVALUATE_M0)
    if cfg.sft.enabled:
        run_.stage(ctx, sft, shared=shared(sft.NAME))
        evaluate_newest(evaluate.NAME)
    else:
        ctx.models.append(ModelRef("m1", m0.base))  # M1 = M0
    for t in range(1, cfg.iterations + 1):
        ctx.iteration, ctx.outputs, ctx.digests = t, {}, {}
        for stage in ITERATION:
            run_.stage(ctx, stage)
        if cfg.diagnose.enabled:  # the reward bias of the model this iteration trained
            run_.stage(ctx, diagnose)
        evaluate_newest(evaluate.NAME)

    ctx.pool.release()
    if scores:
        run_.logger.table(cfg.iterations, "eval/summary", ["model", *next(iter(scores.values())).keys()],
                          [[m, *s.values()] for m, s in scores.items()])
    run_.logger.summary({"time/stages": run_.stage_seconds, "memory/peak_rss_mb": peak_rss_mb()})
    run_.logger.finish()
    log.info(f"run folder: {run_.dir}")
    return scores


def evaluated(k: int, final: int, every: int) -> bool:
    """Whether M_k is evaluated: M0 and the final model always, the others when `eval.every` divides k."""
    return k in (0, final) or (every > 0 and k % every == 0)


def score_table(scores: dict[str, dict]) -> str:
    """Scores in percent, each with its standard error when known: `52.0 ± 2.5`."""
    tasks = [t for t in next(iter(scores.values())) if not t.endswith("_stderr")]

    def cell(s: dict, task: str) -> str:
        error = s.get(f"{task}_stderr")
        return f"{s.get(task, float('nan')):.1f}" + (f" ± {error:.1f}" if error is not None else "")

    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(cell(s, t) for t in tasks) + " |" for m, s in scores.items()]
    return "\n".join(lines)
