"""Crash safety: SIGKILL at any moment, rerun the same command, reach the same artifacts."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cream.artifacts import write_jsonl
from tests.conftest import FIXTURE_DATA, REPO
from tests.test_integration import cli

# Small chunks so that there is a moment to kill inside each stage; evaluation off to stay fast.
ARGS = ["experiment=smoke", f"paths.data={FIXTURE_DATA}", "eval.enabled=false", "sampling.batch_size=3",
        "rewarder.batch_size=1", "data.shard_size=6", "dpo.batch_size=1"]
COMPARED = ["iter_1/sample/responses.jsonl", "iter_1/reward/rewards.jsonl", "iter_1/consistency/consistency.jsonl",
            "iter_1/pairs/pairs.jsonl"]


def _kill_when(runs: Path, run_name: str, marker: str, timeout: float = 600) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *ARGS, f"paths.runs={runs}", f"run_name={run_name}"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = runs / "smoke" / run_name
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if list(target.glob(marker)):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.01)
        pytest.fail(f"{marker} never appeared (exit code {proc.poll()})")
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    result = cli(*ARGS, f"paths.runs={runs}", "run_name=ref")
    assert result.returncode == 0, result.stderr[-2000:]
    return runs / "smoke" / "ref"


@pytest.mark.parametrize(
    "marker",
    [
        "iter_0/sft/checkpoints/checkpoint-*",  # during SFT, after a checkpoint
        "iter_1/sample/chunks/00002.jsonl",  # during sampling
        "iter_1/reward/logps/m1.json",  # during rewarding: one model scored, the other not
        "iter_1/train/checkpoints/checkpoint-*",  # during training, after a checkpoint
        "iter_1/pairs/DONE",  # between stages
    ],
)
def test_sigkill_then_rerun_reaches_the_same_results(reference_run, tmp_path, marker):
    _kill_when(tmp_path, "crash", marker)
    assert not (tmp_path / "smoke" / "crash" / "iter_1" / "train" / "DONE").exists()
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=crash")
    assert result.returncode == 0, result.stderr[-2000:]
    if not marker.startswith("iter_0"):  # a kill during SFT leaves no completed stage to reuse
        assert "complete, reusing" in result.stdout
    run_dir = tmp_path / "smoke" / "crash"
    for rel in COMPARED:
        assert (run_dir / rel).read_bytes() == (reference_run / rel).read_bytes(), rel
    ours = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (reference_run / "metrics.jsonl").read_text().splitlines()]
    pick = lambda records: {r["stage"]: r.get("pairs/kept", r.get("consistency/mean")) for r in records}
    assert pick(ours) == pick(ref)
    train = next(r for r in ours if r["stage"] == "train")
    ref_train = next(r for r in ref if r["stage"] == "train")
    assert train["dpo/steps"] == ref_train["dpo/steps"]
    assert train["dpo/final_loss"] == pytest.approx(ref_train["dpo/final_loss"], rel=1e-3)


def test_corrupted_artifact_is_detected(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    pairs = run_dir / "iter_1" / "pairs" / "pairs.jsonl"
    pairs.write_text(pairs.read_text().replace('"consistency": ', '"consistency": 0.0, "x": ', 1))
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 2
    assert "pairs.jsonl" in result.stderr and "hash mismatch" in result.stderr
    assert (run_dir / "iter_1" / "train" / "DONE").is_file()


def test_resume_false_starts_a_new_folder_and_force_reuses(reference_run, tmp_path):
    import shutil

    shutil.copytree(reference_run, tmp_path / "smoke" / "ref")
    fresh = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref", "resume=false", "iterations=1")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert (tmp_path / "smoke" / "ref_2" / "iter_1" / "train" / "DONE").is_file()
    forced = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref", "resume=force", "dpo.beta=0.3")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert forced.stdout.count("complete, reusing") >= 6


def _write_with_file_size_limit(path: Path, limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    write_jsonl(path, [{"text": "x" * 1000}] * 100)


def test_a_write_that_fills_the_disk_leaves_no_file(tmp_path):
    target = tmp_path / "out.jsonl"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path;"
            f"from tests.test_resume import _write_with_file_size_limit as w; w(Path({str(target)!r}), 20000)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "File too large" in result.stderr
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either
