"""What analysis.compare draws and tabulates: each method's mean, spread and standard error per model or
iteration, and differences between methods whose intervals hold the training seed's variance as well as the
items' (`cream.eval.stats.seed_bootstrap`: seeds resampled, then items)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, stdev
from typing import Optional

from analysis.load import STDERR, Run, benchmark_order, item_scores
from cream.eval.stats import seed_bootstrap

RESAMPLES, BOOTSTRAP_SEED = 10_000, 0


@dataclass
class Point:
    """One method's value at one x (model or iteration) of one metric, as drawn and tabulated."""

    x: float  # the model or iteration index plus the method's offset
    mean: float  # over the seeds
    sd: Optional[float]  # sample standard deviation over the seeds; None with a single seed
    stderr: Optional[float]  # the within-run standard error, mean over the seeds; None when not logged
    seeds: list[float]  # each seed's value


def points(collected: dict[int, dict[str, list[float]]], key: str, offset: float = 0.0) -> list[Point]:
    """The Points of `key` over x, from a method's x -> metric -> per-seed values (`analysis.load.group_methods`)."""
    out = []
    for x, values in collected.items():
        seeds = values.get(key)
        if not seeds:
            continue
        stderr = values.get(key + STDERR)
        out.append(Point(x + offset, mean(seeds), stdev(seeds) if len(seeds) > 1 else None,
                         mean(stderr) if stderr else None, list(seeds)))
    return out


def _method_runs(runs: list[Run], k: int) -> Optional[list[tuple[object, dict[str, dict[str, float]]]]]:
    """(seed, per-item scores of M_k) of each of the method's runs that evaluated M_k, in seed order, when every
    one of them has its per-item scores and all were scored on the same items; else None."""
    reached = sorted((run for run in runs if k in run.models), key=lambda run: str(run.config.get("seed")))
    found = [item_scores(run, k) for run in reached if run.folder is not None]
    if not found or any(f is None for f in found) or len(found) != len(reached):
        return None
    if any({t: set(f[t]) for t in f} != {t: set(found[0][t]) for t in found[0]} for f in found):
        return None
    return [(run.config.get("seed"), f) for run, f in zip(reached, found)]


def _pairing(runs_a: list[Run], runs_b: list[Run], seeds_a: list, seeds_b: list) -> bool:
    """Whether run k of A pairs with run k of B: the same seeds, and each seed's runs on the same data."""
    data = lambda runs: {str(r.config.get("seed")): {k: v for k, v in r.config.items() if k.startswith("data_identity.")}
                         for r in runs}
    return seeds_a == seeds_b and None not in seeds_a and data(runs_a) == data(runs_b)


def _last_models(by_label: dict[str, list[Run]], methods: dict) -> dict:
    """label -> (k of its last evaluated model, (seed, per-item scores) of each run that reached it)."""
    last = {}
    for label in methods:
        evaluated = sorted(methods[label]["models"])
        found = _method_runs(by_label[label], evaluated[-1]) if evaluated else None
        if found:
            last[label] = (evaluated[-1], found)
    return last


def _difference_lines(a: str, runs_a: list, b: str, runs_b: list, paired: bool, head: str,
                      one_method: bool = False) -> list[str]:
    """The Markdown lines of A - B per benchmark and on the average, or one line saying why there is none."""
    items_a, items_b = runs_a[0][1], runs_b[0][1]
    if {t: set(v) for t, v in items_a.items()} != {t: set(v) for t, v in items_b.items()}:
        return [f"- {head}: not evaluated on the same items, no paired difference"]
    ids = {t: sorted(items_a[t]) for t in items_a}
    diffs = seed_bootstrap([{t: [f[t][x] for x in ids[t]] for t in ids} for _, f in runs_a],
                           [{t: [f[t][x] for x in ids[t]] for t in ids} for _, f in runs_b],
                           paired, RESAMPLES, BOOTSTRAP_SEED)
    items = sum(len(v) for v in ids.values())
    if len(runs_a) == len(runs_b) == 1:
        how = f"one seed{'' if one_method else ' each'}: the interval covers the item noise only"
    else:
        how = f"seeds then items resampled{', seeds paired' if paired else ''}"
    return [f"- {head}, {items} items ({how}):",
            *[f"  - {t}: {diffs[t].describe(a, b, scale=100.0)}" for t in [*benchmark_order(ids), "average"]]]


def differences(by_label: dict[str, list[Run]], methods: dict) -> list[str]:
    """Markdown lines: for each pair of methods, the difference of their last models per benchmark and on the
    average, in points, with a hierarchical bootstrap interval (training seeds, then items); a difference is
    "higher" only when that interval excludes 0, else it is within the noise."""
    last = _last_models(by_label, methods)
    lines = []
    labels = sorted(last)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            (ka, runs_a), (kb, runs_b) = last[a], last[b]
            head = f"**{a} (M{ka}, {_count(len(runs_a), 'seed')}) vs {b} (M{kb}, {_count(len(runs_b), 'seed')})**"
            paired = _pairing(by_label[a], by_label[b], [s for s, _ in runs_a], [s for s, _ in runs_b])
            lines += _difference_lines(a, runs_a, b, runs_b, paired, head)
    return lines


def gains(by_label: dict[str, list[Run]], methods: dict) -> list[str]:
    """Markdown lines: each method's last model against its own M0, on the same items, seeds paired (each run
    against its own M0): the positive control reads here (an Oracle that does not beat M0 cannot tell methods
    apart)."""
    lines = []
    for label, (k, last_runs) in sorted(_last_models(by_label, methods).items()):
        if k == 0:
            continue
        first = _method_runs([r for r in by_label[label] if k in r.models], 0)
        if not first or [s for s, _ in first] != [s for s, _ in last_runs]:
            lines.append(f"- **{label}**: M0 not evaluated with per-item scores in every run that reached M{k}")
            continue
        head = f"**{label}: M{k} vs M0** ({_count(len(last_runs), 'seed')})"
        lines += _difference_lines(f"{label} M{k}", last_runs, f"{label} M0", first, True, head, one_method=True)
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def means(methods: dict) -> dict:
    """{method: {"runs": [sources], "models": {k: {eval key: mean}}, "iterations": {t: {key: mean}}}}."""
    return {label: {"runs": c["runs"],
                    **{kind: {x: {k: mean(v) for k, v in m.items()} for x, m in c[kind].items()}
                       for kind in ("models", "iterations")}}
            for label, c in methods.items()}
