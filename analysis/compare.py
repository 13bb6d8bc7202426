"""Compare methods across runs: benchmark curves, consistency, reward accuracy, pairs kept, a summary table.

    python -m analysis.compare RUN_DIR_OR_PARENT [...] --out DIR [--wandb-export CSV ...] [--wandb-upload]

A run is a folder holding `run.json` and `metrics.jsonl` (README, "The run folder"); parents are
searched recursively. A run's method is its `experiment_name` (else its folder's parent name); runs
of one method that differ in a setting other than the seed (a sweep under one experiment) get that
setting appended to the method name, so only seeds are ever averaged.
Writes benchmarks.png, consistency.png, reward_accuracy.png, pairs.png and summary.md into DIR.
Figures: each method at its own x offset and marker (tied methods stay visible), its mean over the
seeds with ±1 standard error (`eval/<task>_stderr`, mean over seeds) and ±1 sd over the seeds, each
seed a dot; benchmark panels share one percent range. summary.md: the means with their standard
errors, mean ± sd over the seeds per benchmark, and for each pair of methods whose last models were
scored on the same items, paired bootstrap differences per benchmark and on the average
(`cream.eval.stats.paired_bootstrap`).

W&B exports: CSV files with columns `experiment_name`, `iteration`, `stage` and one column per
metric (an optional `seed` column separates runs), i.e. metrics.jsonl as a table.
"""

from __future__ import annotations

import argparse
import csv
import math
import netrc
import os
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Iterable, Optional
from urllib.parse import urlparse

from cream.runs.artifacts import read_json, read_jsonl
from cream.errors import CreamError, DataError
from cream.eval.stats import paired_bootstrap

RUN_FILE, METRICS_FILE = "run.json", "metrics.jsonl"
BENCHMARKS = ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa"]
# Settings that do not change what a run measures; runs differing only in these are seeds of one method.
NOT_METHOD_KEYS = {"seed", "experiment_name", "experiment", "run_name", "resume", "threads", "paths", "logger"}
ID_COLUMNS = {None, "", "experiment_name", "seed", "stage"}  # CSV columns that name a record, not a metric
FIGURES = ("benchmarks", "consistency", "reward_accuracy", "pairs", "training")
# What the loss sees of the pairs, per iteration: the plug-ins' labels, weights and filters (0 to 1 each)
TRAINING_PANELS = [("pairs/mean_target", "mean label (C, p or both)"), ("pairs/mean_weight", "mean pair weight"),
                   ("scir/agreement_rate", "SCIR: rewards agreeing"), ("upo/kept_share", "UPO: pairs kept"),
                   ("bstar/balance", "B-STaR: balance score")]
STDERR = "_stderr"  # eval/<task>_stderr: the standard error of eval/<task>
RESAMPLES, BOOTSTRAP_SEED = 10_000, 0
MARKERS = "osD^vP*X<>"  # one per method, so methods tied on a point stay told apart
OFFSET_SPAN = 0.4  # the methods of one model or iteration spread over this much of the x-axis
LEGEND_NOTE = ("marker: mean over seeds; thin capped bar: ±1 standard error; "
               "wide pale bar: ±1 sd over seeds; dots: each seed")


