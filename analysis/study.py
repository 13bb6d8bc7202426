"""The study of issue 13: SRLM, CREAM and Oracle x seeds 0, 1, 2 on shared shards, then the comparison.

    python -m analysis.study --scale gpu|cpu|control [--runs DIR] [--out DIR] [--analyse-only]

(`make study STUDY_SCALE=gpu|cpu|control`.) Seed by seed, each method runs as

    train.py experiment=<method> seed=<seed> run_name=study-<scale>-s<seed> paths.runs=DIR <SCALES[scale]>

into DIR/<method>/study-<scale>-s<seed>. The three methods of a seed read the same prompt shards:
`cream.data.load.load_prompts` shuffles the prompts with `seed` (and letters the options with it), and
shard t is the t-th run of `data.shard_size` consecutive prompts; `data`, `iterations` and the seed are
the same for every method of a seed (the scale sets them; the presets differ only in the method). A
rerun resumes each run folder (`resume=auto` reuses its finished stages), so an interrupted study
continues where it stopped; a run that fails is reported and the others go on. Then
`analysis.compare` over every run folder that exists, finished or not, into DIR/study/<scale>/; its
summary.md says which runs are unfinished or missing.

Sizes (README, "The study"):
- cpu: the presets exactly as `python train.py experiment=<method>` runs them here: 2 iterations of 16
  prompts x 4 responses, SFT on 32 conversations, evaluation of M0 and M3 on the five log-likelihood
  benchmarks sized for standard errors of about 2.5 points (conf/eval/harness_sized.yaml). About 21
  minutes a seed on a 2-core machine with native bf16 (SRLM 7.8, CREAM 7.3, Oracle 6.2 min measured);
  about 31 on the 2-core AVX2 machine, in fp32 (SRLM 14.8, CREAM 8.7, Oracle 7.1, 2026-12-06).
- gpu: one H100/H200, SmolLM2-135M, 2 iterations of 400 prompts x 4 responses, SFT on all 389 seed
  conversations, the same evaluation of every model.
- control: the positive control, seeds 0 and 1: 2 iterations of 64 multiple-choice prompts (ARC-E, ARC-C,
  OBQA, SIQA), evaluated the way the responses are trained and rewarded (the paper protocol: generated answer,
  extraction, exact match) on the first 100 validation items of the same four benchmarks. The Oracle's final
  model beat M0 there (docs/results.md). 25-35 minutes a run here; the runs of a seed share M0's evaluation
  and the SFT (cream.loop.shared_stage_dir).
GSM8K is left out: the only generated task, it would cost most of each evaluation while a 135M model
scores about 0 on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from analysis.compare import compare
from cream.errors import CreamError, DataError
from cream.runs.reader import RunReader
from cream.runs.run_folder import RUN_MANIFEST

REPO = Path(__file__).resolve().parents[1]
METHODS = ("srlm_smollm", "cream_smollm", "oracle_smollm")  # the presets of conf/experiment/
# The paper protocol (generated answer, extraction, exact match) on the first 100 validation items of the four
# multiple-choice benchmarks whose train split the prompts come from: the metric measures what is trained.
CONTROL_EVAL = ("eval=paper", "eval.tasks=[arc_easy,arc_challenge,openbookqa,siqa]", "eval.limit=100",
                "eval.max_gen_toks=128", "eval.every=0", "eval.dtype=auto", "eval.batch_size=64")


@dataclass(frozen=True)
class Scale:
    """What a scale sets on top of each method's preset (sizes only, the same for every method), and its seeds."""

    overrides: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)


SCALES = {
    "gpu": Scale(("device=cuda", "iterations=2", "data.shard_size=400", "sft.max_examples=null",
                  "sampling.batch_size=256", "rewarder.batch_size=64", "judge.batch_size=96",
                  "eval.every=1", "eval.batch_size=64")),
    "cpu": Scale(()),
    # the positive control: 4x the prompts of `cpu`, multiple-choice prompts only (a 135M model answers no GSM8K
    # question, so the Oracle would get no pair from them), scored on what is trained (CONTROL_EVAL)
    "control": Scale(("data.prompt_sets=[arc_easy,arc_challenge,openbookqa,siqa]", "data.shard_size=64",
                      *CONTROL_EVAL), seeds=(0, 1)),
}


