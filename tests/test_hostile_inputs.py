"""Hostile inputs and interruptions (issue 11): pickle weights, a save cut short, a hub model with no
network, an unusable runs folder, Ctrl-C, unknown keys. Each fails with one `error: ...` line and the
README's exit code, never a traceback."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cream.config import EvalConfig, ModelConfig
from cream.config.engine import ModelSource
from cream.config.training import TrainingConfig
from cream.errors import CreamError, ModelError
from tests.conftest import FIXTURE_DATA, REPO
from tests.test_integration import cli

SMOKE = ("experiment=smoke", f"paths.data={FIXTURE_DATA}", "eval.enabled=false", "logger.mode=disabled")


def one_error_line(stderr: str) -> str:
    """The run's single `error:` line, with no traceback anywhere (progress bars may surround it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in re.split(r"[\r\n]+", stderr) if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# --- 1. safetensors only, evaluation included ---------------------------------------------------

@pytest.fixture(scope="module")
def pickle_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its weights as `pytorch_model.bin` only (transformers 5 always writes safetensors)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("pickle_model")
    for f in tiny_model_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != ".complete":  # config and tokenizer files
            shutil.copy(f, folder)
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def pickle_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on the tiny model with its weights as `adapter_model.bin` only."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("pickle_adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(folder)
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("backend", ["torch", "hf"])
def test_evaluation_refuses_a_model_folder_with_pickle_weights(pickle_model_dir, tmp_path, backend):
    from cream.eval.harness import evaluate_model

    eval_cfg = EvalConfig(tasks=["arc_easy"], limit=1, max_gen_toks=4, backend=backend)
    with pytest.raises(ModelError, match="safetensors") as raised:
        evaluate_model(eval_cfg, FIXTURE_DATA, pickle_model_dir, None, tmp_path / "out")
    assert str(pickle_model_dir) in str(raised.value) and "pytorch_model.bin" in str(raised.value)
    assert isinstance(raised.value, CreamError)


def test_evaluation_and_the_loop_refuse_an_adapter_with_pickle_weights(tiny_model_dir, pickle_adapter_dir, tmp_path):
    from cream.eval.harness import evaluate_model
    from cream.training.finetune import load_trainable
    from cream.engine.model_pool import ModelPool
    from cream.runs.model_ref import ModelRef

    with pytest.raises(ModelError, match="safetensors") as raised:
        evaluate_model(EvalConfig(tasks=["arc_easy"], limit=1, max_gen_toks=4), FIXTURE_DATA, tiny_model_dir,
                       pickle_adapter_dir, tmp_path / "out")
    assert str(pickle_adapter_dir) in str(raised.value)
    model_cfg = ModelConfig(name="tiny", source=ModelSource.tiny)
    ref = ModelRef("m1", str(tiny_model_dir), str(pickle_adapter_dir))
    with pytest.raises(ModelError, match="safetensors"):
        with ModelPool(model_cfg).use(ref):
            pass
    with pytest.raises(ModelError, match="safetensors"):
        load_trainable(ref, model_cfg, TrainingConfig())


def test_a_local_model_path_with_pickle_weights_is_refused_before_any_stage(pickle_model_dir, tmp_path):
    from cream.engine.models import resolve_model_dir

    cfg = ModelConfig(name="local", source=ModelSource.hub, path=str(pickle_model_dir))
    with pytest.raises(ModelError, match="safetensors"):
        resolve_model_dir(cfg, tmp_path)


