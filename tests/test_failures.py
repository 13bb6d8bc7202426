"""Regression tests for the silently wrong results of issue 21: each case failed (exit 0, wrong or stale result) before its fix."""

import json
import os
import shutil

import pytest

from cream.config import EvalConfig
from cream.config.eval import EvalProtocol
from cream.eval.harness import evaluate_model
from cream.runs.artifacts import read_json, read_jsonl


def test_evaluation_scores_the_file_as_edited_even_when_its_timestamp_is_kept(tiny_model_dir, fixture_data, tmp_path):
    """Issue 21 case 2: the datasets library caches a local file by path and modification time; an edit that keeps
    both (same size, `touch -r`) was scored from the stale cache."""
    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    path = data / "arc_easy" / "validation.jsonl"
    cfg = EvalConfig(protocol=EvalProtocol.harness, tasks=["arc_easy"], limit=1, batch_size=8)
    evaluate_model(cfg, data, tiny_model_dir, None, tmp_path / "before")

    stat = path.stat()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    old_question = rows[0]["question"]
    rows[0]["question"] = old_question[::-1]  # same length: same size, and the time is put back below
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns

    evaluate_model(cfg, data, tiny_model_dir, None, tmp_path / "after")
    before, after = read_jsonl(tmp_path / "before" / "predictions.jsonl"), read_jsonl(tmp_path / "after" / "predictions.jsonl")
    assert old_question in before[0]["prompt"]
    assert rows[0]["question"] in after[0]["prompt"] and old_question not in after[0]["prompt"]
    sha = {run: read_json(tmp_path / run / "eval.json")["data_sha256"]["arc_easy"] for run in ("before", "after")}
    assert sha["before"] != sha["after"]


def test_a_torn_last_metrics_record_is_dropped_so_the_next_one_starts_its_own_line(tmp_path):
    """Issue 21 case 6: with the file's last newline missing, the resumed run appended on the same line and
    `analysis.compare` then failed at `metrics.jsonl:8: malformed JSON`."""
    from cream.config import Config, LoggerConfig
    from cream.config.runs import LoggerMode
    from cream.loop import _logged_stages
    from cream.runs.artifacts import read_jsonl
    from cream.runs.logger import METRICS, RunLogger

    whole = json.dumps({"iteration": 0, "stage": "sft", "sft/loss": 1.0}) + "\n"
    logger = RunLogger(Config(experiment_name="t", run_name="t", logger=LoggerConfig(mode=LoggerMode.disabled)), tmp_path)
    for torn in (whole[:-1], whole[:-9]):  # only the newline lost; the record cut short
        path = tmp_path / METRICS
        path.write_text(whole + torn)
        assert _logged_stages(path) == {(0, "sft")}
        logger.log(1, "sample", {"sample/prompts": 4})
        assert [(r["iteration"], r["stage"]) for r in read_jsonl(path)] == [(0, "sft"), (1, "sample")]


def _write_model(folder):
    """A stand-in for a converted model: a real safetensors file and a config; slow enough for builds to overlap."""
    import time

    import torch
    from safetensors.torch import save_file

    time.sleep(0.5)
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")
    with open(folder.parent / "builds.log", "a") as f:
        f.write("built\n")


def _build(target):
    from cream.engine.models import _cached

    return str(_cached(target, _write_model))


def test_a_damaged_model_cache_is_rebuilt_not_trusted_on_its_mark(tmp_path):
    """Issue 21 case 10: a truncated `model.safetensors` or a deleted `config.json` failed every rerun with a
    traceback (the cache was trusted on its `.complete` mark alone)."""
    from cream.engine.models import cache_problem

    target = tmp_path / "model"
    _build(target)
    assert cache_problem(target) is None
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "model.safetensors" in cache_problem(target)
    _build(target)
    (target / "config.json").unlink()
    assert cache_problem(target) == "config.json is missing"
    _build(target)
    assert cache_problem(target) is None
    assert (tmp_path / "builds.log").read_text().count("built") == 3


