"""Benchmark scores of a model folder (optionally with a LoRA adapter) via lm-eval.

Two protocols (`eval.protocol`):
- `paper`: the CREAM protocol. Zero-shot, greedy, chat template; the question with lettered options
  and an instruction to think step by step and end with "Answer:" (`cream.eval.tasks.utils.INSTRUCTION`);
  the answer is extracted with `cream.eval.extract` and matched exactly. TruthfulQA is MC1 with its options
  shuffled (`cream.config.prompts`). Score: exact match.
- `harness`: lm-eval's standard task definitions. With a local data directory, equivalents over the
  same JSONL (log-likelihood multiple choice, score `acc`, `acc_norm` also reported; TruthfulQA mc1
  and mc2, score mc2; GSM8K zero-shot generation, score exact match). With no data directory
  (`data_dir=None`, the hub), lm-eval's own tasks.

Local tasks (cream/lm_eval_tasks.py) are rendered into `<out_dir>/lm_eval_tasks/`. Results: `eval.json` (scores in percent,
their standard errors, all lm-eval metrics, items and seconds) and `predictions.jsonl` (one record per item) in `out_dir`.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from itertools import chain, zip_longest
from pathlib import Path

import torch

from cream.runs.artifacts import read_jsonl, write_json, write_jsonl
from cream.config import EvalConfig
from cream.config.eval import EvalProtocol
from cream.errors import ConfigError, ModelError
from cream.eval.task_files import KNOWN_TASKS, LmTask, check_data, lm_tasks, render_task, snapshot
from cream.engine.models import require_safetensors, resolve_device
from cream.eval.stats import average_stderr, score_stderr


def merge_adapter(model_dir: Path, adapter_dir: Path, out: Path) -> None:
    """The base with the LoRA adapter merged into its weights, saved with its tokenizer as a model folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def _load_lm(backend: str, model_dir: Path, adapter_dir: Path | None, dtype: str, batch_size: int,
             tensor_parallel_size: int, device: str, out_dir: Path):
    """lm-eval's model, loaded once for every task: HF (adapter via `peft`; generation on cream's decoder
    with backend torch) or vLLM (LoRA, tensor parallel)."""
    from lm_eval.api.registry import get_model

    from cream.engine.vllm_sampling import lora_rank_capacity, platform_args, release_engine, require_cpu_head_size

    release_engine()  # a sampling engine of this process would hold the GPUs lm-eval's model needs
    # Safetensors only, as everywhere in cream: pickle weights can run code when loaded.
    require_safetensors(model_dir)
    if adapter_dir is not None:
        require_safetensors(adapter_dir, "adapter folder")
    args = {"pretrained": str(model_dir), "dtype": dtype}
    if backend == "vllm":
        from vllm.platforms import current_platform

        require_cpu_head_size(model_dir, "eval.backend")
        args |= {"tensor_parallel_size": tensor_parallel_size, "load_format": "safetensors", **platform_args()}
        if adapter_dir is not None and current_platform.is_cpu():
            # vLLM 0.32's CPU LoRA kernel dies on prompt log-probs once a batch holds two requests (an einsum
            # shape in punica_cpu): its engine loads the merged weights instead, from a folder deleted once loaded.
            with tempfile.TemporaryDirectory(prefix="merged-", dir=out_dir) as merged:
                merge_adapter(model_dir, adapter_dir, Path(merged))
                return get_model("vllm").create_from_arg_obj({**args, "pretrained": merged}, {"batch_size": batch_size})
        if adapter_dir is not None:
            args |= {"lora_local_path": str(adapter_dir), "max_lora_rank": lora_rank_capacity(adapter_dir)}
        model, extra = get_model("vllm"), {"batch_size": batch_size}
    else:
        args["use_safetensors"] = True  # passed on to `from_pretrained` (a hub id is not checked above)
        if adapter_dir is not None:
            args["peft"] = str(adapter_dir)
        if backend == "torch":
            from cream.eval.lm_eval_decoder import DecoderLM

            model = DecoderLM
        else:
            model = get_model("hf")
        extra = {"batch_size": batch_size, "device": device}
    try:
        return model.create_from_arg_obj(args, extra)
    except OSError as e:  # no weights, no config, an unreachable hub id
        raise ModelError(f"cannot load model {model_dir}: {' '.join(str(e).split())}") from None


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
    record = {
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
    if not isinstance(sample["resps"][0][0], str):
        record["loglikelihoods"] = [float(r[0]) for r in sample["filtered_resps"]]  # per option, in order
    return record


def evaluate_model(
    eval_cfg: EvalConfig,
    data_dir: Path | None,
    model_dir: Path,
    adapter_dir: Path | None,
    out_dir: Path,
    dtype: str = "float32",
    seed: int = 0,
    device: str = "auto",
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
    if hub and eval_cfg.limits:
        raise ConfigError("config key `eval.limits` needs local data (the hub's split sizes are unknown before "
                          "loading); use `eval.limit` with the hub")
    sizes: dict[str, int] = {}  # rows of each benchmark's split
    scored_files: dict[str, str] = {}  # the sha256 of each benchmark's split file as scored
    if hub:
        task_manager = TaskManager()
    else:
        tasks_dir = out_dir / "lm_eval_tasks"
        for task, tasks in plan.items():
            data_file, sizes[task] = check_data(task, tasks, Path(data_dir), eval_cfg.split)
            data_file, scored_files[task] = snapshot(data_file, tasks_dir / "data")  # what is scored is what is hashed
            for lm_task in tasks:
                render_task(lm_task, data_file, eval_cfg.split, tasks_dir)
        task_manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    # Per-task item counts ride lm-eval's `samples` (the first items of each split, the same for every
    # model, so scores pair item by item); otherwise one `limit` for every task.
    samples = None
    if eval_cfg.limits:
        counts = {task: min(eval_cfg.limits.get(task, sizes[task]), eval_cfg.limit or sizes[task], sizes[task])
                  for task in plan}
        samples = {t.name: list(range(counts[task])) for task, tasks in plan.items() for t in tasks}
        print("eval.limits: scoring " + ", ".join(f"{task} {n} of {sizes[task]}" for task, n in counts.items()))
    elif eval_cfg.limit is not None:
        print(f"eval.limit={eval_cfg.limit}: scoring {eval_cfg.limit} items per task (not the full split)")

    lm = _load_lm(eval_cfg.backend, model_dir, adapter_dir, dtype, eval_cfg.batch_size, eval_cfg.tensor_parallel_size,
                  resolve_device(device), out_dir)
    scores, stderr, metrics, predictions = {}, {}, {}, []
    start = time.perf_counter()
    # One call for every task: requests of tasks with the same generation settings share batches.
    result = simple_evaluate(
        model=lm,
        tasks=[t.name for tasks in plan.values() for t in tasks],
        limit=None if samples else eval_cfg.limit,
        samples=samples,
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
            task_predictions = [_prediction(task, lm_task, s) for s in result["samples"][lm_task.name]
                                if s["filter"] == metric_filter]
            predictions += task_predictions
            if lm_task.scored:
                scores[task] = 100.0 * float(results[lm_task.metric])
                # lm-eval's own stderr needs bootstrap_iters > 0: the mean's standard error from the items
                stderr[task] = 100.0 * score_stderr([p["score"] for p in task_predictions])
    scores["average"] = statistics.fmean(scores.values())
    stderr["average"] = average_stderr([stderr[task] for task in plan])
    del lm  # lm-eval's vLLM engine holds its GPUs until collected, and the next stage needs them
    gc.collect()

    write_jsonl(out_dir / "predictions.jsonl", predictions)
    write_json(
        out_dir / "eval.json",
        {
            "scores": scores,
            "stderr": stderr,  # standard error of each score (percent points), cream.eval.stats.score_stderr
            "protocol": protocol.value,
            "data": str(data_dir) if not hub else "hub",
            "split": eval_cfg.split if not hub else "lm-eval default",
            "data_sha256": scored_files,  # of each split file as scored (lm-eval read a snapshot of it)
            "limit": eval_cfg.limit,
            "limits": dict(eval_cfg.limits),
            "dtype": dtype,
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
