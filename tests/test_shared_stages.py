"""M0's evaluation shared between runs (`cream.loop.shared_stage_dir`): copied only under the same fingerprint
from a complete, undamaged copy; published atomically after computing. A real Run folder and stage runner;
the stage is a counter that writes one file."""

import json
from types import SimpleNamespace

import pytest

from cream.config import LoggerConfig, ModelConfig, PathsConfig
from cream.config.engine import ModelSource
from cream.config.runs import LoggerMode
from cream.loop import Run, shared_stage_dir
from cream.plugins.contracts import Context
from cream.plugins.registry import config_class
from cream.runs.model_ref import ModelRef
from cream.stages import StageResult


def _stage(calls):
    def run(ctx, stage_dir):
        calls.append(stage_dir)
        (stage_dir / "eval.json").write_text(json.dumps({"limit": ctx.cfg.eval.limit}))
        return StageResult({"eval/x": float(ctx.cfg.eval.limit)}, {"eval": stage_dir / "eval.json"})

    return SimpleNamespace(NAME="evaluate", CONFIG=("eval", "model", "seed"), READS=(), DATA=("eval_files",), run=run)


def _run(tmp_path, run_name, limit=2):
    cfg = config_class()(experiment_name="shared", run_name=run_name, logger=LoggerConfig(mode=LoggerMode.disabled),
                         model=ModelConfig(name="tiny", source=ModelSource.tiny, max_length=128),
                         paths=PathsConfig(runs=str(tmp_path / "runs"), cache=str(tmp_path / "cache")))
    cfg.eval.limit = limit
    run = Run(cfg, {"prompts": "p", "sft_examples": "s", "eval_files": {"arc_easy/validation.jsonl": "h"}})
    ctx = Context(cfg=cfg, pool=None, device="cpu", logger=run.logger, data_dir=None, prompts=[], sft_examples=[],
                  models=[ModelRef("m0", str(tmp_path / "m0"))])
    return run, ctx


@pytest.fixture
def m0(tmp_path):
    folder = tmp_path / "m0"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_a_second_run_copies_m0s_evaluation_and_other_settings_recompute(tmp_path, m0):
    calls = []
    stage = _stage(calls)
    first, ctx = _run(tmp_path, "a")
    shared = shared_stage_dir(ctx.cfg, str(m0), "evaluate_m0")
    assert first.stage(ctx, stage, "evaluate_m0", shared).metrics["eval/x"] == 2.0 and len(calls) == 1
    (published,) = shared.iterdir()  # one folder per fingerprint
    assert (published / "DONE").is_file() and (published / "eval.json").is_file()

    manifest = json.loads((published / "manifest.json").read_text())
    manifest["metrics"]["time/evaluate_m0"] = 999.0  # as if computing it had taken long
    (published / "manifest.json").write_text(json.dumps(manifest))
    second, ctx = _run(tmp_path, "b")
    result = second.stage(ctx, stage, "evaluate_m0", shared)
    assert len(calls) == 1 and result.metrics["eval/x"] == 2.0  # copied, not computed
    copied = second.dir / "iter_0" / "evaluate_m0"
    assert (copied / "eval.json").read_bytes() == (published / "eval.json").read_bytes()
    assert result.outputs["eval"] == copied / "eval.json"  # the run's own copy, not the shared folder
    assert json.loads((copied / "manifest.json").read_text())["copied_from"] == str(published)
    assert [json.loads(l)["eval/x"] for l in (second.dir / "metrics.jsonl").read_text().splitlines()] == [2.0]
    assert result.metrics["time/evaluate_m0"] < 5  # this run's time: the copy's, not the computing run's

    third, ctx = _run(tmp_path, "c", limit=3)  # another eval setting: another fingerprint, published beside
    assert third.stage(ctx, stage, "evaluate_m0", shared).metrics["eval/x"] == 3.0 and len(calls) == 2
    assert len(list(shared.iterdir())) == 2
    fourth, ctx = _run(tmp_path, "d", limit=3)
    assert fourth.stage(ctx, stage, "evaluate_m0", shared).metrics["eval/x"] == 3.0 and len(calls) == 2


def test_a_run_that_evaluated_m0_before_sharing_existed_publishes_it_when_resumed(tmp_path, m0):
    calls = []
    stage = _stage(calls)
    first, ctx = _run(tmp_path, "a")
    first.stage(ctx, stage, "evaluate_m0")  # no shared folder then
    shared = shared_stage_dir(ctx.cfg, str(m0), "evaluate_m0")
    del first, ctx  # the run ends: its folder's lock is released
    first, ctx = _run(tmp_path, "a")
    first.stage(ctx, stage, "evaluate_m0", shared)  # reused from its own folder, and published
    second, ctx = _run(tmp_path, "b")
    second.stage(ctx, stage, "evaluate_m0", shared)
    assert len(calls) == 1


def test_a_damaged_shared_copy_is_recomputed_not_served(tmp_path, m0, caplog):
    calls = []
    stage = _stage(calls)
    first, ctx = _run(tmp_path, "a")
    shared = shared_stage_dir(ctx.cfg, str(m0), "evaluate_m0")
    first.stage(ctx, stage, "evaluate_m0", shared)
    (published,) = shared.iterdir()
    (published / "eval.json").write_text('{"limit": 99}')
    second, ctx = _run(tmp_path, "b")
    assert second.stage(ctx, stage, "evaluate_m0", shared).metrics["eval/x"] == 2.0 and len(calls) == 2
    assert "hash mismatch" in caplog.text


def test_the_shared_folder_follows_m0s_files(tmp_path, m0):
    cfg = config_class()(paths=PathsConfig(cache=str(tmp_path / "cache")))
    before = shared_stage_dir(cfg, str(m0), "evaluate_m0")
    assert shared_stage_dir(cfg, str(m0), "evaluate_m0") == before
    (m0 / "model.safetensors").write_bytes(b"other weights")  # changed in place: never served the old result
    assert shared_stage_dir(cfg, str(m0), "evaluate_m0") != before
    assert shared_stage_dir(cfg, "HuggingFaceTB/SmolLM2-135M-Instruct", "evaluate_m0") != before  # a hub id
