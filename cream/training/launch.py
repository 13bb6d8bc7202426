"""Training stages (SFT, DPO) in the loop's process, or across GPUs under `accelerate launch`.

The loop samples, scores and evaluates in one process; only training is spread over several (DeepSpeed
ZeRO-3 or FSDP shard the weights, gradients and optimizer state of a full fine-tune). With
`<dpo|sft>.accelerate_config` set, `run_training` pickles the stage function and its arguments into the stage
folder, runs

    accelerate launch --config_file <file> [--num_processes N] -m cream.training.launch <stage folder>

and every process calls the same function; the main process saves M_{t+1} (the same `adapter/` or
`model/` folder as in-process training) and writes the returned model and metrics for the loop to read
back, so the stage's manifest and outputs are those of the in-process path.
"""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# Nothing heavy at import: a launched process must reach `die_with_parent` before its parent can die unseen.
from cream import errors
from cream.runs.artifacts import read_json, write_json
from cream.config.training import accelerate_config_file
from cream.errors import ConfigError, CreamError, StageError

if TYPE_CHECKING:
    from cream.config.training import TrainingConfig
    from cream.runs.model_ref import ModelRef

REQUEST = "launch_request.pkl"  # the stage function and its arguments, for every process
RESULT = "launch_result.json"  # the main process's (model, metrics), or the error it stopped on


def run_training(fn: Callable[..., tuple[ModelRef, dict]], cfg: TrainingConfig, stage_dir: Path, *args) -> tuple[ModelRef, dict]:
    """`fn(*args)` here, or in every process of `accelerate launch` when `cfg.accelerate_config` is set."""
    if cfg.accelerate_config is None:
        return fn(*args)
    from accelerate.utils import DistributedType

    from cream.runs.model_ref import ModelRef

    key = f"{cfg._group}.accelerate_config"
    path, launch_cfg = accelerate_config_file(cfg.accelerate_config, key)
    if launch_cfg.distributed_type == DistributedType.DEEPSPEED:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"config key `{key}`: {path} runs DeepSpeed, which is not installed: "
                              f"pip install -e .[gpu] (or {key}=fsdp)")
    from cream.engine.vllm_sampling import release_engine

    release_engine()  # the training processes need the GPUs a cached vLLM engine of this process holds
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / RESULT).unlink(missing_ok=True)
    (stage_dir / REQUEST).write_bytes(pickle.dumps({"fn": fn, "args": args}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    if cfg.num_processes is not None:
        command += ["--num_processes", str(cfg.num_processes)]
    command += ["-m", "cream.training.launch", str(stage_dir)]
    print(f"[cream] {shlex.join(command)}", flush=True)
    code = subprocess.run(command, preexec_fn=die_with_parent).returncode
    result = read_json(stage_dir / RESULT) if (stage_dir / RESULT).is_file() else None
    for name in (REQUEST, RESULT):  # the stage's outputs are those of in-process training
        (stage_dir / name).unlink(missing_ok=True)
    if result is not None and "error" in result:
        raise getattr(errors, result["error_type"], CreamError)(result["error"])
    if code != 0 or result is None:
        raise StageError(f"training under `accelerate launch` failed (exit code {code}; its output is above): "
                         f"{shlex.join(command)}")
    return ModelRef(**result["model"]), result["metrics"]


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a killed loop leaves no trainer behind to race its resume."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> None:
    """One training process: run the stage function of `<stage folder>/launch_request.pkl`."""
    die_with_parent()  # the launcher's children die with it, as it dies with the loop
    from accelerate import PartialState

    stage_dir = Path((argv if argv is not None else sys.argv[1:])[0])
    request = pickle.loads((stage_dir / REQUEST).read_bytes())
    try:
        model, metrics = request["fn"](*request["args"])
    except CreamError as e:  # reported by the loop as in-process training would report it
        if PartialState().is_main_process:
            write_json(stage_dir / RESULT, {"error": str(e), "error_type": type(e).__name__})
        sys.exit(2)
    if PartialState().is_main_process:
        write_json(stage_dir / RESULT, {"model": model.as_dict(), "metrics": metrics})


if __name__ == "__main__":
    main()
