"""Where prompts come from: the benchmarks whose questions are sampled, and the shard of each iteration."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cream.errors import require


class DataSource(StrEnum):
    auto = "auto"  # the local data directory when it exists, else the hub
    local = "local"
    hub = "hub"


@dataclass
class DataConfig:
    source: DataSource = DataSource.auto
    prompt_sets: list[str] = field(
        default_factory=lambda: ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k"]
    )
    prompt_split: str = "train"
    sft_split: str = "train"
    shard_size: int = 16  # prompts per iteration

    def __post_init__(self) -> None:
        require(self.shard_size > 0, "data.shard_size", f"must be > 0, got {self.shard_size}")
        require(len(self.prompt_sets) > 0, "data.prompt_sets", "must name at least one benchmark")
