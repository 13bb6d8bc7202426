"""`make bench`: measure each stage of the loop against the machine's bound and the straightforward way.

Prints a table and rewrites BENCHMARKS.md with it, the machine and the command. Timings are
measurements, never assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cream.artifacts import write_jsonl  # noqa: E402
from trl import DPOTrainer  # noqa: E402

from cream.config import DataConfig, DataSource, DPOConfig, LoraConfig, ModelConfig, SamplingConfig  # noqa: E402
from cream.data import load_prompts, resolve_data_dir  # noqa: E402
from cream.dpo import (  # noqa: E402
    CreamDPOTrainer,
    PreferenceCollatorWithConsistency,
    lora_adapter_config,
    pairs_dataset,
    training_args,
)
from cream.models import load_base_model, load_tokenizer, resolve_model_dir  # noqa: E402
from cream.reward import sequence_logprobs  # noqa: E402
from cream.sample import chat_prompt_ids, generate  # noqa: E402


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    seconds, _ = timed(lambda: a @ b, repeat=5)
    return 2 * n**3 / seconds / 1e9


def sampling_rate(model, tokenizer, prompt_ids, dtype: torch.dtype, cfg: SamplingConfig) -> float:
    model.to(dtype)
    with tempfile.TemporaryDirectory() as chunks:
        seconds, samples = timed(lambda: generate(model, tokenizer, prompt_ids, cfg, 0, Path(chunks), "bench sample"))
    model.to(torch.float32)
    useful = sum(len(s["ids"]) for row in samples for s in row)  # tokens up to each end of turn
    return useful / seconds, samples


def scoring(model, sequences, pad_id, batch_size: int, sort: bool) -> tuple[float, list[float]]:
    if sort:
        return timed(lambda: sequence_logprobs(model, sequences, batch_size, pad_id, "bench score"))
    # unsorted batches, as the published code: score each batch of consecutive sequences on its own
    def unsorted():
        out = []
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i : i + batch_size]
            # one call per batch keeps the batch's own order: no length sorting across the set
            out += sequence_logprobs(model, batch, len(batch), pad_id, "bench score unsorted")
        return out
    return timed(unsorted)


def dpo_rate(model_dir: str, model_cfg: ModelConfig, pairs_path: Path, precomputed: bool) -> float:
    """Pairs/s of our trainer (reference log-probs from the reward stage) or of stock TRL computing them."""
    tokenizer = load_tokenizer(model_dir)
    cfg = DPOConfig(batch_size=4, lora=LoraConfig())
    with tempfile.TemporaryDirectory() as out:
        args = training_args(cfg, Path(out), 0, 16)
        model = load_base_model(model_dir, model_cfg)
        dataset = pairs_dataset(pairs_path)
        if precomputed:
            trainer = CreamDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                      data_collator=PreferenceCollatorWithConsistency(pad_token_id=tokenizer.pad_token_id),
                                      peft_config=lora_adapter_config(cfg))
        else:
            args.precompute_ref_log_probs = False  # the reference forward runs at every step
            stock = dataset.remove_columns(["ref_chosen_logps", "ref_rejected_logps", "consistency"])
            trainer = StockDPOTrainer(model=model, args=args, train_dataset=stock, processing_class=tokenizer,
                                peft_config=lora_adapter_config(cfg))
        seconds, _ = timed(trainer.train)
    return len(dataset) / seconds


class StockDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer on the same pre-tokenized pairs: only its tokenization is skipped."""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--run", help="run folder of the default experiment to report (default: the newest)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()

    torch.manual_seed(0)
    model_cfg = ModelConfig()
    model_dir = resolve_model_dir(model_cfg, Path("~/.cache/cream").expanduser())
    tokenizer = load_tokenizer(model_dir)
    model = load_base_model(model_dir, model_cfg)  # loaded once: parameter count, sampling and scoring
    params = sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, str, str]] = []

    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    bound32, bound16 = fp32 * 1e9 / (2 * params), bf16 * 1e9 / (2 * params)
    rows += [("matmul 2048², fp32", f"{fp32:.0f} GFLOP/s", f"token bound {bound32:.0f} tok/s"),
             ("matmul 2048², bf16", f"{bf16:.0f} GFLOP/s", f"token bound {bound16:.0f} tok/s")]

    data_dir = resolve_data_dir(None, DataSource.auto) or REPO / "tests" / "fixtures" / "data"
    prompts = load_prompts(DataConfig(), data_dir, 0)[: args.prompts]
    prompt_ids = [chat_prompt_ids(tokenizer, p["prompt"]) for p in prompts]
    cfg = SamplingConfig(n=args.n, max_new_tokens=args.new_tokens, batch_size=args.prompts * args.n)
    rate32, samples = sampling_rate(model, tokenizer, prompt_ids, torch.float32, cfg)
    rate16, _ = sampling_rate(model, tokenizer, prompt_ids, torch.bfloat16, cfg)
    rows += [(f"sample HF fp32 ({args.prompts}x{args.n}, {args.new_tokens} tok)", f"{rate32:.1f} tok/s",
              f"{rate32 / bound16:.1%} of bf16 bound"),
             (f"sample HF bf16", f"{rate16:.1f} tok/s", f"{rate16 / bound16:.1%} of bf16 bound")]

    sequences = [(pid, s["ids"]) for pid, row in zip(prompt_ids, samples) for s in row]
    random.Random(0).shuffle(sequences)
    tokens = sum(len(p) + len(r) for p, r in sequences)
    t_sorted, lp32 = scoring(model, sequences, tokenizer.pad_token_id, 8, sort=True)
    t_unsorted, _ = scoring(model, sequences, tokenizer.pad_token_id, 8, sort=False)
    model.to(torch.bfloat16)
    _, lp16 = scoring(model, sequences, tokenizer.pad_token_id, 8, sort=True)
    model.to(torch.float32)
    diff = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(lp32, lp16))
    rows += [("score, length-sorted batches (fp32)", f"{len(sequences) / t_sorted:.1f} seq/s",
              f"{tokens / t_sorted:.0f} tok/s; {t_unsorted / t_sorted:.2f}x vs unsorted"),
             ("score, unsorted batches (straightforward)", f"{len(sequences) / t_unsorted:.1f} seq/s", ""),
             ("bf16 vs fp32 summed log-probs", f"max rel. diff {diff:.2%}", "scoring stays fp32")]

    # Three roles: one base with adapters (ours) vs a full model loaded per role (published code).
    t_load, _ = timed(lambda: load_base_model(model_dir, model_cfg))
    rows += [("load one model copy", f"{t_load:.2f} s", f"{params * 4 / 2**20:.0f} MB fp32 each; "
              "3 roles = 3 copies the straightforward way, 1 here")]

    pairs = []
    for pid, row in list(zip(prompt_ids, samples))[:16]:
        good, bad = row[0]["ids"], row[-1]["ids"]
        ref = sequence_logprobs(model, [(pid, good), (pid, bad)], 2, tokenizer.pad_token_id, "ref")
        pairs.append({"prompt_ids": pid, "chosen_ids": good, "rejected_ids": bad,
                      "ref_chosen_logps": ref[0], "ref_rejected_logps": ref[1], "consistency": 0.8})
    del model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        write_jsonl(path, pairs)
        ours, stock = dpo_rate(model_dir, model_cfg, path, True), dpo_rate(model_dir, model_cfg, path, False)
    rows += [("DPO, reference log-probs reused (LoRA)", f"{ours:.2f} pairs/s", f"{ours / stock:.2f}x vs recomputed"),
             ("DPO, reference recomputed every step (stock TRL)", f"{stock:.2f} pairs/s", "")]

    run = Path(args.run) if args.run else max((REPO / "runs" / "cream_smollm").glob("*/metrics.jsonl"),
                                                 key=os.path.getmtime, default=None)
    if run is not None:
        run = run if run.name == "metrics.jsonl" else run / "metrics.jsonl"
        records = [json.loads(line) for line in run.read_text().splitlines()]
        per_stage: dict[str, float] = {}
        for r in records:
            for k, v in r.items():
                if k == f"time/{r['stage']}":
                    per_stage[r["stage"]] = per_stage.get(r["stage"], 0.0) + v
        total = sum(per_stage.values())
        peak = max(r.get("memory/peak_rss_mb", 0) for r in records)
        rows += [(f"default experiment: {stage}", f"{s:.0f} s", "all iterations") for stage, s in per_stage.items()]
        rows += [("default experiment: total", f"{total / 60:.1f} min", f"from {run.parent.relative_to(REPO)}"),
                 ("default experiment: peak RSS", f"{peak / 1024:.1f} GB", f"one fp32 copy = {params * 4 / 2**30:.2f} GB")]

    table = ["| measurement | value | note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(table)
    print(text)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    peak_bench = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(
        "# Benchmarks\n\n"
        f"Machine: {machine}. Model: SmolLM2-135M-Instruct ({params / 1e6:.0f}M parameters). "
        f"Bench peak RSS {peak_bench / 1024:.1f} GB.\n\n"
        f"Reproduce: `make bench` (or `.venv/bin/python bench/bench.py`); the default-experiment rows "
        f"read the newest `runs/cream_smollm/*/metrics.jsonl` (`make run` first).\n\n"
        f"{text}\n"
    )


if __name__ == "__main__":
    main()
