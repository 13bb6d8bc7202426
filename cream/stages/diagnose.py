"""Diagnose: does the newest model's self-reward pick the correct response, and does consistency tell
where it does? -> `diagnose.json`, `diagnose.png`, `scores.jsonl`, `responses.jsonl`.

The newest model M_t samples `diagnose.n` responses for `diagnose.prompts` held-out prompts (those after
the run's training shards, so never trained on) whose answers are known. Every rewarder of
`diagnose.rewarders` scores them under M_t (the implicit reward with the reference `rewarder.reference`
names), and each prompt's C is measured as the loop measures it: the run's rewarder on M_t against
M_{t-1}'s ranking (`reward_specs`). The arithmetic is `cream.rewards.diagnostics.diagnose_rewarder`.
"""

from __future__ import annotations

import dataclasses
import io
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cream.runs.artifacts import write_bytes, write_json, write_jsonl
from cream.config import Config
from cream.rewards.consistency import measured_consistency
from cream.rewards.diagnostics import GROUPS, PromptOutcome, consistency_split, diagnose_rewarder
from cream.errors import DataError, StageError
from cream.engine.generation import chat_prompt_ids, generate
from cream.engine.models import load_tokenizer
from cream.plugins.contracts import Context, PairStats, RewardSpec
from cream.rewards.pairing import choose_pair
from cream.rewards.rewarders import correctness, reward_specs, spec_logp_models, spec_scores
from cream.plugins.registry import rewarders_of, settings_of
from cream.runs.rows import PromptSamples, write_rows
from cream.engine.scoring import logprobs_under
from cream.stages import StageResult

NAME = "diagnose"
DATA = ("prompts",)  # the parts of the run's data it reads (`data_identity`)
READS: tuple[str, ...] = ()  # the model it diagnoses is the newest, part of every fingerprint
CONFIG = ("diagnose", "rewarder", "sampling", "regularizer", "model", "data", "iterations", "seed")


def plugin_settings(cfg: Config) -> tuple[str, ...]:
    """The settings of every rewarder it scores with: the diagnosed ones and those that measure C."""
    names = [*cfg.diagnose.rewarders, cfg.rewarder.name, cfg.regularizer.first_previous]
    return settings_of(rewarders_of(cfg, names), cfg)

DIAGNOSIS, FIGURE, SCORES, RESPONSES = "diagnose.json", "diagnose.png", "scores.jsonl", "responses.jsonl"


def held_out(prompts: list[dict], cfg: Config) -> list[dict]:
    """The `diagnose.prompts` prompts after the run's training shards: known answers, never trained on."""
    start, wanted = cfg.iterations * cfg.data.shard_size, cfg.diagnose.prompts
    if start + wanted > len(prompts):
        raise DataError(f"config key `diagnose.prompts`: {wanted} held-out prompts are needed after the {start} of the "
                        f"training shards (`iterations` x `data.shard_size`), but {max(len(prompts) - start, 0)} of "
                        f"the {len(prompts)} prompts remain")
    return prompts[start : start + wanted]


def _spec_json(spec: RewardSpec) -> dict:
    return {"rewarder": spec.rewarder, "model": spec.model.name,
            "reference": spec.reference.name if spec.reference else None}


