"""`make gpu-check`: what a person lent a GPU for 15 minutes runs first, into one report.

On a machine with a CUDA GPU it runs, each as its own `train.py` process with `device=cuda`: the smoke
experiment, the default experiment reduced to one iteration of 16 prompts, and the shape-only `cream_llama_1gpu`
(`model=llama3_8b_shape`: Llama-3-8B's shapes, random weights) for one iteration of 64 prompts; then
`make bench`'s GPU rows. While each runs, `nvidia-smi` is read every second: the report gives each command's
wall time, each stage's time (from its `metrics.jsonl`), the GPU's mean utilisation and peak memory, and the
shape's parameter count and weight memory counted on the meta device. Written to `runs/gpu_check/report.md`
(and printed). Without a GPU it stops in one line, exit 2, before anything runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gpu_or_exit() -> str:
    import torch

    if not torch.cuda.is_available():
        print("error: make gpu-check needs a CUDA GPU, and torch sees none on this machine "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


class GpuSampler:
    """Mean utilisation (%) and peak memory (MiB) of GPU 0, read from nvidia-smi every second."""

    def __init__(self):
        self.util, self.memory, self._stop = [], [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                line = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                                       "--id=0"], capture_output=True, text=True, timeout=5).stdout.strip()
                util, memory = (float(x) for x in line.split(","))
                self.util.append(util)
                self.memory.append(memory)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"gpu_util_mean": sum(self.util) / len(self.util) if self.util else None,
                "gpu_memory_peak_mib": max(self.memory) if self.memory else None}


def run(name: str, argv: list[str], out: Path) -> dict:
    """One command, timed and sampled; its run folder's stage times when it wrote one."""
    start = time.perf_counter()
    with GpuSampler() as sampler:
        result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
    (out / f"{name}.log").write_text(result.stdout + result.stderr)
    record = {"name": name, "command": " ".join(argv), "exit": result.returncode,
              "wall_s": time.perf_counter() - start, **sampler.summary(), "stages": {}}
    for metrics in (out / "runs").rglob("metrics.jsonl"):
        if f"/{name}/" in str(metrics):
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                record["stages"].update({k[len("time/"):]: v for k, v in row.items() if k.startswith("time/")})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "runs" / "gpu_check"))
    args = parser.parse_args()
    device = gpu_or_exit()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from cream.config.engine import ModelShape
    from cream.engine.models import shape_footprint

    common = ["device=cuda", "logger.mode=disabled", f"paths.runs={out / 'runs'}"]
    commands = {
        "smoke": ["train.py", "experiment=smoke", "run_name=smoke", *common],
        "default": ["train.py", "run_name=default", "iterations=1", "data.shard_size=16", *common],
        "llama_shape": ["train.py", "experiment=cream_llama_1gpu", "model=llama3_8b_shape", "run_name=llama_shape",
                        "iterations=1", "data.shard_size=64", "eval.enabled=false", *common],
        "bench": ["bench/bench.py", "--run", str(out / "runs" / "cream_smollm" / "default"), "--out",
                  str(out / "BENCHMARKS.md"), "--device", "cuda"],
    }
    records = [run(name, argv, out) for name, argv in commands.items()]
    footprint = shape_footprint(ModelShape(), "bfloat16")
    lines = [f"# gpu-check on {device}, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"llama3_8b_shape: {footprint['parameters']:,} parameters, {footprint['weights_gib']:.1f} GiB of bf16 weights", "",
             "| command | exit | wall s | GPU util mean % | GPU memory peak MiB | stages (s) |", "|---|---|---|---|---|---|"]
    for r in records:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items())
        lines.append(f"| {r['name']} | {r['exit']} | {r['wall_s']:.0f} | {r['gpu_util_mean'] or 0:.0f} | "
                     f"{r['gpu_memory_peak_mib'] or 0:.0f} | {stages} |")
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"device": device, "footprint": footprint, "runs": records}, indent=1))
    print(report)
    sys.exit(0 if all(r["exit"] == 0 for r in records) else 1)


if __name__ == "__main__":
    main()
