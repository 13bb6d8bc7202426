"""One W&B run per experiment run, plus `metrics.jsonl` in the run folder (the record analysis reads).

W&B is optional at run time: if it fails to start or to log, the run continues with local files
only, after one warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from cream.runs.artifacts import json_line
from cream.config import Config, to_plain_dict
from cream.config.runs import LoggerMode

METRICS = "metrics.jsonl"


class RunLogger:
    def __init__(self, cfg: Config, run_dir: Path, run_id: Optional[str] = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / METRICS
        self._wandb = None
        if cfg.logger.mode == LoggerMode.disabled:
            return
        try:
            import wandb

            self._wandb = wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.logger.group or cfg.experiment_name,
                name=cfg.logger.name or f"{cfg.experiment_name}/{cfg.run_name}",
                id=run_id,
                resume="allow" if run_id else None,
                mode=cfg.logger.mode.value,
                dir=str(self.run_dir),
                config=to_plain_dict(cfg),
                reinit="finish_previous",
                settings=wandb.Settings(init_timeout=cfg.logger.init_timeout),
            )
            self._wandb.define_metric("iteration")
            self._wandb.define_metric("*", step_metric="iteration")
        except Exception as e:  # noqa: BLE001 - any W&B failure degrades to local logging
            self._disable(e)

    @property
    def run_id(self) -> Optional[str]:
        return self._wandb.id if self._wandb is not None else None

    def _disable(self, error: Exception) -> None:
        warnings.warn(f"W&B disabled for this run, logging to {self.metrics_path} only: {error}", stacklevel=3)
        self._wandb = None

    def _call(self, fn: str, *args, **kwargs) -> None:
        if self._wandb is None:
            return
        try:
            getattr(self._wandb, fn)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            self._disable(e)

    def log(self, iteration: int, stage: str, metrics: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl and log the same scalars to W&B against `iteration`."""
        record = {"iteration": iteration, "stage": stage, **metrics}
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json_line(record))
        self._call("log", {"iteration": iteration, **metrics})

    def histogram(self, iteration: int, key: str, values: Sequence[float]) -> None:
        if self._wandb is None or not values:
            return
        import wandb

        self._call("log", {"iteration": iteration, key: wandb.Histogram(list(values))})

    def table(self, iteration: int, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self._wandb is None:
            return
        import wandb

        self._call("log", {"iteration": iteration, key: wandb.Table(columns=columns, data=rows)})

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb is not None:
            try:
                self._wandb.summary.update(values)
            except Exception as e:  # noqa: BLE001
                self._disable(e)

    def finish(self) -> None:
        self._call("finish")
