"""A model of the loop (M0, M1, ..., M_t) as a run stores it: a base folder plus, under LoRA, an adapter folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelRef:
    """One model of the loop: `base` weights, optionally with a LoRA `adapter` on top."""

    name: str
    base: str
    adapter: Optional[str] = None

    def as_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "adapter": self.adapter}
