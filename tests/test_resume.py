"""Crash safety: SIGKILL at any moment, rerun the same command, reach the same artifacts."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cream.runs.artifacts import write_jsonl
from tests.conftest import FIXTURE_DATA, REPO
from tests.test_integration import cli

# Small chunks so that there is a moment to kill inside each stage; evaluation off to stay fast.
ARGS = ["experiment=smoke", f"paths.data={FIXTURE_DATA}", "eval.enabled=false", "sampling.batch_size=3",
        "rewarder.batch_size=1", "data.shard_size=6", "dpo.batch_size=1"]
COMPARED = ["iter_1/sample/responses.jsonl", "iter_1/reward/rewards.jsonl", "iter_1/consistency/consistency.jsonl",
            "iter_1/pairs/pairs.jsonl"]


def _kill_when(runs: Path, run_name: str, marker: str, *overrides: str, timeout: float = 600) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *ARGS, f"paths.runs={runs}", f"run_name={run_name}",
                             *overrides],
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
        "iter_0/sft/checkpoints/checkpoint-*/cream_counts.json",  # during SFT, after a checkpoint
        "iter_1/sample/chunks/00002.jsonl",  # during sampling
        "iter_1/reward/logps/m1.json",  # during rewarding: one model scored, the other not
        "iter_1/dpo/checkpoints/checkpoint-*/cream_counts.json",  # during training, after a checkpoint
        "iter_1/pairs/DONE",  # between stages
    ],
)
def test_sigkill_then_rerun_reaches_the_same_results(reference_run, tmp_path, marker):
    # a cache of its own: the reference run's SFT, shared through the default cache, would be copied, not trained
    cache = f"paths.cache={tmp_path / 'cache'}"
    _kill_when(tmp_path, "crash", marker, cache)
    assert not (tmp_path / "smoke" / "crash" / "iter_1" / "dpo" / "DONE").exists()
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=crash", cache)
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
    train = next(r for r in ours if r["stage"] == "dpo")
    ref_train = next(r for r in ref if r["stage"] == "dpo")
    assert train["dpo/steps"] == ref_train["dpo/steps"]
    assert train["dpo/final_loss"] == pytest.approx(ref_train["dpo/final_loss"], rel=1e-3)
    # issue 21 case 5: a resumed training reports the uninterrupted one's loss and work (the mean over every
    # step, not over the resumed session's; the forwarded sequences counted since the start)
    for stage, keys in (("sft", ("sft/loss", "sft/forward_sequences")), ("dpo", ("dpo/loss", "dpo/forward_sequences"))):
        mine, theirs = next(r for r in ours if r["stage"] == stage), next(r for r in ref if r["stage"] == stage)
        assert [mine[k] for k in keys] == pytest.approx([theirs[k] for k in keys], rel=1e-6), stage


def test_corrupted_artifact_is_detected(reference_run, tmp_path):
    import shutil

    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    pairs = run_dir / "iter_1" / "pairs" / "pairs.jsonl"
    pairs.write_text(pairs.read_text().replace('"consistency": ', '"consistency": 0.0, "x": ', 1))
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 2
    assert "pairs.jsonl" in result.stderr and "hash mismatch" in result.stderr
    assert (run_dir / "iter_1" / "dpo" / "DONE").is_file()


def test_resume_false_starts_a_new_folder_with_its_own_log_and_force_recomputes_what_changed(reference_run, tmp_path):
    shutil.copytree(reference_run, tmp_path / "smoke" / "ref")
    old_log = (tmp_path / "smoke" / "ref" / "train.log").read_bytes()
    fresh = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref", "resume=false", "iterations=1")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert (tmp_path / "smoke" / "ref_2" / "iter_1" / "dpo" / "DONE").is_file()
    # a new folder, but the same settings, data and M0 before the first iteration: the SFT is taken, hard-linked,
    # from the copy the reference run shared (docs/running.md)
    assert "iter 0 sft: computed by another run with the same settings" in fresh.stdout
    adapter = next((tmp_path / "smoke" / "ref_2" / "iter_0" / "sft").rglob("*.safetensors"))
    assert adapter.stat().st_nlink > 1
    assert b"iter 1 dpo" in (tmp_path / "smoke" / "ref_2" / "train.log").read_bytes()
    assert (tmp_path / "smoke" / "ref" / "train.log").read_bytes() == old_log  # nothing appended to the old run's log
    forced = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref", "resume=force", "dpo.beta=0.3")
    assert forced.returncode == 0, forced.stderr[-2000:]
    # beta decides training and the pairs stage's implicit-reward probabilities (SCIR, UPO): sft, sample, reward and
    # consistency are reused, pairs and train are redone
    assert forced.stdout.count("complete, reusing") == 4
    assert "iter 1 pairs: computed from other settings" in forced.stdout
    assert "iter 1 dpo: computed from other settings" in forced.stdout
    record = json.loads((tmp_path / "smoke" / "ref" / "run.json").read_text())
    assert record["config"]["dpo"]["beta"] == 0.3 and "dpo.beta: 0.1 -> 0.3" in record["forced"][0]["changes"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pairs_come_from_their_responses(run_dir: Path) -> None:
    responses = {r["id"]: {x["text"] for x in r["responses"]} for r in _rows(run_dir / "iter_1/sample/responses.jsonl")}
    for pair in _rows(run_dir / "iter_1/pairs/pairs.jsonl"):
        assert {pair["chosen"], pair["rejected"]} <= responses[pair["id"]], pair["id"]


def test_a_changed_input_invalidates_every_stage_after_it(reference_run, tmp_path):
    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    chunk = run_dir / "iter_1/sample/chunks/00000.jsonl"
    rows = _rows(chunk)
    rows[0]["samples"][0]["text"] = "An edited response."
    rows[0]["samples"][0]["ids"] = rows[0]["samples"][0]["ids"][:2]
    write_jsonl(chunk, rows)
    (run_dir / "iter_1/sample/DONE").unlink()
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("reward", "consistency", "pairs", "dpo"):
        assert f"iter 1 {stage}: computed from other settings, inputs or data; recomputing" in result.stdout, stage
    responses = _rows(run_dir / "iter_1/sample/responses.jsonl")
    assert "An edited response." in {x["text"] for r in responses for x in r["responses"]}
    rewards = {r["id"]: r for r in _rows(run_dir / "iter_1/reward/rewards.jsonl")}
    assert all(rewards[r["id"]]["n_tokens"] == [len(x["ids"]) for x in r["responses"]] for r in responses)
    _pairs_come_from_their_responses(run_dir)


def test_a_deleted_stage_recomputed_with_other_settings_invalidates_what_follows(reference_run, tmp_path):
    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    shutil.rmtree(run_dir / "iter_1/sample")
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref", "resume=force", "sampling.temperature=0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iter 0 sft: complete, reusing" in result.stdout and result.stdout.count("complete, reusing") == 1
    _pairs_come_from_their_responses(run_dir)


def test_other_data_is_refused_naming_it(reference_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA, data)
    rows = _rows(data / "gsm8k/train.jsonl")
    rows[0]["question"] = "A different question?"
    write_jsonl(data / "gsm8k/train.jsonl", rows)
    shutil.copytree(reference_run, tmp_path / "smoke" / "ref")
    result = cli(*[a for a in ARGS if not a.startswith("paths.data")], f"paths.data={data}",
                 f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 2 and "data prompts differ" in result.stderr, result.stderr[-2000:]


def test_a_sample_chunk_of_other_prompts_is_sampled_again(tiny_model_dir, tmp_path):
    from cream.config import SamplingConfig
    from cream.engine.generation import generate
    from cream.engine.model_pool import ModelPool
    from cream.engine.models import load_tokenizer
    from cream.runs.model_ref import ModelRef
    from tests.conftest import stage_context

    tokenizer, m1 = load_tokenizer(str(tiny_model_dir)), ModelRef("m1", str(tiny_model_dir))
    cfg = SamplingConfig(n=2, max_new_tokens=4, batch_size=4)
    pool = ModelPool(stage_context(tmp_path, [m1]).cfg.model)
    first = generate(pool, m1, tokenizer, [[1, 2, 3], [4, 5]], cfg, cfg, 0, tmp_path / "chunks", "t", 128)
    again = generate(pool, m1, tokenizer, [[1, 2, 3], [4, 5]], cfg, cfg, 0, tmp_path / "chunks", "t", 128)
    assert again == first  # the chunk is reused: same prompts
    generate(pool, m1, tokenizer, [[7, 8, 9], [4, 5]], cfg, cfg, 0, tmp_path / "chunks", "t", 128)
    # the chunk was sampled again for the prompts it now holds, not reused for others
    assert [row["prompt_ids"] for row in _rows(tmp_path / "chunks/00000.jsonl")] == [[4, 5], [7, 8, 9]]


def test_force_after_a_kill_mid_sampling_resamples_with_the_new_settings(tmp_path):
    _kill_when(tmp_path, "crash", "iter_1/sample/chunks/00001.jsonl")
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=crash", "resume=force", "sampling.n=4")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "smoke" / "crash"
    assert {len(r["responses"]) for r in _rows(run_dir / "iter_1/sample/responses.jsonl")} == {4}
    assert json.loads((run_dir / "run.json").read_text())["forced"][0]["changes"] == ["sampling.n: 3 -> 4"]


def test_a_moved_run_folder_resumes_on_its_own(reference_run, tmp_path):
    moved = tmp_path / "elsewhere" / "smoke" / "ref"
    shutil.copytree(reference_run, tmp_path / "first" / "smoke" / "ref")
    shutil.move(tmp_path / "first" / "smoke" / "ref", moved)
    shutil.rmtree(moved / "iter_1/dpo")  # training must find SFT's adapter in the moved folder
    result = cli(*ARGS, f"paths.runs={tmp_path / 'elsewhere'}", "run_name=ref")
    assert result.returncode == 0, result.stderr[-2000:]
    for manifest in moved.rglob("*.json"):
        assert str(tmp_path / "first") not in manifest.read_text() and str(reference_run) not in manifest.read_text()


def test_metrics_lost_to_a_kill_are_restored_and_a_torn_line_dropped(reference_run, tmp_path):
    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the train record torn by a kill
    result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 0, result.stderr[-2000:]
    records = _rows(metrics)
    assert sorted((r["iteration"], r["stage"]) for r in records) == sorted(
        [(0, "sft"), (1, "sample"), (1, "reward"), (1, "consistency"), (1, "pairs"), (1, "dpo")])


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(reference_run, tmp_path):
    import fcntl

    run_dir = tmp_path / "smoke" / "ref"
    shutil.copytree(reference_run, run_dir)
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242")
        lock.flush()
        result = cli(*ARGS, f"paths.runs={tmp_path}", "run_name=ref")
    assert result.returncode == 2 and "in use by process 4242" in result.stderr, result.stderr[-2000:]
    assert len(_rows(run_dir / "metrics.jsonl")) == 6  # nothing logged twice


def test_artifacts_are_strict_json_with_the_usual_file_mode(tmp_path):
    from cream.runs.artifacts import write_json

    write_json(tmp_path / "m.json", {"consistency/mean": float("nan"), "x": [1.0, float("inf")]})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail) == {"consistency/mean": None,
                                                                                        "x": [1.0, None]}
    write_jsonl(tmp_path / "r.jsonl", [{"a": float("-inf")}])
    assert (tmp_path / "r.jsonl").read_text() == '{"a": null}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask


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
