"""The self-rewarding loop: SFT, then per iteration sample -> reward -> consistency -> pairs -> train -> evaluate.

Each stage is a plain function writing into `runs/<experiment>/<run_name>/iter_<k>/<stage>/`; this
module only chains them. A stage folder with its DONE mark is reused, so rerunning the same command
resumes where it stopped.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from cream.artifacts import MANIFEST, config_hash, is_complete, mark_complete, read_json, verify_outputs, write_json
from cream.config import Config, ModelRole, ResumeMode, RewarderName, to_plain_dict
from cream.consistency import consistency_stage
from cream.data import check_shards, load_prompts, load_sft_examples, resolve_data_dir, shard
from cream.dpo import train
from cream.errors import ConfigError
from cream.logger import RunLogger
from cream.models import ModelPool, ModelRef, resolve_model_dir
from cream.pairs import pairs_stage
from cream.reward import REWARDS, RewardSpec, reward
from cream.sample import RESPONSES, sample
from cream.sft import sft

RUN_MANIFEST = "run.json"
# Keys that may change between a run and its resumption without changing any result.
_NOT_RESULT_KEYS = ("logger", "run_name", "experiment", "threads", "resume", "paths")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


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

    def stage(self, iteration: int, name: str, inputs: list[Path], fn: Callable[[Path], tuple[dict, dict]]) -> tuple[dict, dict]:
        """Run `fn(stage_dir) -> (metrics, outputs)` unless the stage already completed; log its metrics."""
        stage_dir = self.dir / f"iter_{iteration}" / name
        if is_complete(stage_dir):
            verify_outputs(stage_dir)
            manifest = read_json(stage_dir / MANIFEST)
            print(f"[cream] iter {iteration} {name}: complete, reusing {stage_dir}")
            return manifest["metrics"], manifest["outputs_info"]
        print(f"[cream] iter {iteration} {name} ...")
        start = time.perf_counter()
        metrics, outputs_info = fn(stage_dir)
        seconds = time.perf_counter() - start
        metrics = {**metrics, f"time/{name}": seconds, "memory/peak_rss_mb": peak_rss_mb()}
        self.stage_seconds[f"iter_{iteration}/{name}"] = seconds
        mark_complete(stage_dir, config_hash(self.result_config), inputs,
                      extra={"metrics": metrics, "outputs_info": outputs_info})
        self.logger.log(iteration, name, metrics)
        return metrics, outputs_info


def _ref(info: dict) -> ModelRef:
    return ModelRef(**info["model"])


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
    cache = Path(cfg.paths.cache).expanduser()
    pool = ModelPool(cfg.model)
    models = [ModelRef("m0", resolve_model_dir(cfg.model, cache))]
    scores: dict[str, dict] = {}

    def evaluate(iteration: int, name: str, model: ModelRef) -> None:
        if not cfg.eval.enabled:
            return
        from cream.evaluate import evaluate_model, wrong_answers

        def fn(stage_dir: Path):
            pool.release()  # lm-eval loads its own copy
            result = evaluate_model(cfg.eval, data_dir, Path(model.base), Path(model.adapter) if model.adapter else None,
                                    stage_dir, dtype=cfg.model.dtype, seed=cfg.seed)
            timing = read_json(stage_dir / "eval.json")
            metrics = {f"eval/{task}": score for task, score in result.items()}
            metrics["time/eval_items_per_s"] = timing["items"] / max(timing["seconds"], 1e-9)
            return metrics, {"model": model.as_dict()}

        metrics, _ = run_.stage(iteration, name, [], fn)
        scores[model.name] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("eval/")}
        print(score_table(scores))
        wrong = wrong_answers(run_.dir / f"iter_{iteration}" / name, 20)
        if wrong:
            columns = list(wrong[0].keys())
            run_.logger.table(iteration, f"eval/wrong_answers_{model.name}", columns, [[w[c] for c in columns] for w in wrong])

    evaluate(0, "evaluate_m0", models[0])
    if cfg.sft.enabled:
        _, info = run_.stage(0, "sft", [], lambda d: _with_model(*sft(cfg.sft, cfg.dpo, cfg.model, models[0], sft_examples, d, cfg.seed)))
        models.append(_ref(info))
        evaluate(0, "evaluate", models[1])
    else:
        models.append(ModelRef("m1", models[0].base))  # M1 = M0

    for t in range(1, cfg.iterations + 1):
        policy = models[t]
        iter_dir = run_.dir / f"iter_{t}"
        run_.stage(t, "sample", [], lambda d: (sample(cfg.sampling, cfg.model, pool, policy, shard(prompts, t, cfg.data.shard_size), d, cfg.seed * 1000 + t), {}))
        responses = iter_dir / "sample" / RESPONSES

        current_spec, previous_spec = reward_specs(cfg, models, t)
        run_.stage(t, "reward", [responses], lambda d: (reward(current_spec, previous_spec, pool, responses, d, cfg.rewarder.batch_size,
                                                               cfg.judge, cfg.sampling, cfg.model.max_length, cfg.seed * 1000 + t), {}))
        rewards = iter_dir / "reward" / REWARDS

        def consistency_fn(d: Path):
            metrics, rates = consistency_stage(rewards, d, cfg.regularizer.measure)
            run_.logger.histogram(t, "consistency/histogram", rates)
            return metrics, {}

        run_.stage(t, "consistency", [rewards], consistency_fn)
        consistency = iter_dir / "consistency" / "consistency.jsonl"

        def pairs_fn(d: Path):
            metrics, pairs = pairs_stage(responses, rewards, consistency, cfg.regularizer.name, policy.name, d)
            columns = ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "consistency",
                       "chosen_correct", "rejected_correct"]
            run_.logger.table(t, "pairs/table", columns, [[p[c] for c in columns] for p in pairs[: cfg.logger.pairs_table_rows]])
            return metrics, {}

        run_.stage(t, "pairs", [responses, rewards, consistency], pairs_fn)
        pairs_path = iter_dir / "pairs" / "pairs.jsonl"

        pool.release()  # training loads its own trainable copy
        _, info = run_.stage(t, "train", [pairs_path], lambda d: _with_model(*train(cfg.dpo, cfg.model, policy, pairs_path, d, cfg.seed + t, f"m{t + 1}")))
        models.append(_ref(info))
        evaluate(t, "evaluate", models[t + 1])

    pool.release()
    if scores:
        run_.logger.table(cfg.iterations, "eval/summary", ["model", *next(iter(scores.values())).keys()],
                          [[m, *s.values()] for m, s in scores.items()])
    run_.logger.summary({"time/stages": run_.stage_seconds, "memory/peak_rss_mb": peak_rss_mb()})
    run_.logger.finish()
    print(f"[cream] run folder: {run_.dir}")
    return scores


def _with_model(model: ModelRef, metrics: dict) -> tuple[dict, dict]:
    return metrics, {"model": model.as_dict()}


def reward_specs(cfg: Config, models: list[ModelRef], t: int) -> tuple[RewardSpec, Optional[RewardSpec]]:
    """The reward of M_t and the ranking of M_{t-1} it is compared with, from the reference schedule in config."""

    def spec(k: int) -> RewardSpec:
        if cfg.rewarder.name != RewarderName.implicit:
            return RewardSpec(cfg.rewarder.name, models[k])
        reference = models[0] if cfg.rewarder.reference == ModelRole.m0 else models[max(k - 1, 0)]
        if reference == models[k]:  # a model is its own reference: its implicit reward is 0 everywhere
            first = cfg.regularizer.first_previous
            return RewardSpec(first, models[k], models[0] if first == RewarderName.implicit else None)
        return RewardSpec(RewarderName.implicit, models[k], reference)

    return spec(t), spec(t - 1)


def score_table(scores: dict[str, dict]) -> str:
    tasks = list(next(iter(scores.values())).keys())
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{s.get(t, float('nan')):.1f}" for t in tasks) + " |" for m, s in scores.items()]
    return "\n".join(lines)
