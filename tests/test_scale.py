"""Scaling beyond one machine: the Llama presets' GPU settings compose and validate, the shipped
accelerate configs parse, vLLM's absence is reported naming the key, and training under a real
`accelerate launch` (one CPU process here) writes what in-process training writes."""

import contextlib
import importlib.util
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from safetensors.torch import load_file

from cream.config import DPOConfig, ModelConfig, SamplingConfig, SFTConfig, load_config
from cream.config.engine import ModelSource
from cream.config.training import LoraConfig
from cream.data.load import load_sft_examples
from cream.errors import ConfigError, StageError
from cream.config.training import ACCELERATE_CONFIGS
from cream.training.launch import REQUEST, RESULT
from cream.engine.models import load_base_model, load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.runs.rows import write_rows
from cream.training.sft_trainer import sft
from cream.training.dpo_trainer import train, train_in_process
from cream.engine.vllm_sampling import generate_vllm, lora_rank_capacity
from tests.test_dpo import _pairs

CONF = Path(__file__).resolve().parents[1] / "conf"
LLAMA = {  # preset -> (model path, shipped accelerate config)
    "cream_llama": ("meta-llama/Meta-Llama-3-8B-Instruct", "deepspeed_zero3"),
    "srlm_llama": ("meta-llama/Meta-Llama-3-8B-Instruct", "deepspeed_zero3"),
    "oracle_llama": ("meta-llama/Meta-Llama-3-8B-Instruct", "deepspeed_zero3"),
    "cream_llama2": ("meta-llama/Llama-2-7b-chat-hf", "fsdp"),
}
# One CPU process, no distribution: what `accelerate launch --cpu --num_processes 1` runs.
CPU_LAUNCH = "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\nmixed_precision: 'no'\n"


def _load(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.experiment}
    return load_config(cfg)


@pytest.mark.parametrize("experiment", sorted(LLAMA))
def test_llama_presets_sample_on_vllm_and_train_under_accelerate(experiment):
    cfg = _load([f"experiment={experiment}"])
    path, launch = LLAMA[experiment]
    assert cfg.model.path == path
    assert (cfg.sampling.backend.value, cfg.sampling.tensor_parallel_size, cfg.sampling.dtype) == ("vllm", 8, "auto")  # bf16 on a GPU that has it
    assert (cfg.eval.backend, cfg.eval.tensor_parallel_size) == ("vllm", 8)
    assert (cfg.dpo.accelerate_config, cfg.dpo.num_processes, cfg.dpo.lora, cfg.dpo.bf16) == (launch, 8, None, True)
    assert cfg.dpo.batch_size * cfg.dpo.grad_accum * cfg.dpo.num_processes == 16  # the paper's global batch
    assert (cfg.sft.accelerate_config, cfg.sft.num_processes, cfg.sft.lora, cfg.sft.bf16) == (launch, 8, None, True)


def test_cpu_presets_train_in_process():
    cfg = _load(["experiment=cream_smollm"])
    assert cfg.dpo.accelerate_config is None and cfg.dpo.num_processes is None
    assert cfg.sampling.backend.value == "torch" and cfg.eval.backend == "torch"  # cream's decoder on CPUs


GPU_CONFIGS = sorted(p for p in ACCELERATE_CONFIGS.glob("*.yaml") if not p.stem.startswith("cpu_"))


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.stem)
def test_shipped_accelerate_configs_parse_with_accelerates_loader(path):
    config = load_config_from_file(str(path))  # raises on unknown keys or an invalid distributed_type
    assert config.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    assert config.mixed_precision == "bf16" and config.num_processes == 8 and not config.use_cpu
    if config.distributed_type == DistributedType.DEEPSPEED:
        # ZeRO-3, and the full 16-bit weights gathered at the final save (else get_state_dict refuses)
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
    else:
        assert config.fsdp_config["fsdp_version"] == 2


