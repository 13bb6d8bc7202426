"""The evaluate stage: benchmark scores of a model folder (optionally with a LoRA adapter) via lm-eval.

Two protocols (`eval.protocol`):
- `paper`: the CREAM protocol. Zero-shot, greedy, chat template; the question with lettered options
  and an instruction to think step by step and end with "Answer:" (`cream.tasks.utils.INSTRUCTION`);
  the answer is extracted with `cream.extract` and matched exactly. TruthfulQA is MC1 with its options
  shuffled (`cream.prompts`). Score: exact match.
- `harness`: lm-eval's standard task definitions. With a local data directory, equivalents over the
  same JSONL (log-likelihood multiple choice, score `acc`, `acc_norm` also reported; TruthfulQA mc1
  and mc2, score mc2; GSM8K zero-shot generation, score exact match). With no data directory
  (`data_dir=None`, the hub), lm-eval's own tasks.

Local tasks are rendered from the templates in `cream/tasks/` into `<out_dir>/lm_eval_tasks/`, one
YAML per task pointing at the absolute path of its split file, so the folder also works with
`lm_eval --include_path`. Results: `eval.json` (scores in percent, all lm-eval metrics, items and
seconds) and `predictions.jsonl` (one record per item) in `out_dir`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from pathlib import Path

import yaml

from cream.artifacts import read_jsonl, write_json, write_jsonl
from cream.config import EvalConfig, EvalProtocol
from cream.errors import ConfigError, CreamError, DataError

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
        process_docs = _Function(f"cream.tasks.utils.process_docs_{FOLDERS[task]}")
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


def check_data(task: str, tasks: list[LmTask], data_dir: Path, split: str) -> Path:
    """The split file of a benchmark, after checking every row has the fields its tasks read."""
    from cream.data import load_benchmark

    folder = FOLDERS[task]
    try:
        rows = load_benchmark(folder, split, data_dir)
    except DataError as e:
        raise DataError(f"eval task `{task}`: {e}") from None
    path = (Path(data_dir) / folder / f"{split}.jsonl").resolve()  # lm-eval needs an absolute path
    for i, row in enumerate(rows, start=1):
        missing = [f for t in tasks for f in t.fields if f not in row]
        if missing:
            raise DataError(f"{path}: row {i} (id {row.get('id')!r}) lacks field `{missing[0]}` (eval task `{task}`)")
    return path


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


def _load_lm(backend: str, model_dir: Path, adapter_dir: Path | None, dtype: str, batch_size: int,
             tensor_parallel_size: int):
    """lm-eval's model, loaded once for every task: HF (adapter via `peft`; generation on cream's decoder
    with backend torch) or vLLM (LoRA, tensor parallel)."""
    import torch
    from lm_eval.api.registry import get_model

    from cream.vllm_sampling import lora_rank_capacity, release_engine

    release_engine()  # a sampling engine of this process would hold the GPUs lm-eval's model needs
    args = {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "vllm":
        args["tensor_parallel_size"] = tensor_parallel_size
        if adapter_dir is not None:
            args |= {"lora_local_path": str(adapter_dir), "max_lora_rank": lora_rank_capacity(adapter_dir)}
        return get_model("vllm").create_from_arg_obj(args, {"batch_size": batch_size})
    if adapter_dir is not None:
        args["peft"] = str(adapter_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "torch":
        from cream.lm_eval_decoder import DecoderLM

        return DecoderLM.create_from_arg_obj(args, {"batch_size": batch_size, "device": device})
    return get_model("hf").create_from_arg_obj(args, {"batch_size": batch_size, "device": device})


def _prediction(task: str, lm_task: LmTask, sample: dict) -> dict:
    """One item's record: the response, the answer read from it, the target and whether it scored."""
    doc = sample["doc"]
    score = float(sample[lm_task.metric.split(",")[0]])
    if isinstance(sample["resps"][0][0], str):  # generation
        response, extracted, target = sample["resps"][0][0], sample["filtered_resps"][0], str(sample["target"])
    else:  # log-likelihood multiple choice: the model's pick is the most likely option
        lls = [r[0] for r in sample["filtered_resps"]]
        best = max(range(len(lls)), key=lls.__getitem__)
        response = sample["arguments"][best][1].strip()
        extracted, target = chr(ord("A") + best), chr(ord("A") + int(sample["target"]))
    return {
        "task": task,
        "lm_eval_task": lm_task.name,
        "id": str(doc.get("id", sample["doc_id"])),
        "question": doc.get("question", ""),
        "prompt": sample["arguments"][0][0],
        "response": response,
        "extracted": extracted,
        "target": target,
        "score": score,
        # mc2 scores the probability mass on the true options: a majority counts as correct.
        "correct": score >= 0.5,
    }


