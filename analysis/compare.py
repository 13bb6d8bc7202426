"""Compare methods across runs: benchmark curves, consistency, reward accuracy, pairs kept, a summary table.

    python -m analysis.compare RUN_DIR_OR_PARENT [...] --out DIR [--wandb-export CSV ...] [--wandb-upload]

A run is a folder holding `run.json` and `metrics.jsonl` (docs/running.md, "The run folder"), read by
`cream.runs.reader`; parents are searched recursively. A run's method is its `experiment_name` (else its
folder's parent name); runs of one method that differ in a setting other than the seed (a sweep under one
experiment) get that setting appended to the method name, so only seeds are ever averaged (analysis/load.py).
Writes benchmarks.png, consistency.png, reward_accuracy.png, pairs.png, training.png (analysis/figures.py) and
summary.md (analysis/tables.py) into DIR: the means with their standard errors, mean ± sd over the seeds per
benchmark, and for each pair of methods whose last models were scored on the same items, paired bootstrap
differences per benchmark and on the average (analysis/stats.py).

W&B exports: CSV files with columns `experiment_name`, `iteration`, `stage` and one column per
metric (an optional `seed` column separates runs), i.e. metrics.jsonl as a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Optional

from analysis.figures import draw
from analysis.load import group_methods, load_export, load_run
from analysis.stats import differences, gains, means
from analysis.tables import score_table, seeds_table, summary
from analysis.upload import upload
from cream.errors import CreamError, DataError
from cream.runs.reader import find_runs


def compare(paths: list[Path], out_dir: Path, exports: Iterable[Path] = (), note: str = "") -> dict:
    """Plot and tabulate every run under `paths` (and in the W&B CSV `exports`) into `out_dir`; `note` is
    Markdown placed at the top of summary.md.

    Prints the summary table. Returns {method: {"runs": [sources], "models": {k: {eval key: mean}},
    "iterations": {t: {key: mean}}}}.
    """
    runs = [load_run(d) for p in paths for d in find_runs(Path(p))]
    runs += [run for e in exports for run in load_export(Path(e))]
    if not runs:
        raise DataError(f"no runs in {', '.join(str(p) for p in [*paths, *exports]) or '(no path given)'}")
    by_label, methods = group_methods(runs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    draw(out_dir, methods)
    scores, spread = score_table(methods), seeds_table(methods)
    diffs, against_m0 = differences(by_label, methods), gains(by_label, methods)
    (out_dir / "summary.md").write_text(summary(methods, scores, spread, diffs, note, against_m0), encoding="utf-8")
    print(scores)
    print(spread)
    if against_m0 or diffs:
        print("\n".join(against_m0 + diffs))
    return means(methods)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="run folders, or folders searched for them")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default: reports)")
    parser.add_argument("--wandb-export", type=Path, nargs="+", action="extend", default=[], metavar="CSV",
                        help="CSV exported from W&B: experiment_name, iteration, stage, metric columns")
    parser.add_argument("--wandb-upload", action="store_true", help="also log the figures to a new W&B run")
    parser.add_argument("--wandb-project", default="cream")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb_export:
        parser.error("give at least one run folder or --wandb-export CSV")
    try:
        report = compare(args.paths, args.out, args.wandb_export)
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"figures and summary.md written to {args.out}")
    if args.wandb_upload:
        upload(args.out, args.wandb_project, list(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
