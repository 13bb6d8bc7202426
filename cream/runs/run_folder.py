"""The run folder `runs/<experiment>/<run_name>/`: one configuration on one data, one process at a time.

It keeps the promises of a resumable run:
- `run.json` holds the configuration and the identity of the data; rerunning with other settings or
  other data is refused (`resume=force` goes on, and `run.json` records what was forced);
- a lock names the process that holds the folder, so a second one is refused;
- a stage is reused only when its manifest's fingerprint (its settings, its inputs' digests) is the
  current one; a stage begun under another fingerprint starts over, so nothing stale is spliced in;
- `metrics.jsonl` is completed from the manifests, whatever was killed between them;
- paths inside the folder are stored relative to it, so a moved or copied folder resumes on its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from cream.runs.artifacts import MANIFEST, STARTED, file_hash, read_json, write_json
from cream.config import Config, to_plain_dict
from cream.config.runs import ResumeMode
from cream.errors import ConfigError
from cream.runs.model_ref import ModelRef

log = logging.getLogger("cream")
RUN_MANIFEST = "run.json"
EVALUATE_M0 = "evaluate_m0"  # the evaluate stage's folder for M0, before SFT in iteration 0
LOCK = ".lock"
# Keys that may change between a run and its resumption without changing any result.
NOT_RESULT_KEYS = ("logger", "run_name", "threads", "resume", "paths")
_IN_RUN = "run:"  # prefix of a path stored relative to the run folder


def digest(value: Any) -> str:
    """A short sha256 of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def select(config: dict, keys: tuple[str, ...]) -> dict:
    """The values of `keys` (sections or dotted keys) in a plain config."""
    out = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def stage_folder(run_dir: Path, iteration: int, stage: str) -> Path:
    """Where a stage of an iteration writes: `<run>/iter_<iteration>/<stage>/`."""
    return Path(run_dir) / f"iter_{iteration}" / stage


class RunFolder:
    def __init__(self, cfg: Config, data_identity: dict):
        self.cfg = cfg
        self.dir = Path(cfg.paths.runs) / cfg.experiment_name / cfg.run_name
        requested = self.dir
        if cfg.resume == ResumeMode.false:
            suffix = 1
            while (self.dir / RUN_MANIFEST).exists():
                suffix += 1
                self.dir = requested.with_name(f"{cfg.run_name}_{suffix}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold(self.dir / LOCK, f"run folder {self.dir}", "`run_name`")
        if self.dir != requested:
            _move_hydra_log(requested, self.dir)
            cfg.run_name = self.dir.name  # the name that resumes this folder
        self.config = {k: v for k, v in to_plain_dict(cfg).items() if k not in NOT_RESULT_KEYS}
        self.manifest = {"config": self.config, "data": data_identity, "wandb_id": None, "forced": []}
        path = self.dir / RUN_MANIFEST
        if path.is_file():
            previous = read_json(path)
            changes = _differences(previous, self.manifest)
            if changes and cfg.resume != ResumeMode.force:
                raise ConfigError(
                    f"run folder {self.dir} holds a run with another configuration or data ({', '.join(changes[:10])}); "
                    f"choose a new `run_name`, `resume=false` for a new folder, or `resume=force` to reuse it "
                    f"(stages computed from other settings or data are then recomputed)")
            self.manifest["wandb_id"] = previous.get("wandb_id")
            self.manifest["forced"] = previous.get("forced", []) + ([{"changes": changes}] if changes else [])
            if changes:
                log.info(f"resume=force: {len(changes)} change(s) recorded in {path}; stages they affect are recomputed")

    def save(self, wandb_id: Optional[str]) -> None:
        self.manifest["wandb_id"] = wandb_id
        write_json(self.dir / RUN_MANIFEST, self.manifest)

    def portable(self, ref: ModelRef) -> dict:
        """A model as stored in a manifest: its paths inside the run folder relative to it."""
        def rel(path: Optional[str]) -> Optional[str]:
            if path is None:
                return None
            resolved = Path(path).resolve()
            inside = resolved.is_relative_to(self.dir.resolve())
            return _IN_RUN + str(resolved.relative_to(self.dir.resolve())) if inside else path

        return {"name": ref.name, "base": rel(ref.base), "adapter": rel(ref.adapter)}

    def model(self, stored: dict) -> ModelRef:
        return stored_model(self.dir, stored)


def stored_model(run_dir: Path, stored: dict) -> ModelRef:
    """A model as a manifest stores it, its paths inside the run folder made absolute again."""
    def absolute(path: Optional[str]) -> Optional[str]:
        return str(Path(run_dir) / path[len(_IN_RUN):]) if path and path.startswith(_IN_RUN) else path

    return ModelRef(stored["name"], absolute(stored["base"]), absolute(stored["adapter"]))


def outputs_digest(stage_dir: Path) -> str:
    """The identity of a completed stage's outputs: the hashes its manifest recorded (and reuse verified)."""
    return digest(read_json(Path(stage_dir) / MANIFEST)["outputs"])


def prepare_stage(stage_dir: Path, fingerprint: dict) -> None:
    """Start a stage folder: keep what an interrupted run under the same fingerprint left, else start over."""
    started = stage_dir / STARTED
    if stage_dir.exists() and (not started.is_file() or read_json(started) != fingerprint):
        shutil.rmtree(stage_dir)
    write_json(started, fingerprint)


def data_identity(prompts: list[dict], sft_examples: list[dict], eval_files: list[Path]) -> dict:
    """What identifies the data of a run: the prompts and examples as read, and the evaluation files."""
    return {
        "prompts": digest([(p["id"], p["prompt"], p["answer"]) for p in prompts]),
        "sft_examples": digest(sft_examples),
        "eval_files": {f"{p.parent.name}/{p.name}": file_hash(p) for p in eval_files},
    }


def _differences(previous: dict, current: dict) -> list[str]:
    old, new = flatten(previous.get("config", {})), flatten(current["config"])
    changes = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    old_data, new_data = previous.get("data", {}), current["data"]
    return changes + [f"data {k} differ" for k in sorted(old_data.keys() | new_data.keys()) if old_data.get(k) != new_data.get(k)]


def hold(lock_file: Path, what: str, other: str):
    """Hold `lock_file` for this process (released when it exits, however it exits); a ConfigError saying that
    `what` is in use, and which process holds it, when another does (choose `other` instead, or wait)."""
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"{what} is in use by process {holder}; wait for it to end or choose another {other}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _move_hydra_log(old_dir: Path, new_dir: Path) -> None:
    """Point Hydra's log file at the folder this run really uses (`resume=false` picked a new one)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == old_dir.resolve():
            handler.close()
            handler.baseFilename = str((new_dir / Path(handler.baseFilename).name).resolve())
            handler.stream = handler._open()
