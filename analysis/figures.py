"""The figures of analysis.compare: benchmarks.png, consistency.png, reward_accuracy.png, pairs.png, training.png,
length.png.

Each method at its own x offset and marker (tied methods stay visible), its mean over the seeds with ±1 standard
error (`eval/<task>_stderr`, mean over seeds) and ±1 sd over the seeds, each seed a dot; benchmark panels share
one percent range.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Iterable, Optional

from analysis.load import benchmark_panels
from analysis.stats import Point, points

FIGURES = ("benchmarks", "consistency", "reward_accuracy", "pairs", "training", "length")
# the reward's length bias, per iteration (`cream.rewards.diagnostics.length_bias`); each panel on its own scale
LENGTH_PANELS = [("length/chosen_mean", "chosen response, mean tokens"), ("length/rejected_mean", "rejected response, mean tokens"),
                 ("length/chosen_longer_share", "share of pairs: chosen is longer"),
                 ("length/reward_spearman", "rank correlation of reward and length")]
# a pairwise judge's position bias, drawn beside the length panels when a run logs it; a score judge (SRLM's)
# sees one response at a time, so no verdict of it can depend on an order
POSITION_PANEL = ("self_reference/position_bias_rate", "pairwise judge: share of verdicts flipping with the order")
# What the loss sees of the pairs, per iteration: the plug-ins' labels, weights and filters (0 to 1 each)
TRAINING_PANELS = [("pairs/mean_target", "mean label (C, p or both)"), ("pairs/mean_weight", "mean pair weight"),
                   ("scir/agreement_rate", "SCIR: rewards agreeing"), ("upo/kept_share", "UPO: pairs kept"),
                   ("bstar/balance", "B-STaR: balance score")]
MARKERS = "osD^vP*X<>"  # one per method, so methods tied on a point stay told apart
OFFSET_SPAN = 0.4  # the methods of one model or iteration spread over this much of the x-axis
LEGEND_NOTE = ("marker: mean over seeds; thin capped bar: ±1 standard error; "
               "wide pale bar: ±1 sd over seeds; dots: each seed")


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


def plot(path: Path, title: str, ylabel: str, panels: list[tuple[str, str]], methods: dict, table: str,
         xlabel: str, tick: str, ylim: Optional[tuple[float, Optional[float]]], percent_of: Optional[float] = None):
    """One panel per (metric, title), all on the y-range `ylim` (top None: fitted to the data; None: each panel
    fitted to its own data) plus a small margin, in percent of `percent_of` when given. Each method at its own x offset and marker: its mean over
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
        if ylim is not None:
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


def _reward_panels(methods: dict) -> list[tuple[str, str]]:
    panels = [("reward_accuracy/chosen_correct", "chosen response correct"),
              ("reward_accuracy/inverted", "inverted (chosen wrong, rejected right)")]
    if any("reward_accuracy/auc" in v for c in methods.values() for v in c["iterations"].values()):
        panels.append(("reward_accuracy/auc", "AUC: correct outranks wrong"))
    return panels


def bias_panels(methods: dict) -> list[tuple[str, str]]:
    """length.png's panels: the length bias, and the position bias when some run's judge is pairwise."""
    logged = any(POSITION_PANEL[0] in values for c in methods.values() for values in c["iterations"].values())
    return LENGTH_PANELS + [POSITION_PANEL] * logged


def draw(out_dir: Path, methods: dict) -> None:
    """Every figure of FIGURES, as `<name>.png` in `out_dir`."""
    model_axis, iteration_axis = ("model", "M{}"), ("iteration", "{}")
    benchmarks = benchmark_panels(methods)
    # one percent range for every benchmark panel, in steps of 10 points: panels compare at a glance
    scores = y_range([p for key, _ in benchmarks for c in methods.values() for p in points(c["models"], key)],
                     (0.0, 100.0), 10.0)
    plot(out_dir / "benchmarks.png", "Benchmark accuracy per model", "accuracy", benchmarks,
         methods, "models", *model_axis, ylim=scores, percent_of=100)
    plot(out_dir / "consistency.png", "Consistency of the self-reward", "mean C",
         [("consistency/mean", "consistency/mean")], methods, "iterations", *iteration_axis, ylim=(0, 1))
    plot(out_dir / "reward_accuracy.png", "Reward accuracy against ground truth", "share of pairs",
         _reward_panels(methods), methods, "iterations", *iteration_axis, ylim=(0, 1), percent_of=1)
    plot(out_dir / "pairs.png", "Preference pairs kept", "pairs", [("pairs/kept", "pairs/kept")],
         methods, "iterations", *iteration_axis, ylim=(0, None))
    logged = [(key, name) for key, name in TRAINING_PANELS
              if any(key in values for c in methods.values() for values in c["iterations"].values())]
    plot(out_dir / "training.png", "What the loss sees", "mean per iteration", logged or TRAINING_PANELS[:1],
         methods, "iterations", *iteration_axis, ylim=(0, 1))
    plot(out_dir / "length.png", "Does the reward prefer long responses (or a position)?", "per iteration",
         bias_panels(methods), methods, "iterations", *iteration_axis, ylim=None)
