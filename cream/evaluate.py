"""`python -m cream.evaluate`: benchmark scores of any model folder, with or without a LoRA adapter.

The same evaluation as the loop's evaluate stage (cream/evaluation.py), outside any run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cream.config import EvalConfig, ModelConfig, PathsConfig
from cream.config.data import DataSource
from cream.config.eval import EvalProtocol
from cream.errors import CreamError
from cream.eval.task_files import KNOWN_TASKS


def main(argv: list[str] | None = None) -> None:
    """`python -m cream.evaluate`: score any model folder, with or without an adapter."""
    defaults = EvalConfig()
    parser = argparse.ArgumentParser(prog="python -m cream.evaluate", description=main.__doc__)
    parser.add_argument("--model", help="model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", help="LoRA adapter folder, evaluated without merging")
    parser.add_argument("--protocol", choices=[p.value for p in EvalProtocol], default=defaults.protocol.value)
    parser.add_argument("--tasks", default=",".join(defaults.tasks), help=f"comma-separated, from {','.join(KNOWN_TASKS)}")
    parser.add_argument("--split", default=defaults.split)
    parser.add_argument("--limit", type=int, default=defaults.limit, help="items per task (default: the full split)")
    parser.add_argument("--data", help="data directory (default: ../shared/benchmarks beside the repository)")
    parser.add_argument("--hub", action="store_true", help="harness protocol: lm-eval's own tasks from the hub")
    parser.add_argument("--out", help="output folder (default: runs/evaluate/<model>-<protocol>)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-gen-toks", type=int, default=defaults.max_gen_toks)
    parser.add_argument("--backend", choices=["torch", "hf", "vllm"], default=defaults.backend)
    parser.add_argument("--tensor-parallel-size", type=int, default=defaults.tensor_parallel_size,
                        help="GPUs of the vLLM engine (--backend vllm)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from cream.data.load import resolve_data_dir
        from cream.eval.harness import evaluate_model
        from cream.engine.models import resolve_model_dir

        eval_cfg = EvalConfig(
            protocol=EvalProtocol(args.protocol), tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
            **{key: getattr(args, key) for key in ("split", "limit", "batch_size", "max_gen_toks", "backend",
                                                   "tensor_parallel_size")},
        )
        data_dir = resolve_data_dir(args.data, DataSource.hub if args.hub else DataSource.local)
        model = args.model or resolve_model_dir(ModelConfig(), Path(PathsConfig().cache).expanduser())
        out = Path(args.out or f"runs/evaluate/{Path(args.adapter or model).name}-{args.protocol}")
        scores = evaluate_model(eval_cfg, data_dir, Path(model), Path(args.adapter) if args.adapter else None,
                                out, dtype=args.dtype, seed=args.seed)
    except CreamError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for task, score in scores.items():
        print(f"{task:>14}  {score:6.2f}")
    print(f"eval.json and predictions.jsonl in {out}")


if __name__ == "__main__":
    main()