def run_name(scale: str, seed: int) -> str:
    return f"study-{scale}-s{seed}"


def grid(scale: str) -> list[tuple[int, str]]:
    """(seed, method) of every run, seed by seed: an interrupted study has whole seeds to compare."""
    return [(seed, method) for seed in SCALES[scale].seeds for method in METHODS]


def overrides(scale: str, method: str, seed: int, runs_root: Path) -> list[str]:
    """The Hydra overrides of train.py for one run of the study."""
    return [f"experiment={method}", f"seed={seed}", f"run_name={run_name(scale, seed)}",
            f"paths.runs={runs_root}", *SCALES[scale].overrides]


def run_dir(runs_root: Path, scale: str, method: str, seed: int) -> Path:
    return Path(runs_root) / method / run_name(scale, seed)


def state(folder: Path) -> str:
    """`finished` (the last model evaluated), `unfinished` (some stages logged) or `missing` (none logged)."""
    run = RunReader(folder)
    if not run.exists():
        return "missing"
    iterations = run.config.get("iterations")
    if not isinstance(iterations, int):
        raise DataError(f"{folder / RUN_MANIFEST}: no integer config.iterations; not a run folder of train.py")
    return "finished" if run.evaluated(iterations + 1) else "unfinished"  # M_{iterations+1}, the last model


def analyse(scale: str, runs_root: Path, out_dir: Path) -> dict:
    """analysis.compare over the study's run folders that exist; summary.md opens with what is missing."""
    states = {(seed, method): state(run_dir(runs_root, scale, method, seed)) for seed, method in grid(scale)}
    present = [run_dir(runs_root, scale, m, s) for (s, m), st in states.items() if st != "missing"]
    if not present:
        raise DataError(f"{runs_root}: no run of the {scale} study yet (run `make study STUDY_SCALE={scale}`)")
    finished = sum(st == "finished" for st in states.values())
    lines = [f"Study `{scale}` (analysis/study.py): {finished} of {len(states)} runs finished."]
    lines += [f"- {m} seed {s} ({run_name(scale, s)}): {st}" + (", its evaluated models only" if st == "unfinished" else "")
              for (s, m), st in states.items() if st != "finished"]
    return compare(present, out_dir, note="\n".join(lines))


def run_all(scale: str, runs_root: Path) -> list[str]:
    """Run (or resume) every run of the study, one after another; the runs that failed."""
    failed, runs = [], grid(scale)
    for i, (seed, method) in enumerate(runs, start=1):
        command = [sys.executable, "train.py", *overrides(scale, method, seed, runs_root)]
        print(f"[study {scale} {i}/{len(runs)}] {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        code = subprocess.run(command, cwd=REPO).returncode
        print(f"[study {scale} {i}/{len(runs)}] {method} seed {seed}: exit {code} after "
              f"{(time.monotonic() - start) / 60:.1f} min", flush=True)
        if code == 130:  # Ctrl-C: stop the study; a rerun resumes
            raise KeyboardInterrupt
        if code != 0:
            failed.append(f"{method} seed {seed} (exit {code})")
    return failed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="paths.runs of the runs (default: runs)")
    parser.add_argument("--out", type=Path, help="report folder (default: RUNS/study/SCALE)")
    parser.add_argument("--analyse-only", action="store_true", help="only the comparison of the runs so far")
    args = parser.parse_args(argv)
    runs_root = args.runs.resolve()
    out_dir = args.out or runs_root / "study" / args.scale
    try:
        failed = [] if args.analyse_only else run_all(args.scale, runs_root)
        analyse(args.scale, runs_root, out_dir)
    except KeyboardInterrupt:
        print(f"interrupted; rerun `make study STUDY_SCALE={args.scale}` to resume", file=sys.stderr)
        return 130
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"figures and summary.md written to {out_dir}")
    if failed:
        print(f"failed: {'; '.join(failed)} (their logs: train.log in each run folder)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
