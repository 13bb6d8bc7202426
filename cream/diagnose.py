"""`python -m cream.diagnose --run RUN_DIR`: the reward bias of a finished run's model, measured at scale.

The diagnose stage (cream/stages/diagnose.py) outside the loop: M_t of the run (default: its newest)
samples `--n` responses for `--prompts` held-out prompts with known answers, every rewarder scores them,
and C is measured against M_{t-1} as the run measured it. The run's own configuration (run.json) says
how: sampling backend and dtype, judge, reference schedule, consistency measure. A run is required: C
needs the model before M_t, and the held-out prompts are those after the run's training shards.
Results go to `RUN_DIR/diagnose/m<t>/` (or `--out`); a rerun with the same settings keeps finished chunks.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional

from cream.config import DiagnoseConfig
from cream.plugins.registry import REWARDERS, load_plugins


JUDGES = Path(__file__).resolve().parent.parent / "conf" / "judge"  # the judge group's choices, for --judge
# the settings the kept chunks of a diagnosis folder (responses, judgements) were sampled under
SAMPLED_UNDER = ("sampling", "judge", "model", "data", "iterations", "seed", "diagnose.prompts", "diagnose.n",
                 "diagnose.max_new_tokens")


def parse_rewarders(value: str) -> list[str]:
    """`--rewarders implicit,judge` as registered rewarder names; an unknown or missing one is a one-line error."""
    from cream.errors import ConfigError

    known = REWARDERS.names()
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        problem = f"unknown rewarder {unknown[0]!r}" if unknown else "names no rewarder"
        raise ConfigError(f"argument --rewarders: {problem}; give a comma-separated list of {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> None:
    """`python -m cream.diagnose`: does a run's self-reward pick the correct response, and does C tell where?"""
    from cream.errors import CreamError

    defaults = DiagnoseConfig()
    load_plugins()  # the rewarders and the methods' settings groups of the run's configuration
    parser = argparse.ArgumentParser(prog="python -m cream.diagnose", description=main.__doc__)
    parser.add_argument("--run", required=True, help="the run folder (runs/<experiment>/<run_name>)")
    parser.add_argument("--iteration", type=int, help="diagnose M_t, compared with M_{t-1} (default: the newest model)")
    parser.add_argument("--prompts", type=int, default=defaults.prompts, help="K held-out prompts (diagnose.prompts)")
    parser.add_argument("--n", type=int, default=defaults.n, help="responses per prompt (diagnose.n)")
    parser.add_argument("--rewarders", default=",".join(defaults.rewarders),
                        help=f"comma-separated, from the registered rewarders: {', '.join(REWARDERS.names())} "
                             "(diagnose.rewarders)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="diagnose.max_new_tokens")
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, help="resamples (diagnose.bootstrap)")
    parser.add_argument("--judge", help="judge the responses with conf/judge/JUDGE.yaml instead of the run's judge.* "
                        "(e.g. compact: a score in a few tokens)")
    parser.add_argument("--data", help="the run's data directory (default: ../shared/benchmarks beside the repository)")
    parser.add_argument("--out", help="output folder (default: RUN/diagnose/m<t>)")
    args = parser.parse_args(argv)
    try:
        out, diagnosis = diagnose_run(args)
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary(diagnosis))
    print(f"diagnose.json, diagnose.png, scores.jsonl and responses.jsonl in {out}")