@dataclass
class Run:
    label: str
    source: str  # the run folder or the CSV file
    config: dict  # run.json's config, flattened to dotted keys ({} for W&B exports)
    models: dict[int, dict[str, float]]  # model index (M0, M1, ...) -> eval/* scores
    iterations: dict[int, dict[str, float]]  # iteration -> every other numeric metric of its stages


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _from_records(label: str, source: str, config: dict, records: Iterable[tuple[str, dict]]) -> Run:
    """Build a run from (where, record) pairs; `where` names the file and line for errors."""
    models: dict[int, dict[str, float]] = defaultdict(dict)
    iterations: dict[int, dict[str, float]] = defaultdict(dict)
    for where, record in records:
        try:
            iteration, stage = int(record["iteration"]), str(record["stage"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: a metrics record needs an integer `iteration` and a `stage`") from None
        values = {k: float(v) for k, v in record.items()
                  if k not in ("iteration", "stage") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if stage.startswith("evaluate"):
            # evaluate_m0 scores M0; `evaluate` of iteration t scores the model it produced, M_{t+1}
            index = 0 if stage == "evaluate_m0" else iteration + 1
            models[index].update({k: v for k, v in values.items() if k.startswith("eval/")})
        else:
            iterations[iteration].update(values)
    return Run(label, source, config, dict(models), dict(iterations))


def find_runs(path: Path) -> list[Path]:
    """Every run folder at or under `path`; an error naming the path when there is none."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        path = path.parent
    found = sorted({p.parent for p in path.rglob(RUN_FILE) if (p.parent / METRICS_FILE).is_file()})
    if not found:
        raise DataError(f"{path}: no run folder (one holding {RUN_FILE} and {METRICS_FILE}) found there")
    return found


def load_run(run_dir: Path) -> Run:
    config = read_json(run_dir / RUN_FILE).get("config", {})
    metrics = run_dir / METRICS_FILE
    records = [(str(metrics), r) for r in read_jsonl(metrics)]  # read_jsonl names file:line when malformed
    return _from_records(config.get("experiment_name") or run_dir.parent.name, str(run_dir), _flatten(config), records)


def load_export(path: Path) -> list[Run]:
    """Runs from a W&B CSV export (see the module docstring); one run per experiment_name and seed."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"experiment_name", "iteration", "stage"} - set(reader.fieldnames or ())
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            groups: dict[tuple[str, str], list] = defaultdict(list)
            for row in reader:
                record = {k: _number(v) for k, v in row.items() if k not in ID_COLUMNS and v not in (None, "")}
                record["stage"] = row["stage"]
                groups[(row["experiment_name"], row.get("seed") or "")].append((f"{path}:{reader.line_num}", record))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the CSV: {e}") from None
    return [_from_records(name, str(path), {}, records) for (name, _), records in groups.items()]


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _split_variants(runs: list[Run]) -> None:
    """Runs of one label that differ in a setting besides the seed get the differing settings in their label.

    Only settings every run records count: a key added to the schema later does not split old runs from new.
    """
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.config:  # W&B exports carry no config
            groups[run.label].append(run)
    for group in groups.values():
        shared = set.intersection(*(set(run.config) for run in group))
        differing = sorted(k for k in shared if k.split(".")[0] not in NOT_METHOD_KEYS
                           and len({repr(run.config[k]) for run in group}) > 1)
        if differing:
            for run in group:
                run.label += " [" + ", ".join(f"{k}={run.config[k]}" for k in differing) + "]"


def _collect(runs: list[Run], table: str) -> dict[int, dict[str, list[float]]]:
    """x -> metric -> the finite values of the runs that logged it."""
    out: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for x, metrics in getattr(run, table).items():
            for key, value in metrics.items():
                if math.isfinite(value):
                    out[x][key].append(value)
    return {x: dict(out[x]) for x in sorted(out)}


@dataclass
class Point:
    """One method's value at one x (model or iteration) of one metric, as drawn and tabulated."""

    x: float  # the model or iteration index plus the method's offset
    mean: float  # over the seeds
    sd: Optional[float]  # sample standard deviation over the seeds; None with a single seed
    stderr: Optional[float]  # the within-run standard error, mean over the seeds; None when not logged
    seeds: list[float]  # each seed's value


def points(collected: dict[int, dict[str, list[float]]], key: str, offset: float = 0.0) -> list[Point]:
    """The Points of `key` over x, from `_collect`'s x -> metric -> per-seed values."""
    out = []
    for x, values in collected.items():
        seeds = values.get(key)
        if not seeds:
            continue
        stderr = values.get(key + STDERR)
        out.append(Point(x + offset, mean(seeds), stdev(seeds) if len(seeds) > 1 else None,
                         mean(stderr) if stderr else None, list(seeds)))
    return out


def offsets(n_methods: int) -> list[float]:
    """x offsets of the methods, centred on the tick and spanning OFFSET_SPAN: tied methods sit side by side."""
    if n_methods == 1:
        return [0.0]
    step = OFFSET_SPAN / (n_methods - 1)
    return [(i - (n_methods - 1) / 2) * step for i in range(n_methods)]


def y_range(series: Iterable[Point], bounds: tuple[float, float], step: float) -> tuple[float, float]:
    """A shared y-range for panels: every mean with its error bars and every seed, widened to whole
    `step`s within `bounds` and at least two steps tall, so a flat line never gets an axis of +-0.04."""
    ends = [v for p in series for v in (p.mean - max(p.sd or 0, p.stderr or 0),
                                         p.mean + max(p.sd or 0, p.stderr or 0), *p.seeds)]
    if not ends:
        return bounds
    low, high = math.floor(min(ends) / step) * step, math.ceil(max(ends) / step) * step
    if high - low < 2 * step:  # too flat: two steps around the middle
        low = math.floor(((low + high) / 2 - step) / step) * step
        high = low + 2 * step
    shift = max(0.0, bounds[0] - low) - max(0.0, high - bounds[1])  # moved inside the bounds
    return max(bounds[0], low + shift), min(bounds[1], high + shift)


def _plot(path: Path, title: str, ylabel: str, panels: list[tuple[str, str]], methods: dict, table: str,
          xlabel: str, tick: str, ylim: tuple[float, Optional[float]], percent_of: Optional[float] = None):
    """One panel per (metric, title), all on the y-range `ylim` (top None: fitted to the data) plus a small
    margin, in percent of `percent_of` when given. Each method at its own x offset and marker: its mean over
    the seeds, ±1 standard error (thin capped bar, where logged), ±1 sd over the seeds (wide pale bar) and
    each seed (dot). Returns the Figure, saved to `path`."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and leaves pyplot's state alone
    from matplotlib.ticker import PercentFormatter

    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    shift = offsets(len(methods))
    legend = {}  # label -> line, from whichever panel the method appears in
    for ax, (key, name) in zip(axes, panels):
        xs_all: set[int] = set()
        for i, (label, collected) in enumerate(methods.items()):
            series = points(collected[table], key, shift[i])
            if not series:
                continue  # this method never logged the metric (older runs lack some diagnostics)
            xs_all.update(x for x, v in collected[table].items() if v.get(key))
            color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
            legend[label], = ax.plot([p.x for p in series], [p.mean for p in series], label=label, color=color,
                                     marker=marker, markersize=7, markerfacecolor="white", linewidth=1.2, zorder=3)
            spread = [p for p in series if p.sd is not None]
            if spread:  # how far the seeds differ: a wide pale bar
                ax.errorbar([p.x for p in spread], [p.mean for p in spread], yerr=[p.sd for p in spread], fmt="none",
                            ecolor=color, elinewidth=6, alpha=0.3, zorder=2)
            measured = [p for p in series if p.stderr is not None]
            if measured:  # the evaluation's own standard error (items): a thin capped bar
                ax.errorbar([p.x for p in measured], [p.mean for p in measured], yerr=[p.stderr for p in measured],
                            fmt="none", ecolor=color, elinewidth=1, capsize=3, zorder=2)
            seeded = [(p.x, v) for p in series if len(p.seeds) > 1 for v in p.seeds]
            if seeded:
                ax.scatter(*zip(*seeded), s=12, color=color, linewidths=0, zorder=4)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted(xs_all), [tick.format(x) for x in sorted(xs_all)])
        low, high = ylim
        margin = 0.03 * (high - low) if high is not None else 0.0  # a point on a bound stays whole
        ax.set_ylim(low - margin, None if high is None else high + margin)
        if percent_of:
            ax.yaxis.set_major_formatter(PercentFormatter(percent_of, decimals=0))
        ax.grid(axis="y", alpha=0.3)
        if not xs_all:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(3, len(legend)),
                   fontsize="small", title=textwrap.fill(LEGEND_NOTE, 60 * cols), title_fontsize="x-small")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return fig


def _benchmark_panels(methods: dict) -> list[tuple[str, str]]:
    logged = {k[len("eval/"):] for c in methods.values() for v in c["models"].values() for k in v
              if not k.endswith(STDERR)} - {"average"}
    tasks = [b for b in BENCHMARKS if b in logged] + sorted(logged - set(BENCHMARKS))
    return [(f"eval/{t}", t) for t in tasks or BENCHMARKS] + [("eval/average", "average")]


def _reward_panels(methods: dict) -> list[tuple[str, str]]:
    panels = [("reward_accuracy/chosen_correct", "chosen response correct"),
              ("reward_accuracy/inverted", "inverted (chosen wrong, rejected right)")]
    if any("reward_accuracy/auc" in v for c in methods.values() for v in c["iterations"].values()):
        panels.append(("reward_accuracy/auc", "AUC: correct outranks wrong"))
    return panels


def _cell(values: Optional[list[float]], fmt: str) -> str:
    return format(mean(values), fmt) if values else "–"


def _score_cell(scores: dict[str, list[float]], task: str) -> str:
    """The mean score, with +- its standard error (mean over the runs) where the runs logged one."""
    cell, stderr = _cell(scores.get(f"eval/{task}"), ".1f"), scores.get(f"eval/{task}{STDERR}")
    return f"{cell} ± {mean(stderr):.1f}" if stderr and cell != "–" else cell


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(methods: dict) -> str:
    """Markdown: a row per method and model M_k; M_k (k >= 2) was trained at iteration k-1, whose
    consistency, reward accuracy and pairs are shown beside its scores. `runs`: how many reached the row."""
    tasks = [name for _, name in _benchmark_panels(methods)]
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


def _seeds_table(methods: dict) -> str:
    """Markdown: per method and model M_k, each benchmark's mean ± sd over the seeds (what benchmarks.png
    draws as marker and wide bar) and the number of seeds."""
    panels = _benchmark_panels(methods)
    lines = [_row(["method", "model", "seeds", *(name for _, name in panels)]), "|" + "---|" * (len(panels) + 3)]
    for label, c in methods.items():
        by_key = {key: {p.x: p for p in points(c["models"], key)} for key, _ in panels}
        for k in sorted(c["models"]):
            row = [by_key[key].get(k) for key, _ in panels]
            seeds = max((len(p.seeds) for p in row if p), default=0)
            lines.append(_row([label, f"M{k}", str(seeds), *(_spread_cell(p, seeds) for p in row)]))
    return "\n".join(lines) + "\n"


def _eval_dir(run_dir: Path, k: int) -> Path:
    """The evaluate stage folder of model M_k (README, "The run folder")."""
    return run_dir / "iter_0" / "evaluate_m0" if k == 0 else run_dir / f"iter_{max(k - 1, 0)}" / "evaluate"


def item_scores(eval_dir: Path) -> Optional[dict[str, dict[str, float]]]:
    """{benchmark: {item id: score}} of the lm-eval task that scores each benchmark, from the folder's
    predictions.jsonl and eval.json; None when either is missing."""
    from cream.config import EvalProtocol
    from cream.eval.task_files import lm_tasks

    if not (eval_dir / "predictions.jsonl").is_file() or not (eval_dir / "eval.json").is_file():
        return None
    report = read_json(eval_dir / "eval.json")
    protocol, hub = EvalProtocol(report["protocol"]), report.get("data") == "hub"
    scored = {t.name for task in report["scores"] if task != "average" for t in lm_tasks(task, protocol, hub) if t.scored}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in read_jsonl(eval_dir / "predictions.jsonl"):
        if row["lm_eval_task"] in scored:
            out[row["task"]][row["id"]] = float(row["score"])
    return dict(out)


def _method_items(runs: list[Run], k: int) -> Optional[tuple[int, dict[str, dict[str, float]]]]:
    """(runs, per-item scores of M_k averaged over them) over the method's runs (seeds) that evaluated M_k,
    when each of them has its per-item scores and all were scored on the same items."""
    reached = [run for run in runs if k in run.models]
    found = [item_scores(_eval_dir(Path(run.source), k)) for run in reached if Path(run.source).is_dir()]
    if not found or any(f is None for f in found) or len(found) != len(reached):
        return None
    if any({t: set(f[t]) for t in f} != {t: set(found[0][t]) for t in found[0]} for f in found):
        return None
    return len(found), {t: {i: mean(f[t][i] for f in found) for i in found[0][t]} for t in found[0]}


def differences(by_label: dict[str, list[Run]], methods: dict) -> list[str]:
    """Markdown lines: for each pair of methods, the paired bootstrap difference of their last models per
    benchmark and on the average, in points; a difference whose interval contains 0 is within the noise."""
    last = {}
    for label in methods:
        evaluated = sorted(methods[label]["models"])
        found = _method_items(by_label[label], evaluated[-1]) if evaluated else None
        if found:
            last[label] = (evaluated[-1], *found)
    lines = []
    labels = sorted(last)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            (ka, na, ia), (kb, nb, ib) = last[a], last[b]
            head = f"**{a} (M{ka}, {_count(na, 'seed')}) vs {b} (M{kb}, {_count(nb, 'seed')})**"
            if {t: set(v) for t, v in ia.items()} != {t: set(v) for t, v in ib.items()}:
                lines.append(f"- {head}: not evaluated on the same items, no paired difference")
                continue
            ids = {t: sorted(ia[t]) for t in ia}
            diffs = paired_bootstrap({t: [ia[t][x] for x in ids[t]] for t in ids},
                                     {t: [ib[t][x] for x in ids[t]] for t in ids}, RESAMPLES, BOOTSTRAP_SEED)
            items = sum(len(v) for v in ids.values())
            lines.append(f"- {head}, {items} items:")
            order = [t for t in BENCHMARKS if t in ids] + sorted(set(ids) - set(BENCHMARKS)) + ["average"]
            lines += [f"  - {t}: {diffs[t].describe(a, b, scale=100.0)}" for t in order]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def group_methods(runs: list[Run]) -> tuple[dict[str, list[Run]], dict]:
    """(label -> its runs, label -> {"runs": [sources], "models": x -> key -> per-run values, "iterations": ...}),
    labels sorted; runs of one label are seeds of one method (`_split_variants`)."""
    _split_variants(runs)
    by_label: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    methods = {label: {"runs": [r.source for r in group], "models": _collect(group, "models"),
                       "iterations": _collect(group, "iterations")}
               for label, group in sorted(by_label.items())}
    return dict(by_label), methods


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
    model_axis, iteration_axis = ("model", "M{}"), ("iteration", "{}")
    benchmarks = _benchmark_panels(methods)
    # one percent range for every benchmark panel, in steps of 10 points: panels compare at a glance
    scores = y_range([p for key, _ in benchmarks for c in methods.values() for p in points(c["models"], key)],
                     (0.0, 100.0), 10.0)
    _plot(out_dir / "benchmarks.png", "Benchmark accuracy per model", "accuracy", benchmarks,
          methods, "models", *model_axis, ylim=scores, percent_of=100)
    _plot(out_dir / "consistency.png", "Consistency of the self-reward", "mean C",
          [("consistency/mean", "consistency/mean")], methods, "iterations", *iteration_axis, ylim=(0, 1))
    _plot(out_dir / "reward_accuracy.png", "Reward accuracy against ground truth", "share of pairs",
          _reward_panels(methods), methods, "iterations", *iteration_axis, ylim=(0, 1), percent_of=1)
    _plot(out_dir / "pairs.png", "Preference pairs kept", "pairs", [("pairs/kept", "pairs/kept")],
          methods, "iterations", *iteration_axis, ylim=(0, None))
    logged = [(key, name) for key, name in TRAINING_PANELS
              if any(key in values for c in methods.values() for values in c["iterations"].values())]
    _plot(out_dir / "training.png", "What the loss sees", "mean per iteration", logged or TRAINING_PANELS[:1],
          methods, "iterations", *iteration_axis, ylim=(0, 1))
    runs_list = "".join(f"- **{label}**: {', '.join(c['runs'])}\n" for label, c in methods.items())
    figures = "".join(f"![{name}]({name}.png)\n" for name in FIGURES)
    table, seeds_table = _table(methods), _seeds_table(methods)
    diffs = differences(by_label, methods)
    paired = ("## Differences on the same items\n\nPaired bootstrap over items (each benchmark's items "
              f"resampled, {RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}), in points, of each method's last "
              "model (item scores averaged over its seeds); an interval containing 0 is within the noise, "
              "not a win.\n\n" + "\n".join(diffs) + "\n\n" if diffs else "")
    opening = f"{note}\n\n" if note else ""
    (out_dir / "summary.md").write_text(
        f"# Run comparison\n\n{opening}"
        f"Means over the runs (seeds) of each method, each score ± its standard error over the evaluated "
        f"items (mean over the seeds); `runs`: how many runs reached the row.\n\n{runs_list}\n{table}\n"
        f"## Across seeds\n\nEach benchmark's mean ± standard deviation over the seeds (the sample sd, "
        f"n - 1; none for a single seed), in points.\n\n{seeds_table}\n{paired}"
        f"Figures: each method at its own x offset and marker; {LEGEND_NOTE}.\n\n{figures}", encoding="utf-8")
    print(table)
    print(seeds_table)
    if diffs:
        print("\n".join(diffs))
    return {label: {"runs": c["runs"],
                    **{kind: {x: {k: mean(v) for k, v in m.items()} for x, m in c[kind].items()}
                       for kind in ("models", "iterations")}}
            for label, c in methods.items()}


def _wandb_unavailable() -> Optional[str]:
    """Why W&B cannot upload now, or None."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "no API key (set WANDB_API_KEY or run `wandb login`)"


def upload(out_dir: Path, project: str, methods: list[str]) -> None:
    """Log the figures to a new W&B run; one printed line instead when W&B cannot upload."""
    reason = _wandb_unavailable()
    if reason:
        print(f"W&B upload skipped: {reason}")
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="compare", config={"methods": methods})
        run.log({name: wandb.Image(str(out_dir / f"{name}.png")) for name in FIGURES})
        print(f"W&B: figures logged to {run.url}")
        run.finish()
    except Exception as e:  # noqa: BLE001 - the local report is complete; W&B is a copy
        print(f"W&B upload failed: {e}")


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
        summary = compare(args.paths, args.out, args.wandb_export)
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"figures and summary.md written to {args.out}")
    if args.wandb_upload:
        upload(args.out, args.wandb_project, list(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
