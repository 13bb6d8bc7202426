"""What analysis.compare draws and tabulates: each method's mean, spread and standard error per model or
iteration, and paired bootstrap differences between methods (`cream.eval.stats.paired_bootstrap`)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, stdev
from typing import Optional

from analysis.load import STDERR, Run, benchmark_order, item_scores
from cream.eval.stats import paired_bootstrap

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


def _method_items(runs: list[Run], k: int) -> Optional[tuple[int, dict[str, dict[str, float]]]]:
    """(runs, per-item scores of M_k averaged over them) over the method's runs (seeds) that evaluated M_k,
    when each of them has its per-item scores and all were scored on the same items."""
    reached = [run for run in runs if k in run.models]
    found = [item_scores(run, k) for run in reached if run.folder is not None]
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
            lines += [f"  - {t}: {diffs[t].describe(a, b, scale=100.0)}" for t in [*benchmark_order(ids), "average"]]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def means(methods: dict) -> dict:
    """{method: {"runs": [sources], "models": {k: {eval key: mean}}, "iterations": {t: {key: mean}}}}."""
    return {label: {"runs": c["runs"],
                    **{kind: {x: {k: mean(v) for k, v in m.items()} for x, m in c[kind].items()}
                       for kind in ("models", "iterations")}}
            for label, c in methods.items()}