def test_two_processes_converting_one_model_at_once_both_get_it(tmp_path):
    """Issue 21 case 11: both used the same `<name>.tmp` folder and deleted each other's (one crashed)."""
    import multiprocessing

    from cream.engine.models import cache_problem

    target = tmp_path / "model"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build, [target, target])
    assert results == [str(target), str(target)] and cache_problem(target) is None
    assert (tmp_path / "builds.log").read_text().count("built") == 1  # the second waited and reused the first's
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "builds.log", "model"]


@pytest.mark.parametrize("damage, where", [
    (lambda path: path.write_text(""), "is empty"),
    (lambda path: path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes()), "validation.jsonl:1"),
])
def test_a_bad_evaluation_file_is_refused_before_any_model_loads(damage, where, fixture_data, tmp_path):
    """Issue 21 case 13: an empty evaluation file, or one starting with a BOM, was found only at the evaluate stage,
    after the run folder and M0's evaluation existed."""
    from tests.test_hostile_inputs import one_error_line
    from tests.test_integration import cli

    data = tmp_path / "data"
    shutil.copytree(fixture_data, data)
    damage(data / "arc_easy" / "validation.jsonl")
    result = cli("experiment=smoke", f"paths.data={data}", f"paths.runs={tmp_path / 'runs'}", "logger.mode=disabled",
                 "run_name=bad-eval", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "arc_easy" in line and where in line
    assert not (tmp_path / "runs" / "smoke" / "bad-eval" / "run.json").exists()  # nothing ran, no run recorded


def test_a_full_disk_seen_by_a_rust_backed_library_is_one_line(tmp_path):
    """Issue 21 case 12: tokenizers and safetensors raise a plain `Exception: No space left on device (os error 28)`,
    which ended in a traceback (exit 1) instead of `error: ...` (exit 2). /dev/full is a real full device."""
    from tokenizers import Tokenizer, models

    from cream.errors import system_error

    with pytest.raises(Exception) as raised:
        Tokenizer(models.BPE()).save("/dev/full")
    assert not isinstance(raised.value, OSError)
    assert system_error(raised.value) == "No space left on device (os error 28)"
    with pytest.raises(OSError) as raised:
        (tmp_path / "missing" / "file").write_text("x")
    assert system_error(raised.value) == f"{tmp_path / 'missing' / 'file'}: No such file or directory"
    assert system_error(ValueError("a bug")) is None  # anything else keeps its traceback


@pytest.mark.parametrize("override", ["dpo.beta=inf", "sampling.temperature=inf", "dpo.lr=nan", "sft.lr=-inf"])
def test_a_non_finite_setting_is_refused_naming_its_key(override, tmp_path):
    """Issue 21 case 1: `dpo.beta=inf` passed validation, trained a NaN adapter and stored `"beta": null`."""
    from tests.test_hostile_inputs import one_error_line
    from tests.test_integration import cli

    result = cli("experiment=smoke", override, f"paths.runs={tmp_path}", "logger.mode=disabled", cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == f"error: config key `{override.split('=')[0]}`: must be a finite number, got " \
                                           f"{float(override.split('=')[1])}"


def test_a_diverged_dpo_saves_nothing_and_resumes_once_the_key_is_changed(fixture_data, tmp_path):
    """Issue 21 case 1: `dpo.lr=1e9` gave an all-NaN adapter that was saved, evaluated at 0.0 and reported, exit 0."""
    from tests.test_hostile_inputs import one_error_line
    from tests.test_integration import cli

    args = ("experiment=smoke", f"paths.data={fixture_data}", f"paths.runs={tmp_path}", "logger.mode=disabled",
            "eval.enabled=false", "run_name=diverged", "iterations=1")
    result = cli(*args, "dpo.lr=1e9", cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result.stderr).startswith("error: dpo: training diverged")
    run_dir = tmp_path / "smoke" / "diverged"
    assert not (run_dir / "iter_1" / "dpo" / "adapter").exists() and (run_dir / "iter_1" / "pairs" / "DONE").is_file()
    resumed = cli(*args, "resume=force", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "iter 1 pairs: complete, reusing" in resumed.stdout + resumed.stderr
    assert (run_dir / "iter_1" / "dpo" / "DONE").is_file()


@pytest.mark.parametrize("sweep, point, expected", [
    ("regularizer_measure_seed", {"regularizer": "cream_dyn", "regularizer.measure": "kendall", "seed": 0},
     "cream_dyn-kendall-s0"),
    ("rewarder", {"rewarder": "likelihood", "seed": 1}, None),
])
def test_sweep_run_names_interpolate_enum_settings_as_their_values(sweep, point, expected):
    """Issue 21 case 7: the str enums rendered as `Class.member` in interpolations: a W&B agent's command for
    `sweeps/regularizer_measure_seed.yaml` made the folder `RegularizerName.none-AgreementMeasure.kendall-s0`."""
    import yaml

    from tests.test_sweeps import REPO, _load, _overrides

    spec = yaml.safe_load((REPO / "sweeps" / f"{sweep}.yaml").read_text())
    run_name = spec["parameters"]["run_name"]["value"]
    cfg, _ = _load(_overrides({**point, "run_name": run_name}))
    assert "." not in cfg.run_name and "Name" not in cfg.run_name, cfg.run_name
    if expected:
        assert cfg.run_name == expected


@pytest.mark.parametrize("overrides, same_folder", [([], False), (["run_name=chosen"], True), (["resume=force"], True)])
def test_a_timestamp_run_name_never_resumes_an_existing_folder(overrides, same_folder, tmp_path):
    """Case 3: two runs of one configuration started in the same second share the timestamp name; the second
    gets a folder of its own (`<timestamp>_2`). A name the user chose (or resume=force) still resumes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from cream.config import load_config
    from cream.runs.run_folder import RunFolder
    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        composed = compose(config_name="config", overrides=["experiment=smoke", f"paths.runs={tmp_path}", *overrides],
                           return_hydra_config=True)
    HydraConfig.instance().set_config(composed)
    first = RunFolder(load_config(composed), {"prompts": "p"})
    first.save("wandb-1")
    first._lock.close()  # the first run has ended
    second_cfg = load_config(composed)  # the same composed config: the same second
    second = RunFolder(second_cfg, {"prompts": "p"})
    assert (second.dir == first.dir) == same_folder
    if not same_folder:
        assert second.dir.name == f"{first.dir.name}_2" == second_cfg.run_name
        assert second.manifest["wandb_id"] is None  # not the old run's W&B id


def test_kept_sample_chunks_are_reused_only_with_as_many_samples_as_asked(tiny_model_dir, tmp_path):
    """Case 9: chunks kept from a run that asked for n=2 are not passed off as n=3 (they were checked on their
    prompts only)."""
    import dataclasses

    from cream.config import ModelConfig, SamplingConfig
    from cream.config.engine import ModelSource
    from cream.engine.generation import generate
    from cream.engine.model_pool import ModelPool
    from cream.engine.models import load_tokenizer
    from cream.runs.model_ref import ModelRef

    model, pool = ModelRef("m0", str(tiny_model_dir)), ModelPool(ModelConfig(name="tiny", source=ModelSource.tiny))
    tokenizer = load_tokenizer(model.base)
    prompts = [tokenizer("a question")["input_ids"]]  # one chunk either way
    sampling = SamplingConfig(n=2, max_new_tokens=4, batch_size=4)
    two = generate(pool, model, tokenizer, prompts, sampling, sampling, 0, tmp_path, "n=2", 64)
    three = generate(pool, model, tokenizer, prompts, dataclasses.replace(sampling, n=3), sampling, 0, tmp_path, "n=3", 64)
    assert [len(r) for r in two] == [2] and [len(r) for r in three] == [3]
