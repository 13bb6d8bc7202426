"""The one reader of a run folder that train.py wrote (cream.loop), finished or not.

    run.json                 the configuration and the identity of the data (`cream.runs.run_folder`)
    metrics.jsonl            one record per stage: `iteration`, `stage`, its metrics (`cream.runs.logger`)
    iter_0/evaluate_m0/      M0's evaluation: eval.json, predictions.jsonl
    iter_0/sft/              M1, by SFT (M0's weights when SFT is off)
    iter_<t>/dpo/            M_{t+1}, trained in iteration t
    iter_<t>/evaluate/       the evaluation of the model that iteration t made, M_{t+1}

`cream.diagnose` reads its models, `analysis.compare` its metrics and evaluations, `analysis.study` whether
it finished. A stage is read only once complete (its DONE mark), except the evaluations `analysis.compare`
reads, which need only their two files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

from cream.errors import DataError
from cream.runs.artifacts import MANIFEST, is_complete, read_json, read_jsonl
from cream.runs.logger import METRICS
from cream.runs.model_ref import ModelRef
from cream.runs.run_folder import EVALUATE_M0, RUN_MANIFEST, stage_folder, stored_model

# The stages whose folders are read: the NAMEs of cream.stages.sft, .dpo and .evaluate (the stages sit above
# cream.runs, so their names are restated here; tests/test_reader.py holds them equal).
SFT, DPO, EVALUATE = "sft", "dpo", "evaluate"
# What the evaluate stage writes (cream.eval.harness.evaluate_model).
EVAL_REPORT, PREDICTIONS = "eval.json", "predictions.jsonl"


def evaluated_model(iteration: int, stage: str) -> Optional[int]:
    """The index k of the model M_k a metrics record of (iteration, stage) evaluated; None for other stages.

    evaluate_m0 scores M0; `evaluate` of iteration t scores the model that iteration made, M_{t+1}."""
    if not stage.startswith(EVALUATE):
        return None
    return 0 if stage == EVALUATE_M0 else iteration + 1


def find_runs(path: Path) -> list[Path]:
    """Every run folder at or under `path` (a file: its folder); an error naming the path when there is none."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        path = path.parent
    found = sorted({p.parent for p in path.rglob(RUN_MANIFEST) if RunReader(p.parent).exists()})
    if not found:
        raise DataError(f"{path}: no run folder (one holding {RUN_MANIFEST} and {METRICS}) found there")
    return found


@dataclass(frozen=True)
class Evaluation:
    """One model's evaluation: eval.json (scores, protocol, data) and predictions.jsonl (one row per item)."""

    report: dict
    predictions: list[dict]


class RunReader:
    """A run folder, read: its configuration and data identity, metrics records, models and their evaluations."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    def exists(self) -> bool:
        """Whether the folder holds a run that logged: its run.json and metrics.jsonl."""
        return (self.dir / RUN_MANIFEST).is_file() and (self.dir / METRICS).is_file()

    @cached_property
    def manifest(self) -> dict:
        return read_json(self.dir / RUN_MANIFEST)

    @property
    def config(self) -> dict:
        """The settings the run's results depend on, as run.json stores them (nested sections)."""
        return self.manifest.get("config", {})

    @property
    def data(self) -> dict:
        """The identity of the run's data (`cream.runs.run_folder.data_identity`)."""
        return self.manifest["data"]

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl, in order; a malformed line is a DataError naming file:line."""
        return read_jsonl(self.metrics_path)

    def models(self, m0: ModelRef, sft_enabled: bool) -> list[ModelRef]:
        """M0, M1, ... as the loop built them, up to the last one trained: M1 by SFT (M0's weights without it),
        M_{k+1} by iteration k's DPO. [M0] alone while SFT is unfinished."""
        if not sft_enabled:
            models = [m0, ModelRef("m1", m0.base)]
        elif is_complete(stage_folder(self.dir, 0, SFT)):
            models = [m0, self._trained(stage_folder(self.dir, 0, SFT))]
        else:
            return [m0]
        while is_complete(stage_folder(self.dir, len(models) - 1, DPO)):
            models.append(self._trained(stage_folder(self.dir, len(models) - 1, DPO)))
        return models

    def _trained(self, stage_dir: Path) -> ModelRef:
        return stored_model(self.dir, read_json(stage_dir / MANIFEST)["artifacts"]["model"]["model"])

    def eval_dir(self, k: int) -> Path:
        """The evaluate stage folder of model M_k."""
        return stage_folder(self.dir, 0, EVALUATE_M0) if k == 0 else stage_folder(self.dir, k - 1, EVALUATE)

    def evaluated(self, k: int) -> bool:
        """Whether M_k's evaluation completed."""
        return is_complete(self.eval_dir(k))

    def evaluation(self, k: int) -> Optional[Evaluation]:
        """M_k's eval.json and predictions.jsonl; None when either is missing."""
        folder = self.eval_dir(k)
        if not (folder / PREDICTIONS).is_file() or not (folder / EVAL_REPORT).is_file():
            return None
        return Evaluation(read_json(folder / EVAL_REPORT), read_jsonl(folder / PREDICTIONS))
