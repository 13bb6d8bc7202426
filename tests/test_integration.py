"""The whole loop through the real CLI on the tiny model: SFT + one iteration + evaluation."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_DATA, REPO

TASKS = ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa"]
STAGES = {
    "iter_0": ["evaluate_m0", "sft", "evaluate"],
    "iter_1": ["sample", "reward", "consistency", "pairs", "dpo", "evaluate"],
}


# Fake credentials: they must never reach a saved config, log, manifest or the W&B run.
SECRETS = {"WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd", "HF_TOKEN": "hf_fakeHubToken0123456789"}


def cli(*overrides, cwd=REPO, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline", **SECRETS,
           **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    args = ("experiment=smoke", f"paths.runs={runs}", f"paths.data={FIXTURE_DATA}")  # run_name: its timestamp
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (runs / "smoke").iterdir()
    return run_dir, (*args, f"run_name={run_dir.name}"), result


def test_the_default_run_name_gives_one_folder_holding_hydras_log(smoke_run):
    """The timestamp is resolved once: Hydra's log and the results share the run folder."""
    run_dir, _, _ = smoke_run
    assert (run_dir / "train.log").is_file() and (run_dir / "run.json").is_file()
    assert list(run_dir.parent.iterdir()) == [run_dir]


def test_run_json_records_what_the_auto_sampling_dtype_became_on_this_machine(smoke_run):
    from cream.engine.models import resolve_dtype

    run_dir, _, _ = smoke_run
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["sampling"]["dtype"] == resolve_dtype("auto", "cpu") != "auto"  # the schema's default is auto