def evaluate_model(
    eval_cfg: EvalConfig,
    data_dir: Path | None,
    model_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, float]:
    """Score a model on `eval_cfg.tasks`: {task: score in percent, ..., "average": their mean}.

    `data_dir=None` reads lm-eval's hub tasks (harness protocol only). Writes `eval.json` and
    `predictions.jsonl` to `out_dir`.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    protocol = EvalProtocol(eval_cfg.protocol)
    if not eval_cfg.tasks:
        raise ConfigError(f"config key `eval.tasks` is empty; known tasks: {', '.join(KNOWN_TASKS)}")
    hub = data_dir is None
    plan = {task: lm_tasks(task, protocol, hub) for task in eval_cfg.tasks}
    out_dir = Path(out_dir)
    if hub:
        task_manager = TaskManager()
    else:
        tasks_dir = out_dir / "lm_eval_tasks"
        for task, tasks in plan.items():
            data_file = check_data(task, tasks, Path(data_dir), eval_cfg.split)
            for lm_task in tasks:
                render_task(lm_task, data_file, eval_cfg.split, tasks_dir)
        task_manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    if eval_cfg.limit is not None:
        print(f"eval.limit={eval_cfg.limit}: scoring {eval_cfg.limit} items per task (not the full split)")

    lm = _load_lm(eval_cfg.backend, model_dir, adapter_dir, dtype, eval_cfg.batch_size, eval_cfg.tensor_parallel_size)
    scores, metrics, predictions = {}, {}, []
    start = time.perf_counter()
    # One call for every task: requests of tasks with the same generation settings share batches.
    result = simple_evaluate(
        model=lm,
        tasks=[t.name for tasks in plan.values() for t in tasks],
        limit=eval_cfg.limit,
        task_manager=task_manager,
        apply_chat_template=protocol == EvalProtocol.paper,
        gen_kwargs={"max_gen_toks": eval_cfg.max_gen_toks},
        bootstrap_iters=0,  # no stderr resampling: slow on CPU for full splits, and unused
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = round(time.perf_counter() - start, 2)
    for task, tasks in plan.items():
        for lm_task in tasks:
            results = result["results"][lm_task.name]
            metrics[lm_task.name] = {k: v for k, v in results.items() if isinstance(v, (int, float))}
            metric_filter = lm_task.metric.split(",")[1]  # samples repeat once per filter of the task
            predictions += [_prediction(task, lm_task, s) for s in result["samples"][lm_task.name]
                            if s["filter"] == metric_filter]
            if lm_task.scored:
                scores[task] = 100.0 * float(results[lm_task.metric])
    scores["average"] = statistics.fmean(scores.values())
    del lm  # lm-eval's vLLM engine holds its GPUs until collected, and the next stage needs them
    gc.collect()

    write_jsonl(out_dir / "predictions.jsonl", predictions)
    write_json(
        out_dir / "eval.json",
        {
            "scores": scores,
            "protocol": protocol.value,
            "data": str(data_dir) if not hub else "hub",
            "split": eval_cfg.split if not hub else "lm-eval default",
            "limit": eval_cfg.limit,
            "max_gen_toks": eval_cfg.max_gen_toks,
            "backend": eval_cfg.backend,
            "model": str(model_dir),
            "adapter": str(adapter_dir) if adapter_dir else None,
            "seconds": seconds,
            "items": len(predictions),
            "metrics": metrics,
        },
    )
    return scores


def wrong_answers(out_dir: Path, k: int) -> list[dict]:
    """Up to `k` wrongly answered items from `out_dir/predictions.jsonl`, taken in turn from each task."""
    path = Path(out_dir) / "predictions.jsonl"
    if not path.is_file():
        return []
    by_task: dict[str, list[dict]] = {}
    for row in read_jsonl(path):
        if not row["correct"]:
            by_task.setdefault(row["lm_eval_task"], []).append(row)
    interleaved = chain.from_iterable(zip_longest(*by_task.values()))
    return [row for row in interleaved if row is not None][:k]


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
        from cream.config import DataSource, ModelConfig, PathsConfig
        from cream.data import resolve_data_dir
        from cream.models import resolve_model_dir

        eval_cfg = EvalConfig(
            protocol=EvalProtocol(args.protocol),
            tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            max_gen_toks=args.max_gen_toks,
            backend=args.backend,
            tensor_parallel_size=args.tensor_parallel_size,
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
