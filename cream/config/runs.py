"""What persists: where run folders go, how a run is named and resumed, and the W&B logger."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Optional

from cream.errors import require


class ResumeMode(StrEnum):
    auto = "auto"  # reuse the run folder of the same run_name when its configuration matches; refuse otherwise
    false = "false"  # always start a new folder (run_name gets a numeric suffix when taken)
    force = "force"  # reuse the folder even though the configuration differs (completed stages are kept)


class LoggerMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


def check_run_name(value: Any) -> str:
    """`run_name` as a plain folder name: the run folder must be `paths.runs/<experiment>/<run_name>`, not
    outside it (`../x`, `/abs`), nor the experiment folder itself (``, `.`)."""
    name = str(value)
    require(name not in ("", ".", "..") and "/" not in name and "\\" not in name, "run_name",
            f"must be a plain folder name (no '/' or '\\', not '', '.' or '..'), so the run stays in "
            f"paths.runs/<experiment>/; got {name!r}")
    return name


@dataclass
class PathsConfig:
    # Local data directory in the schema of SOURCES.md; null = ../shared/benchmarks beside the
    # repository when it exists, else the hub.
    data: Optional[str] = None
    runs: str = "runs"
    cache: str = "~/.cache/cream"  # where the embedded model is converted once to safetensors


@dataclass
class LoggerConfig:
    mode: LoggerMode = LoggerMode.offline  # offline: sync later with `wandb sync`; online needs a key
    project: str = "cream"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the experiment name
    name: Optional[str] = None  # null: <experiment>/<run_name>
    pairs_table_rows: int = 200
    init_timeout: float = 60.0  # seconds W&B may take to start before the run goes on without it