def test_the_shipped_configs_exist():
    assert {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")} == {"deepspeed_zero3", "fsdp", "cpu_ddp"}
    config = load_config_from_file(str(ACCELERATE_CONFIGS / "cpu_ddp.yaml"))
    assert (config.distributed_type, config.use_cpu, config.num_processes) == (DistributedType.MULTI_GPU, True, 2)


@pytest.mark.parametrize("config, processes, message", [
    ("fsdp", 2, "replaces by plain DDP on the CPU; use dpo.accelerate_config=cpu_ddp"),
    ("multi_cpu", 2, "independent processes of world size 1"),
    ("cpu_ddp", 2, None),
    ("multi_cpu", 1, None),  # one process: nothing to synchronise
])
def test_several_cpu_processes_run_only_as_cpu_ddp(tmp_path, config, processes, message):
    from cream.preflight import check_backends

    if config == "multi_cpu":
        config = tmp_path / "multi_cpu.yaml"
        config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\n"
                          "use_cpu: true\nmixed_precision: 'no'\n")
    cfg = _load(["experiment=smoke", "device=cpu", f"dpo.accelerate_config={config}", f"dpo.num_processes={processes}"])
    if message is None:
        check_backends(cfg)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_backends(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("dpo.accelerate_config=zero9", "not found"),
        ("dpo.num_processes=0", "must be >= 1"),
        ("dpo.num_processes=2", "needs dpo.accelerate_config"),
        ("sft.accelerate_config=zero9", "not found"),
        ("sft.num_processes=2", "needs sft.accelerate_config"),
        ("eval.tensor_parallel_size=0", "must be >= 1"),
        ("eval.backend=tgi", "expected torch, hf or vllm"),
    ],
)
def test_bad_scale_settings_name_the_key(override, message):
    key = re.escape(override.split("=")[0])
    with pytest.raises(ConfigError, match=f"`{key}`.*{message}"):
        _load([override])


def test_an_invalid_accelerate_config_file_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: SIDEWAYS\nnum_processes: 2\n")
    with pytest.raises(ConfigError, match=r"`dpo\.accelerate_config`.*not a valid accelerate config"):
        DPOConfig(accelerate_config=str(bad))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_generate_vllm_without_vllm_names_the_key_and_the_extra(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"`sampling\.backend`.*pip install -e \.\[gpu\]"):
        generate_vllm(ModelRef("m0", str(tiny_model_dir)), [[1, 2, 3]], SamplingConfig(), seed=0, max_length=64,
                      dtype="bfloat16", tensor_parallel_size=1)


@pytest.mark.parametrize("rank, capacity", [(4, 16), (16, 16), (17, 32), (64, 64), (100, 128)])
def test_lora_capacity_is_a_power_of_two_vllm_accepts(tmp_path, rank, capacity):
    (tmp_path / "adapter_config.json").write_text(f'{{"r": {rank}}}')
    assert lora_rank_capacity(tmp_path) == capacity