class Clock:
    """Wall and CPU seconds (all threads) of each part of the stage: on a shared machine the wall time
    depends on the other processes, the CPU time on the work."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name], self.cpu[name] = time.perf_counter() - wall, time.process_time() - cpu


def run(ctx: Context, stage_dir: Path) -> StageResult:
    cfg, settings, stage_dir = ctx.cfg, ctx.cfg.diagnose, Path(stage_dir)
    t = len(ctx.models) - 1  # the newest model, judged against the one before
    policy = ctx.models[t]
    tokenizer = load_tokenizer(policy.base)
    budget = cfg.model.max_length - settings.max_new_tokens
    prompts = held_out(ctx.prompts, cfg)
    rows = [PromptSamples(p["id"], p["task"], p["prompt"], p["answer"], chat_prompt_ids(tokenizer, p["prompt"]))
            for p in prompts]
    too_long = sum(len(r.prompt_ids) > budget for r in rows)  # skipped, not cut: a cut question has no right answer
    rows = [r for r in rows if len(r.prompt_ids) <= budget]
    if not rows:
        raise StageError(f"no held-out prompt fits in model.max_length={cfg.model.max_length} minus "
                         f"diagnose.max_new_tokens={settings.max_new_tokens}")
    clock = Clock()
    with clock.part("sample"):
        sampling = dataclasses.replace(cfg.sampling, n=settings.n, max_new_tokens=settings.max_new_tokens)
        samples = generate(ctx.pool, policy, tokenizer, [r.prompt_ids for r in rows], sampling, cfg.sampling,
                           ctx.sampling_seed, stage_dir / "chunks", "diagnose sample", cfg.model.max_length)
    for row, responses in zip(rows, samples):
        row.responses = responses
    write_rows(stage_dir / RESPONSES, rows)

    sequences = [(row.prompt_ids, resp.ids) for row in rows for resp in row.responses]
    logps: dict[str, list[float]] = {}  # model name -> log-prob of every response, computed once
    scored: dict[RewardSpec, list] = {}

    def scores_of(spec: RewardSpec) -> tuple[list, dict]:
        """`spec`'s rewards per prompt (computed once, with whatever log-probs they need), and their statistics."""
        if spec not in scored:
            missing = [ref for ref in spec_logp_models(spec) if ref.name not in logps]
            logps.update(logprobs_under(ctx.pool, missing, sequences, cfg.rewarder.batch_size, tokenizer.pad_token_id,
                                        "diagnose logprobs"))
            scored[spec] = spec_scores(spec, rows, logps, cfg, ctx.pool, ctx.sampling_seed, stage_dir)
        return scored[spec]

    correct = [correctness(row) for row in rows]
    texts = [[resp.text for resp in row.responses] for row in rows]
    diagnosis: dict = {"model": policy.name, "previous": ctx.models[t - 1].name, "prompts": len(rows),
                       "prompts_skipped_too_long": too_long, "n": settings.n, "confidence": settings.confidence,
                       "bootstrap_resamples": settings.bootstrap,
                       "correct_response_share": sum(map(sum, correct)) / sum(map(len, correct)), "rewarders": {}}
    scores_rows = [{"id": r.id, "task": r.task, "answer": r.answer, "correct": c, "rewards": {}, "pairs": {}}
                   for r, c in zip(rows, correct)]
    specs = {}
    for name in settings.rewarders:
        # the run's reference schedule applied to this rewarder; when M_t would be its own implicit
        # reference the schedule falls back to `regularizer.first_previous`, and `scored_as` says so
        as_run = dataclasses.replace(cfg, rewarder=dataclasses.replace(cfg.rewarder, name=name))
        specs[name] = reward_specs(as_run, ctx.models, t)[0]
        with clock.part(name):  # with the log-probs it is the first to need
            scores_of(specs[name])

    current, previous = reward_specs(cfg, ctx.models, t)
    ids = [r.id for r in rows]
    with clock.part("consistency"):  # the rankings not already scored above
        measured = measured_consistency(dict(zip(ids, scores_of(current)[0])), dict(zip(ids, scores_of(previous)[0])),
                                        cfg.regularizer.measure)
    consistency = [measured.get(pid) for pid in ids]

    for name, spec in specs.items():
        rewards, stats = scores_of(spec)
        choices = [choose_pair(r, x, PairStats()) for r, x in zip(rewards, texts)]
        pairs = [None if c is None else (c.chosen, c.rejected) for c in choices]
        lengths = [[len(resp.ids) for resp in row.responses] for row in rows]
        result = diagnose_rewarder([PromptOutcome(r, c, p, n) for r, c, p, n in zip(rewards, correct, pairs, lengths)], consistency,
                                   settings.bootstrap, cfg.seed, settings.confidence)
        diagnosis["rewarders"][name] = {"scored_as": _spec_json(spec), "seconds": clock.wall[name],
                                              "cpu_seconds": clock.cpu[name], "stats": stats, **_plain(result)}
        for row, r, p in zip(scores_rows, rewards, pairs):
            row["rewards"][name], row["pairs"][name] = r, p
    if "judge" in specs:  # which judge: the run's, or the CLI's --judge
        diagnosis["judge_settings"] = dataclasses.asdict(cfg.judge)
    diagnosis["consistency"] = {"current": _spec_json(current), "previous": _spec_json(previous),
                                "measure": cfg.regularizer.measure.value, "measured_prompts": len(measured),
                                "threshold": consistency_split(consistency)[0]}
    diagnosis["seconds"], diagnosis["cpu_seconds"] = clock.wall, clock.cpu
    for row, c, ours, theirs in zip(scores_rows, consistency, scores_of(current)[0], scores_of(previous)[0]):
        row["consistency"], row["consistency_rankings"] = c, {"current": ours, "previous": theirs}
    write_jsonl(stage_dir / SCORES, scores_rows)
    write_json(stage_dir / DIAGNOSIS, diagnosis)
    plot(stage_dir / FIGURE, diagnosis)
    metrics = {"diagnose/prompts": len(rows), "diagnose/consistency_threshold": diagnosis["consistency"]["threshold"],
               "diagnose/any_correct": next(iter(diagnosis["rewarders"].values()))["all"]["any_correct"]["value"]}
    for name, result in diagnosis["rewarders"].items():
        for group in GROUPS:
            suffix = "" if group == "all" else f"_{group}"
            for rate in ("auc", "auc_length_controlled", "chosen_correct", "inverted"):
                metrics[f"diagnose/{name}/{rate}{suffix}"] = result[group][rate]["value"]
    return StageResult(metrics, {"diagnosis": stage_dir / DIAGNOSIS, "figure": stage_dir / FIGURE,
                                 "scores": stage_dir / SCORES, "responses": stage_dir / RESPONSES})