def test_evaluate_cli_refuses_pickle_weights_in_one_line(pickle_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cream.evaluate", "--model", str(pickle_model_dir), "--tasks", "arc_easy",
         "--limit", "1", "--max-gen-toks", "4", "--data", str(FIXTURE_DATA), "--out", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert str(pickle_model_dir) in line and "safetensors" in line
    assert not (tmp_path / "out" / "eval.json").exists()


# --- 2. the next model is saved atomically ------------------------------------------------------

@pytest.fixture()
def trainer(tiny_model_dir):
    """What `save_policy` uses of a trainer, in one process: a LoRA policy on the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    accelerator = SimpleNamespace(is_main_process=True, get_state_dict=lambda m: m.state_dict(),
                                  unwrap_model=lambda m: m, wait_for_everyone=lambda: None)
    return SimpleNamespace(accelerator=accelerator, model=model, model_wrapped=model)


def test_save_policy_replaces_a_partial_folder_and_leaves_no_temporary_one(trainer, tmp_path):
    from safetensors import safe_open

    from cream.training.finetune import save_policy

    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"cut short")  # a save killed earlier
    (out / "stale.bin").write_bytes(b"x")
    save_policy(trainer, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary sibling left
    assert (out / "adapter_config.json").is_file() and not (out / "stale.bin").exists()
    with safe_open(out / "adapter_model.safetensors", framework="pt") as weights:
        assert any("lora_A" in k for k in weights.keys())


def test_a_save_cut_short_leaves_no_adapter_folder(trainer, tmp_path):
    from cream.training.finetune import save_policy

    real_save = trainer.model.save_pretrained

    def killed_midway(folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "adapter_config.json").write_text("{}")
        raise KeyboardInterrupt  # the process dies after the config, before the weights

    trainer.model.save_pretrained = killed_midway
    out = tmp_path / "adapter"
    with pytest.raises(KeyboardInterrupt):
        save_policy(trainer, out)
    assert not out.exists()  # nothing under the final name looks like an adapter
    trainer.model.save_pretrained = real_save
    save_policy(trainer, out)  # the next attempt clears the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (out / "adapter_model.safetensors").is_file()


def test_save_policy_writes_a_full_model_with_its_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from cream.training.finetune import save_policy
    from cream.engine.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    accelerator = SimpleNamespace(is_main_process=True, get_state_dict=lambda m: m.state_dict(),
                                  unwrap_model=lambda m: m, wait_for_everyone=lambda: None)
    out = tmp_path / "model"
    save_policy(SimpleNamespace(accelerator=accelerator, model=model, model_wrapped=model), out,
                tokenizer=load_tokenizer(str(tiny_model_dir)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}


# --- 3. one line where a traceback was ----------------------------------------------------------

@pytest.mark.parametrize("overrides", [("model=llama3_8b",), ("model.source=hub", "model.path=some/unknown-model")])
def test_a_hub_model_with_no_network_fails_in_one_line_naming_model_path(tmp_path, overrides):
    start = time.monotonic()
    result = cli(*SMOKE, f"paths.runs={tmp_path / 'runs'}", "run_name=hub", *overrides,
                 env_extra={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub_cache")})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model.path" in one_error_line(result.stderr)
    assert not (tmp_path / "runs" / "smoke" / "hub" / "iter_0").exists()  # before any stage
    assert time.monotonic() - start < 300


def test_runs_path_that_is_a_file_fails_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    result = cli(*SMOKE, f"paths.runs={runs}")
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert "paths.runs" in line and str(runs) in line


def test_read_only_runs_folder_fails_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        if os.access(runs, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        result = cli(*SMOKE, f"paths.runs={runs}")
    finally:
        runs.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result.stderr)
    assert str(runs) in line and "Permission denied" in line


def test_a_file_error_during_the_run_fails_in_one_line(tmp_path):
    """An OSError inside the run (here: run.json is a folder) is reported as `error: <path>: <reason>`."""
    run_dir = tmp_path / "runs" / "smoke" / "oserror"
    (run_dir / "run.json").mkdir(parents=True)
    result = cli(*SMOKE, f"paths.runs={tmp_path / 'runs'}", "run_name=oserror")
    assert result.returncode == 2, result.stderr[-3000:]
    assert str(run_dir) in one_error_line(result.stderr)


def test_ctrl_c_stops_the_run_in_one_line_telling_how_to_resume(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *SMOKE, f"paths.runs={tmp_path}", "run_name=ctrlc"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background shell may have ignored it
    stage_dir = tmp_path / "smoke" / "ctrlc" / "iter_0" / "sft"
    deadline = time.monotonic() + 300
    while not stage_dir.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # inside SFT
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    line = one_error_line(stderr)
    assert "interrupted" in line and "run_name=ctrlc" in line and "resume" in line


@pytest.mark.parametrize("override, key", [("foo=1", "foo"), ("sampling.foo=1", "sampling.foo"),
                                           ("model=gpt5", "gpt5"), ("seed=abc", "seed")])
def test_unknown_keys_and_options_exit_2_with_hydras_message(tmp_path, override, key):
    result = cli(*SMOKE, f"paths.runs={tmp_path}", override)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and key in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written