def diagnose_run(args: argparse.Namespace) -> tuple[Path, dict]:
    from cream.runs.artifacts import STARTED, read_json
    from cream.config import load_config, to_plain_dict
    from cream.data.load import load_prompts, resolve_data_dir
    from cream.errors import ConfigError, DataError
    from cream.runs.logger import RunLogger
    from cream.engine.model_pool import ModelPool
    from cream.engine.models import resolve_device, resolve_model_dir
    from cream.runs.model_ref import ModelRef
    from cream.runs.reader import RunReader
    from cream.runs.run_folder import RUN_MANIFEST, data_identity, digest, hold, prepare_stage, select
    from cream.plugins.contracts import Context
    from cream.stages import diagnose
    from omegaconf import OmegaConf

    rewarders = parse_rewarders(args.rewarders)
    run_dir = Path(args.run)
    if not (run_dir / RUN_MANIFEST).is_file():
        raise ConfigError(f"argument --run: {run_dir} is not a run folder (no {RUN_MANIFEST})")
    run = RunReader(run_dir)
    # run.json holds every setting that changes a result; the others are this command's
    stored = {**run.config, "run_name": run_dir.name, "logger": {"mode": "disabled"}, "paths": {"data": args.data}}
    if args.judge:
        judge_file = JUDGES / f"{args.judge}.yaml"
        if not judge_file.is_file():
            raise ConfigError(f"argument --judge: no {judge_file}; known: {', '.join(sorted(p.stem for p in JUDGES.glob('*.yaml')))}")
        stored["judge"] = OmegaConf.to_container(OmegaConf.load(judge_file))  # as the judge group would: over the defaults
    cfg = load_config(OmegaConf.create(stored))
    cfg.diagnose = dataclasses.replace(cfg.diagnose, prompts=args.prompts, n=args.n, rewarders=rewarders,
                                       max_new_tokens=args.max_new_tokens, bootstrap=args.bootstrap)
    models = run.models(ModelRef("m0", resolve_model_dir(cfg.model, Path(cfg.paths.cache).expanduser())), cfg.sft.enabled)
    if len(models) < 2:
        raise ConfigError(f"argument --run: {run_dir} has no completed SFT, so no model to diagnose yet")
    t = len(models) - 1 if args.iteration is None else args.iteration
    if not 1 <= t < len(models):
        raise ConfigError(f"argument --iteration: the run has models M0..M{len(models) - 1}; give t in 1..{len(models) - 1} "
                          f"(M_t is compared with M_(t-1)), got {t}")
    data_dir = resolve_data_dir(cfg.paths.data, cfg.data.source)
    prompts = load_prompts(cfg.data, data_dir, cfg.seed)
    if data_identity(prompts, [], [])["prompts"] != run.data["prompts"]:
        raise DataError(f"argument --data: the prompts read from {data_dir or 'the hub'} are not those run {run_dir} "
                        "was trained on, so the held-out prompts would not be held out; give the run's data directory")
    out = Path(args.out) if args.out else run_dir / "diagnose" / f"m{t}"
    if out.is_dir() and any(out.iterdir()) and not (out / STARTED).is_file():
        raise ConfigError(f"argument --out: {out} exists and is not a diagnose folder; give a new or empty folder")
    # Held for the whole diagnosis: a second one into the same folder would delete this one's work. The lock file
    # sits beside the folder, which `prepare_stage` may delete.
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = hold(out.parent / f".{out.name}.lock", f"diagnose folder {out}", "`--out`")  # noqa: F841 (held until exit)
    # a folder sampled under other settings starts over; one sampled under these keeps its finished chunks
    # (responses, judgements), whatever the rewarders or the bootstrap asked for now
    prepare_stage(out, {"config": digest(select(to_plain_dict(cfg), SAMPLED_UNDER)),
                        "models": [m.as_dict() for m in models[: t + 1]], "data": run.data["prompts"]})
    device = resolve_device(cfg.device)
    ctx = Context(cfg=cfg, pool=ModelPool(cfg.model, device), device=device, logger=RunLogger(cfg, out),
                  data_dir=data_dir, prompts=prompts, sft_examples=[], models=models[: t + 1],
                  iteration=t - 1)  # the iteration whose training made M_t: the loop's sampling seed
    diagnose.run(ctx, out)
    return out, read_json(out / diagnose.DIAGNOSIS)


def summary(diagnosis: dict) -> str:
    """One line per rewarder: AUC, the AUC with length controlled, chosen-correct and inverted with their intervals,
    and AUC on each side of the split of C."""

    def cell(e: Optional[dict]) -> str:
        return "  n/a" if e is None or e["value"] is None else f"{e['value']:.2f} [{e['low']:.2f}, {e['high']:.2f}]"

    c = diagnosis["consistency"]
    lines = [f"{diagnosis['model']} vs {diagnosis['previous']}: {diagnosis['prompts']} prompts x {diagnosis['n']} responses, "
             f"{diagnosis['confidence']:.0%} intervals; C split at {c['threshold']} ({c['measure']}, "
             f"{c['current']['rewarder']} of {c['current']['model']} vs {c['previous']['rewarder']} of {c['previous']['model']})",
             f"{'rewarder':>10}  {'AUC':>18}  {'AUC length ctrl':>18}  {'chosen correct':>18}  {'inverted':>18}  {'AUC C high':>18}  "
             f"{'AUC C low':>18}  {'seconds':>7}  {'cpu s':>7}"]
    for name, r in diagnosis["rewarders"].items():
        lines.append(f"{name:>10}  {cell(r['all']['auc']):>18}  {cell(r['all'].get('auc_length_controlled')):>18}  "
                     f"{cell(r['all']['chosen_correct']):>18}  "
                     f"{cell(r['all']['inverted']):>18}  {cell(r['c_high']['auc']):>18}  "
                     f"{cell(r['c_low']['auc']):>18}  {r['seconds']:7.1f}  {r['cpu_seconds']:7.1f}")
    first = next(iter(diagnosis["rewarders"].values()))
    lines.append(f"prompts with a correct response: {cell(first['all']['any_correct'])}; seconds (cpu): "
                 + ", ".join(f"{k} {v:.0f} ({diagnosis['cpu_seconds'][k]:.0f})" for k, v in diagnosis["seconds"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