def _plain(result: dict) -> dict:
    """`diagnose_rewarder`'s result as JSON values: each estimate and difference a {value/diff, low, high} object."""
    return {k: _plain(v) if isinstance(v, dict) else dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in result.items()}


def plot(path: Path, diagnosis: dict) -> None:
    """Per rewarder, AUC and chosen-correct with their intervals, on all prompts and on each side of the split of C."""
    import numpy as np
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone

    names = list(diagnosis["rewarders"])
    t = diagnosis["consistency"]["threshold"]
    labels = {"all": "all prompts", "c_high": f"C >= {t:.2f}", "c_low": f"C < {t:.2f}"}
    fig = Figure(figsize=(4.5 + 1.2 * len(names), 4.2), layout="constrained")
    panels = [("auc", "AUC: a correct response outranks a wrong one", 0.5, "chance"),
              ("chosen_correct", "the pair's chosen response is correct", diagnosis["correct_response_share"],
               "a random response")]
    width = 0.8 / len(GROUPS)
    for ax, (rate, title, baseline, baseline_label) in zip(fig.subplots(1, 2), panels):
        for k, group in enumerate(GROUPS):
            estimates = [diagnosis["rewarders"][n][group][rate] for n in names]
            values = np.array([e["value"] for e in estimates], dtype=float)  # NaN (no pair) plots as a gap
            errors = np.nan_to_num(np.array([[e["value"] - e["low"], e["high"] - e["value"]] for e in estimates]).T)
            ax.bar(np.arange(len(names)) + (k - 1) * width, values, width, yerr=errors, capsize=3, color=f"C{k}",
                   label=f"{labels[group]} ({diagnosis['rewarders'][names[0]][group]['prompts']} prompts)")
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label=baseline_label)
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="x-small", loc="best")
    fig.suptitle(f"Reward accuracy of {diagnosis['model']} on {diagnosis['prompts']} held-out prompts x {diagnosis['n']} "
                 f"responses ({diagnosis['confidence']:.0%} bootstrap intervals)", fontsize="medium")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())