@pytest.fixture()
def cpu_launch(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text(CPU_LAUNCH)
    return str(path)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_dpo_under_accelerate_launch_writes_what_in_process_training_writes(tiny_model_dir, tmp_path, cpu_launch):
    model_cfg = ModelConfig(name="tiny", source=ModelSource.tiny)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = tmp_path / "pairs.jsonl"
    write_rows(pairs, _pairs(tokenizer, load_base_model(str(tiny_model_dir), model_cfg), [0.8, 0.6, 0.9]))
    policy = ModelRef("m1", str(tiny_model_dir))
    # full fine-tuning, as the Llama presets; two steps, each checkpointed, the checkpoints removed at the end
    here_cfg = DPOConfig(lora=None, batch_size=2, grad_accum=1, lr=1e-3)
    launched_cfg = DPOConfig(lora=None, batch_size=2, grad_accum=1, lr=1e-3, accelerate_config=cpu_launch, num_processes=1)

    here, here_metrics = train_in_process(here_cfg, model_cfg, policy, pairs, tmp_path / "here", 0, "m2")
    launched, launched_metrics = train(launched_cfg, model_cfg, policy, pairs, tmp_path / "launched", 0, "m2")

    assert launched == ModelRef("m2", str(tmp_path / "launched" / "model"))
    assert here == ModelRef("m2", str(tmp_path / "here" / "model"))
    assert _files(tmp_path / "launched") == _files(tmp_path / "here")  # no request, result or checkpoint left
    assert launched_metrics["dpo/steps"] == here_metrics["dpo/steps"] == 2
    assert launched_metrics["dpo/global_batch"] == 2
    assert launched_metrics["dpo/loss"] == pytest.approx(here_metrics["dpo/loss"], rel=1e-5)
    launched_w, here_w = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("launched", "here"))
    assert launched_w.keys() == here_w.keys()
    assert all(torch.allclose(launched_w[k], here_w[k], atol=1e-6) for k in launched_w)
    before = load_base_model(str(tiny_model_dir), model_cfg).state_dict()
    assert not torch.equal(launched_w["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])


def test_two_cpu_processes_under_cpu_ddp_train_what_one_process_trains_on_the_same_global_batch(tiny_model_dir, tmp_path):
    """DDP over gloo: 2 processes x 1 pair give the loss, the forward passes and the weights of 1 process x 2 pairs."""
    import dataclasses

    model_cfg = ModelConfig(name="tiny", source=ModelSource.tiny)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = _pairs(tokenizer, load_base_model(str(tiny_model_dir), model_cfg), [0.8, 0.6, 0.9])
    pairs = tmp_path / "pairs.jsonl"
    write_rows(pairs, rows + [dataclasses.replace(rows[0], id="p3", consistency=0.7)])  # 4 pairs: 2 full steps
    policy = ModelRef("m1", str(tiny_model_dir))
    one = DPOConfig(lora=None, batch_size=2, grad_accum=1, lr=1e-3)
    two = DPOConfig(lora=None, batch_size=1, grad_accum=1, lr=1e-3, accelerate_config="cpu_ddp", num_processes=2)
    _, one_metrics = train_in_process(one, model_cfg, policy, pairs, tmp_path / "one", 0, "m2")
    _, two_metrics = train(two, model_cfg, policy, pairs, tmp_path / "two", 0, "m2")
    assert two_metrics["dpo/global_batch"] == one_metrics["dpo/global_batch"] == 2
    assert two_metrics["dpo/steps"] == one_metrics["dpo/steps"] == 2
    assert two_metrics["dpo/forward_sequences"] == one_metrics["dpo/forward_sequences"] == 8  # both processes counted
    assert two_metrics["dpo/loss"] == pytest.approx(one_metrics["dpo/loss"], rel=1e-6)
    one_w, two_w = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    assert max((one_w[k] - two_w[k]).abs().max().item() for k in one_w) < 1e-6  # measured 2.4e-8
    before = load_base_model(str(tiny_model_dir), model_cfg).state_dict()
    assert not torch.equal(two_w["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])


def test_sft_under_accelerate_launch_saves_the_adapter(tiny_model_dir, fixture_data, tmp_path, cpu_launch):
    examples = load_sft_examples("train", fixture_data, 4, seed=0)
    cfg = SFTConfig(max_length=256, batch_size=2, grad_accum=1, lora=LoraConfig(r=4, alpha=8), accelerate_config=cpu_launch)
    m1, metrics = sft(cfg, ModelConfig(name="tiny", source=ModelSource.tiny),
                      ModelRef("m0", str(tiny_model_dir)), examples, tmp_path / "sft", seed=0)
    assert m1 == ModelRef("m1", str(tiny_model_dir), str(tmp_path / "sft" / "adapter"))
    assert _files(tmp_path / "sft") == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                                        "adapter/README.md"}
    assert metrics["sft/steps"] == 2 and metrics["sft/examples"] == 4


def test_an_error_in_a_launched_stage_reaches_the_loop_as_itself(tiny_model_dir, fixture_data, tmp_path, cpu_launch):
    examples = load_sft_examples("train", fixture_data, 2, seed=0)
    cfg = SFTConfig(max_length=8, lora=LoraConfig(r=4, alpha=8), accelerate_config=cpu_launch)
    with pytest.raises(StageError, match=r"no SFT example fits in sft\.max_length=8"):
        sft(cfg, ModelConfig(name="tiny", source=ModelSource.tiny),
            ModelRef("m0", str(tiny_model_dir)), examples, tmp_path / "sft", seed=0)
    assert not (tmp_path / "sft" / REQUEST).exists() and not (tmp_path / "sft" / RESULT).exists()


def test_a_killed_loop_leaves_no_training_process_behind(tiny_model_dir, tmp_path, cpu_launch):
    """A trainer outliving a SIGKILLed loop would race the resumed run for its checkpoints."""
    model_cfg = ModelConfig(name="tiny", source=ModelSource.tiny)
    pairs = tmp_path / "pairs.jsonl"
    write_rows(pairs, _pairs(load_tokenizer(str(tiny_model_dir)), load_base_model(str(tiny_model_dir), model_cfg), [0.5] * 3))
    loop_code = (
        "from pathlib import Path\n"
        "from cream.config import DPOConfig, ModelConfig\n"
        "from cream.config.engine import ModelSource\n"
        "from cream.training.dpo_trainer import train\n"
        "from cream.runs.model_ref import ModelRef\n"
        f"train(DPOConfig(lora=None, batch_size=1, epochs=500, accelerate_config={cpu_launch!r}), "
        f"ModelConfig(name='tiny', source=ModelSource.tiny), ModelRef('m1', {str(tiny_model_dir)!r}), "
        f"Path({str(pairs)!r}), Path({str(tmp_path / 'train')!r}), 0, 'm2')\n"
    )
    loop = subprocess.Popen([sys.executable, "-c", loop_code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launched = []
    try:
        deadline = time.monotonic() + 120
        while not any(p.cmdline()[1:3] == ["-m", "cream.training.launch"] for p in psutil.Process(loop.pid).children(recursive=True)):
            assert loop.poll() is None and time.monotonic() < deadline, "the training process never started"
            time.sleep(0.2)
        time.sleep(3)  # well into its imports or its training
        launched = psutil.Process(loop.pid).children(recursive=True)
        assert len(launched) == 2  # accelerate's launcher and the training process it started
        loop.send_signal(signal.SIGKILL)
        loop.wait()
        _, alive = psutil.wait_procs(launched, timeout=20)
        assert not alive, [p.cmdline() for p in alive]
    finally:  # nothing of this test outlives it, whatever failed
        loop.kill()
        for p in launched:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_rehearsal_keeps_the_llama_presets_engines_on_the_embedded_model():
    """experiment=rehearsal: cream_llama's engines (vLLM sampling and evaluation, 2 DDP training processes,
    full weights), not its size; float32, which this CPU computes natively."""
    cfg, llama = _load(["experiment=rehearsal"]), _load(["experiment=cream_llama"])
    assert cfg.model.name == "smollm2_135m"
    assert (cfg.sampling.backend, cfg.eval.backend) == (llama.sampling.backend, llama.eval.backend) == ("vllm", "vllm")
    for stage in (cfg.sft, cfg.dpo):
        assert (stage.accelerate_config, stage.num_processes, stage.lora, stage.bf16) == ("cpu_ddp", 2, None, False)
    assert (llama.sft.lora, llama.dpo.lora) == (None, None)
    assert (cfg.rewarder.name, cfg.regularizer) == (llama.rewarder.name, llama.regularizer)  # batch sizes differ
