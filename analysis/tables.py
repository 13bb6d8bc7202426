"""The tables of analysis.compare and its summary.md: the means with their standard errors, mean ± sd over the
seeds per benchmark, the paired differences, the figures."""

from __future__ import annotations

from statistics import mean
from typing import Iterable, Optional

from analysis.figures import FIGURES, LEGEND_NOTE
from analysis.load import STDERR, benchmark_panels
from analysis.stats import BOOTSTRAP_SEED, RESAMPLES, Point, points


def _cell(values: Optional[list[float]], fmt: str) -> str:
    return format(mean(values), fmt) if values else "–"


def _score_cell(scores: dict[str, list[float]], task: str) -> str:
    """The mean score, with +- its standard error (mean over the runs) where the runs logged one."""
    cell, stderr = _cell(scores.get(f"eval/{task}"), ".1f"), scores.get(f"eval/{task}{STDERR}")
    return f"{cell} ± {mean(stderr):.1f}" if stderr and cell != "–" else cell


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def score_table(methods: dict) -> str:
    """Markdown: a row per method and model M_k; M_k (k >= 2) was trained at iteration k-1, whose
    consistency, reward accuracy and pairs are shown beside its scores. `runs`: how many reached the row."""
    tasks = [name for _, name in benchmark_panels(methods)]
    header = ["method", "model", "runs", *tasks, "iteration", "consistency", "reward acc.", "pairs kept"]
    lines = [_row(header), "|" + "---|" * len(header)]
    for label, c in methods.items():
        indices = sorted(set(c["models"]) | {t + 1 for t in c["iterations"] if t >= 1})
        for k in indices:
            scores = c["models"].get(k, {})
            diag = c["iterations"].get(k - 1, {}) if k >= 2 else {}
            runs = max((len(v) for v in (*scores.values(), *diag.values())), default=0)
            lines.append(_row([label, f"M{k}", str(runs), *(_score_cell(scores, t) for t in tasks),
                               str(k - 1) if k >= 2 else "–", _cell(diag.get("consistency/mean"), ".3f"),
                               _cell(diag.get("reward_accuracy/chosen_correct"), ".3f"),
                               _cell(diag.get("pairs/kept"), ".1f")]))
    return "\n".join(lines) + "\n"


def _spread_cell(point: Optional[Point], seeds: int) -> str:
    """`mean ± sd` over the seeds (the mean alone for one seed), with the count when it is not the row's."""
    if point is None:
        return "–"
    cell = f"{point.mean:.1f}" + (f" ± {point.sd:.1f}" if point.sd is not None else "")
    return cell if len(point.seeds) == seeds else f"{cell} (n={len(point.seeds)})"


def seeds_table(methods: dict) -> str:
    """Markdown: per method and model M_k, each benchmark's mean ± sd over the seeds (what benchmarks.png
    draws as marker and wide bar) and the number of seeds."""
    panels = benchmark_panels(methods)
    lines = [_row(["method", "model", "seeds", *(name for _, name in panels)]), "|" + "---|" * (len(panels) + 3)]
    for label, c in methods.items():
        by_key = {key: {p.x: p for p in points(c["models"], key)} for key, _ in panels}
        for k in sorted(c["models"]):
            row = [by_key[key].get(k) for key, _ in panels]
            seeds = max((len(p.seeds) for p in row if p), default=0)
            lines.append(_row([label, f"M{k}", str(seeds), *(_spread_cell(p, seeds) for p in row)]))
    return "\n".join(lines) + "\n"


def summary(methods: dict, scores: str, spread: str, diffs: list[str], note: str = "", gains: list[str] = ()) -> str:
    """summary.md: `note` (Markdown) first, the runs of each method, the tables `scores` (score_table) and
    `spread` (seeds_table), each method's last model against M0 (`gains`, analysis.stats.gains), the paired
    differences `diffs` (analysis.stats.differences) and the figures."""
    runs_list = "".join(f"- **{label}**: {', '.join(c['runs'])}\n" for label, c in methods.items())
    figures = "".join(f"![{name}]({name}.png)\n" for name in FIGURES)
    paired = ("## Differences on the same items\n\nHierarchical bootstrap of each method's last model, in points "
              f"({RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}): each resample draws the training seeds (the same "
              "draws for both methods when their runs share seeds and data), then each benchmark's items (the "
              "same items for both), so the interval holds the seed-to-seed spread as well as the items'; the "
              "average is taken on the same draws. An interval containing 0 is within the noise, not a win; with "
              "one seed per method it covers the item noise only.\n\n" + "\n".join(diffs) + "\n\n" if diffs else "")
    against_m0 = ("## Against M0\n\nEach method's last model against M0 on the same items, each run against "
                  "its own M0 (the same bootstrap, seeds paired). The positive control reads here: where the Oracle "
                  "does not beat M0, the setting cannot tell methods apart.\n\n" + "\n".join(gains) + "\n\n"
                  if gains else "")
    opening = f"{note}\n\n" if note else ""
    return (f"# Run comparison\n\n{opening}"
            f"Means over the runs (seeds) of each method, each score ± its standard error over the evaluated "
            f"items (mean over the seeds); `runs`: how many runs reached the row.\n\n{runs_list}\n{scores}\n"
            f"## Across seeds\n\nEach benchmark's mean ± standard deviation over the seeds (the sample sd, "
            f"n - 1; none for a single seed), in points.\n\n{spread}\n{against_m0}{paired}"
            f"Figures: each method at its own x offset and marker; {LEGEND_NOTE}.\n\n{figures}")