def test_every_stage_completes_with_manifest_and_artifacts(smoke_run):
    run_dir, _, _ = smoke_run
    for iteration, stages in STAGES.items():
        for stage in stages:
            stage_dir = run_dir / iteration / stage
            assert (stage_dir / "DONE").is_file(), stage_dir
            manifest = json.loads((stage_dir / "manifest.json").read_text())
            assert manifest["fingerprint"]["config"] and manifest["outputs"], stage_dir
    it1 = run_dir / "iter_1"
    responses = [json.loads(l) for l in (it1 / "sample" / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == 6 and all(len(r["responses"]) == 3 for r in responses)
    assert all("answer" in r and r["answer"] not in ("", None) for r in responses)  # ground truth kept aside
    rewards = [json.loads(l) for l in (it1 / "reward" / "rewards.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rewards} == {r["id"] for r in responses}
    assert all(set(r["logps"]) == {"m0", "m1"} for r in rewards)  # M1's reward vs M0, M0's likelihood
    pairs = [json.loads(l) for l in (it1 / "pairs" / "pairs.jsonl").read_text().splitlines()]
    consistency = [json.loads(l) for l in (it1 / "consistency" / "consistency.jsonl").read_text().splitlines()]
    assert {c["id"] for c in consistency} == {r["id"] for r in rewards}
    trained = {c["id"]: c["consistency"] for c in consistency}
    assert all(c["consistency"] == c["measured"] for c in consistency)  # cream_dyn trains with C_j itself
    for p in pairs:
        assert p["consistency"] == trained[p["id"]]  # each pair carries its own prompt's C
        assert p["chosen_reward"] > p["rejected_reward"]
        row = next(r for r in rewards if r["id"] == p["id"])
        assert p["ref_chosen_logps"] in row["logps"]["m1"]  # the DPO reference is M1's scoring, reused
    assert (it1 / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    assert (run_dir / "iter_0" / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (it1 / "dpo" / "checkpoints").exists()


def test_metrics_hold_every_logged_key(smoke_run):
    run_dir, _, _ = smoke_run
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    expected = {
        "sft/loss", "sample/responses", "reward/mean", "reward/std", "reward/forward_passes",
        "consistency/mean", "consistency/std", "pairs/kept", "pairs/dropped", "dpo/loss", "dpo/margin",
        "dpo/accuracy", "time/sample", "time/reward", "time/dpo", "memory/peak_rss_mb",
    }
    assert expected <= keys, expected - keys
    reward = next(r for r in records if r["stage"] == "reward")
    # each (model, response) log-prob once: M1 and M0 over 6 prompts x 3 responses; DPO reuses them
    assert reward["reward/forward_passes"] == 2 * 6 * 3 and reward["reward/models_scored"] == 2
    evals = [r for r in records if r["stage"].startswith("evaluate")]
    assert len(evals) == 3  # M0, M1, M2
    for record in evals:
        for task in TASKS + ["average"]:
            assert 0 <= record[f"eval/{task}"] <= 100, (record["stage"], task)


def test_wandb_offline_run_holds_the_same_keys_and_tables(smoke_run):
    run_dir, _, _ = smoke_run
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    blob = files[0].read_bytes()
    for key in [b"consistency/mean", b"consistency/histogram", b"pairs/table", b"dpo/loss", b"eval/average",
                b"time/dpo"]:
        assert key in blob, key


def test_rerun_reuses_every_completed_stage(smoke_run):
    run_dir, args, _ = smoke_run
    before = (run_dir / "iter_1" / "pairs" / "pairs.jsonl").read_bytes()
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    # the resumed run continues the same W&B run
    assert wandb_id and json.loads((run_dir / "run.json").read_text())["wandb_id"] == wandb_id
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(wandb_id) for r in runs)
    assert result.stdout.count("complete, reusing") == sum(len(s) for s in STAGES.values())
    assert (run_dir / "iter_1" / "pairs" / "pairs.jsonl").read_bytes() == before


def test_rerun_with_another_config_is_refused_listing_the_keys(smoke_run):
    run_dir, args, _ = smoke_run
    result = cli(*args, "dpo.beta=0.5")
    assert result.returncode == 2
    assert "dpo.beta" in result.stderr and "another configuration" in result.stderr
    assert (run_dir / "iter_1" / "dpo" / "DONE").is_file()  # nothing completed is lost


@pytest.mark.parametrize(
    "corrupt, overrides, message",
    [
        (None, ["model=gpt5"], "gpt5"),  # unknown group option: Hydra lists the valid ones
        (None, ["data.shard_size=100000"], "data.shard_size"),
        (None, ["paths.data=/nonexistent/data"], "paths.data"),
        (None, ["sampling.n=1"], "sampling.n"),
        (None, ["sampling.n=3", "sampling.n=="], "sampling.n=="),  # a malformed override
        (None, ["rewarder=judge", "eval.enabled=false"], "no parsable score"),  # a random model never scores
        ("arc_easy/train.jsonl", [], "train.jsonl:3"),
        ("siqa/train.jsonl", [], "train.jsonl:3"),
    ],
)
def test_bad_input_fails_clearly(tmp_path, corrupt, overrides, message):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE_DATA, data)
    if corrupt:
        lines = (data / corrupt).read_text().splitlines()
        lines[2] = lines[2][:-5]  # a truncated JSON line
        (data / corrupt).write_text("\n".join(lines) + "\n")
    result = cli("experiment=smoke", f"paths.runs={tmp_path / 'runs'}", f"paths.data={data}", *overrides)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_no_secret_reaches_the_run_folder(smoke_run):
    run_dir, _, _ = smoke_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in SECRETS.values():
                assert secret.encode() not in blob, path


def test_wandb_failure_degrades_to_local_logging(tmp_path):
    result = cli("experiment=smoke", f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}", "eval.enabled=false",
                 "logger.mode=online", "logger.init_timeout=5", "run_name=nowandb",
                 env_extra={"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("W&B disabled for this run") == 1
    records = (tmp_path / "smoke" / "nowandb" / "metrics.jsonl").read_text().splitlines()
    assert any('"stage": "dpo"' in r for r in records)


@pytest.mark.parametrize(
    "k, final, every, expected",
    [
        (0, 3, 0, True),  # M0: always
        (3, 3, 0, True),  # the final model: always
        (1, 3, 0, False),
        (2, 3, 0, False),
        (1, 3, 1, True),
        (2, 4, 2, True),
        (3, 4, 2, False),
    ],
)
def test_eval_every_picks_the_models_between_m0_and_the_final_one(k, final, every, expected):
    from cream.loop import evaluated

    assert evaluated(k, final, every) is expected


def test_eval_every_zero_evaluates_only_m0_and_the_final_model(tmp_path):
    result = cli("experiment=smoke", f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}", "eval.every=0",
                 "eval.tasks=[arc_easy]", "logger.mode=disabled", "run_name=ends")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "smoke" / "ends"
    assert (run_dir / "iter_0" / "evaluate_m0" / "DONE").is_file()
    assert not (run_dir / "iter_0" / "evaluate").exists()  # M1, between M0 and the final M2
    assert (run_dir / "iter_1" / "evaluate" / "DONE").is_file()
    evaluated_models = {json.loads(r)["iteration"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()
                        if '"eval/average"' in r}
    assert evaluated_models == {0, 1}
