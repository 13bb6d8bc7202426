"""The lm-eval tasks that score each benchmark under each protocol, rendered over the local JSONL.

Local tasks are rendered from the templates in `cream/tasks/` into a folder, one YAML per task
pointing at the absolute path of its split file, so the folder also works with `lm_eval --include_path`.
With no data directory (the hub), the harness protocol runs lm-eval's own tasks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cream.config.eval import EvalProtocol
from cream.data.load import load_benchmark
from cream.errors import ConfigError, DataError
from cream.runs.artifacts import write_bytes

TEMPLATES = Path(__file__).resolve().parent / "tasks"
# Short task name -> data folder.
FOLDERS = {
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
    "openbookqa": "openbookqa",
    "siqa": "siqa",
    "gsm8k": "gsm8k",
    "truthfulqa": "truthfulqa_mc",
}
KNOWN_TASKS = tuple(FOLDERS)
# lm-eval's doc_to_text of each multiple-choice task, over the local schema.
_MC_TEXT = {
    "arc_easy": "Question: {{question}}\nAnswer:",
    "arc_challenge": "Question: {{question}}\nAnswer:",
    "openbookqa": "{{question}}",
    "siqa": "Q: {{context}} {{query}}\nA:",
}
_HUB_TASKS = {
    "arc_easy": ("arc_easy",),
    "arc_challenge": ("arc_challenge",),
    "openbookqa": ("openbookqa",),
    "siqa": ("social_iqa",),
    "gsm8k": ("gsm8k",),
    "truthfulqa": ("truthfulqa_mc1", "truthfulqa_mc2"),
}


class _Function(str):
    """A `!function module.name` reference in a rendered task YAML."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))


@dataclass(frozen=True)
class LmTask:
    """One lm-eval task run for a benchmark."""

    name: str
    metric: str  # key in lm-eval's results, e.g. "acc,none"
    template: str | None = None  # YAML template in cream/tasks; None = lm-eval's own task
    fields: tuple[str, ...] = ()  # row fields it reads beyond the benchmark schema of SOURCES.md
    extra: dict = field(default_factory=dict)  # YAML keys added to the template
    scored: bool = True  # its metric is the benchmark's score


def lm_tasks(task: str, protocol: EvalProtocol, hub: bool) -> list[LmTask]:
    """The lm-eval tasks that score one benchmark under a protocol."""
    if task not in FOLDERS:
        raise ConfigError(f"config key `eval.tasks`: unknown task `{task}`; known: {', '.join(KNOWN_TASKS)}")
    if protocol == EvalProtocol.paper:
        if hub:
            raise ConfigError("eval.protocol=paper reads local JSONL: set `paths.data` to a data directory")
        process_docs = _Function(f"cream.eval.tasks.utils.process_docs_{FOLDERS[task]}")
        return [LmTask(f"cream_paper_{task}", "exact_match,extract", "paper", extra={"process_docs": process_docs})]
    if hub:
        names = _HUB_TASKS[task]
        metric = "exact_match,flexible-extract" if task == "gsm8k" else "acc,none"
        return [LmTask(n, metric, scored=n == names[-1]) for n in names]
    if task == "truthfulqa":
        return [
            LmTask("cream_harness_truthfulqa_mc1", "acc,none", "harness_truthfulqa_mc1", ("mc1_targets",), scored=False),
            LmTask("cream_harness_truthfulqa_mc2", "acc,none", "harness_truthfulqa_mc2", ("mc2_targets",)),
        ]
    if task == "gsm8k":
        return [LmTask("cream_harness_gsm8k", "exact_match,extract", "harness_gsm8k")]
    fields = ("context", "query") if task == "siqa" else ()
    return [LmTask(f"cream_harness_{task}", "acc,none", "harness_mc", fields, {"doc_to_text": _MC_TEXT[task]})]


def split_file(task: str, data_dir: Path, split: str) -> Path:
    """Where a benchmark's split lies in a data directory (absolute: lm-eval needs it so)."""
    return (Path(data_dir) / FOLDERS[task] / f"{split}.jsonl").resolve()


def check_data(task: str, tasks: list[LmTask], data_dir: Path, split: str) -> tuple[Path, int]:
    """The split file of a benchmark and its number of rows, after checking every row has the fields its tasks read."""
    folder = FOLDERS[task]
    try:
        rows = load_benchmark(folder, split, data_dir)
    except DataError as e:
        raise DataError(f"eval task `{task}`: {e}") from None
    path = split_file(task, data_dir, split)
    for i, row in enumerate(rows, start=1):
        missing = [f for t in tasks for f in t.fields if f not in row]
        if missing:
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}) lacks field `{missing[0]}` (eval task `{task}`)")
    return path, len(rows)


def snapshot(path: Path, folder: Path) -> tuple[Path, str]:
    """A copy of a split file named by its content's sha256, and that sha256.

    lm-eval is given the copy, not the file: the datasets library caches a local file by its path and
    modification time, so an edit that keeps the time would be scored from the stale cache."""
    content = Path(path).read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    copy = (Path(folder) / f"{Path(path).parent.name}-{Path(path).stem}-{sha[:16]}.jsonl").resolve()
    if not copy.is_file():
        write_bytes(copy, content)
    return copy, sha


def render_task(task: LmTask, data_file: Path, split: str, folder: Path) -> None:
    """Write `<folder>/<task>.yaml`: the template with this task's name, data file and split."""
    config = {
        "include": str(TEMPLATES / f"{task.template}.yaml"),
        "task": task.name,
        "dataset_kwargs": {"data_files": {split: str(data_file)}},
        "test_split": split,
        **task.extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task.name}.yaml").write_text(yaml.dump(config, Dumper=_Dumper, sort_keys=False))
