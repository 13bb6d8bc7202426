"""The runs analysis.compare reads, grouped into methods: run folders (through `cream.runs.reader`) and W&B CSV exports.

A run's method is its `experiment_name` (else its folder's parent name); runs of one method that differ in a
setting other than the seed (a sweep under one experiment), or in their data (run.json's data identity: other
prompts, shards or evaluation files), get that setting appended to the method name, so only seeds are ever
averaged; two runs of one method with the same seed are refused, naming both (they would count as two seeds).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from cream.config.eval import EvalProtocol
from cream.errors import DataError
from cream.eval.task_files import KNOWN_TASKS, lm_tasks
from cream.runs.reader import RunReader, evaluated_model
from cream.runs.run_folder import NOT_RESULT_KEYS, flatten

# Settings that do not change what a run measures; runs differing only in these are seeds of one method.
NOT_METHOD_KEYS = {*NOT_RESULT_KEYS, "seed", "experiment_name", "experiment"}
ID_COLUMNS = {None, "", "experiment_name", "seed", "stage"}  # CSV columns that name a record, not a metric
STDERR = "_stderr"  # eval/<task>_stderr: the standard error of eval/<task>


@dataclass
class Run:
    label: str
    source: str  # the run folder or the CSV file
    config: dict  # run.json's config, flattened to dotted keys ({} for W&B exports)
    models: dict[int, dict[str, float]]  # model index (M0, M1, ...) -> eval/* scores
    iterations: dict[int, dict[str, float]]  # iteration -> every other numeric metric of its stages
    folder: Optional[RunReader] = None  # the run folder; None for W&B exports


def from_records(label: str, source: str, config: dict, records: Iterable[tuple[str, dict]],
                 folder: Optional[RunReader] = None) -> Run:
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
        index = evaluated_model(iteration, stage)
        if index is not None:
            models[index].update({k: v for k, v in values.items() if k.startswith("eval/")})
        else:
            iterations[iteration].update(values)
    return Run(label, source, config, dict(models), dict(iterations), folder)


def load_run(run_dir: Path) -> Run:
    folder = RunReader(run_dir)
    where = str(folder.metrics_path)
    records = [(where, r) for r in folder.metrics()]  # the reader names file:line when a line is malformed
    # the data identity sits beside the settings: runs on other data are told apart like other settings
    identity = flatten({"data_identity": folder.manifest.get("data", {})})
    return from_records(folder.config.get("experiment_name") or folder.dir.parent.name, str(run_dir),
                        {**flatten(folder.config), **identity}, records, folder)


def load_export(path: Path) -> list[Run]:
    """Runs from a W&B CSV export (see analysis.compare); one run per experiment_name and seed."""
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
    return [from_records(name, str(path), {}, records) for (name, _), records in groups.items()]


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text


# Drawn with the seed (`load_prompts` shuffles and letters the prompts with it, `load_sft_examples` picks with it):
# runs of other seeds differ here by design, so only two runs of one seed that differ are on other data. A
# data folder of other contents also shows in the evaluation files' hashes, which split runs whatever their seeds.
SEEDED_DATA = {"data_identity.prompts", "data_identity.sft_examples"}


def _differ(group: list[Run], key: str) -> bool:
    """Whether the runs of one label differ in `key` other than by their seeds."""
    if key not in SEEDED_DATA:
        return len({repr(run.config[key]) for run in group}) > 1
    by_seed: dict[str, set[str]] = defaultdict(set)
    for run in group:
        by_seed[repr(run.config.get("seed"))].add(repr(run.config[key]))
    return any(len(values) > 1 for values in by_seed.values())


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
        differing = sorted(k for k in shared if k.split(".")[0] not in NOT_METHOD_KEYS and _differ(group, k))
        if differing:
            for run in group:
                run.label += " [" + ", ".join(f"{k}={run.config[k]}" for k in differing) + "]"


def _refuse_repeated_seeds(by_label: dict[str, list[Run]]) -> None:
    for label, group in by_label.items():
        seen: dict[object, Run] = {}
        for run in group:
            seed = run.config.get("seed")
            if seed is not None and seed in seen:
                raise DataError(f"{seen[seed].source} and {run.source}: two runs of {label} with seed {seed} and the "
                                f"same settings and data would count as two seeds; compare one of them (or rerun one "
                                f"with another seed)")
            seen[seed] = run


def _collect(runs: list[Run], table: str) -> dict[int, dict[str, list[float]]]:
    """x -> metric -> the finite values of the runs that logged it."""
    out: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for x, metrics in getattr(run, table).items():
            for key, value in metrics.items():
                if math.isfinite(value):
                    out[x][key].append(value)
    return {x: dict(out[x]) for x in sorted(out)}


def group_methods(runs: list[Run]) -> tuple[dict[str, list[Run]], dict]:
    """(label -> its runs, label -> {"runs": [sources], "models": x -> key -> per-run values, "iterations": ...}),
    labels sorted; runs of one label are seeds of one method (`_split_variants`)."""
    _split_variants(runs)
    by_label: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_label[run.label].append(run)
    _refuse_repeated_seeds(by_label)
    methods = {label: {"runs": [r.source for r in group], "models": _collect(group, "models"),
                       "iterations": _collect(group, "iterations")}
               for label, group in sorted(by_label.items())}
    return dict(by_label), methods


def benchmark_order(tasks: Iterable[str]) -> list[str]:
    """The known benchmarks in their usual order, then any other task by name."""
    tasks = set(tasks)
    return [t for t in KNOWN_TASKS if t in tasks] + sorted(tasks - set(KNOWN_TASKS))


def benchmark_panels(methods: dict) -> list[tuple[str, str]]:
    """(eval key, benchmark) of every benchmark the methods logged (all known ones when none), then the average."""
    logged = {k[len("eval/"):] for c in methods.values() for v in c["models"].values() for k in v
              if not k.endswith(STDERR)} - {"average"}
    return [(f"eval/{t}", t) for t in benchmark_order(logged) or KNOWN_TASKS] + [("eval/average", "average")]


def item_scores(run: Run, k: int) -> Optional[dict[str, dict[str, float]]]:
    """{benchmark: {item id: score}} of M_k of a run folder, from the lm-eval task that scores each benchmark;
    None when its evaluation's eval.json or predictions.jsonl is missing."""
    evaluation = run.folder.evaluation(k)
    if evaluation is None:
        return None
    report = evaluation.report
    protocol, hub = EvalProtocol(report["protocol"]), report.get("data") == "hub"
    scored = {t.name for task in report["scores"] if task != "average" for t in lm_tasks(task, protocol, hub) if t.scored}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in evaluation.predictions:
        if row["lm_eval_task"] in scored:
            out[row["task"]][row["id"]] = float(row["score"])
    return dict(out)
