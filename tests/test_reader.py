"""The reader of a run folder (cream.runs.reader): the layout the loop writes, its models, evaluations and metrics."""

import json

import pytest

from cream.runs.model_ref import ModelRef
from cream.errors import DataError
from cream.runs import reader
from cream.runs.reader import RunReader, evaluated_model, find_runs


def test_the_stage_folders_read_are_the_stages_names():
    from cream.stages import dpo, evaluate, sft

    assert (reader.SFT, reader.DPO, reader.EVALUATE) == (sft.NAME, dpo.NAME, evaluate.NAME)


@pytest.mark.parametrize("iteration, stage, k", [(0, "evaluate_m0", 0), (0, "evaluate", 1), (2, "evaluate", 3),
                                                 (1, "pairs", None), (0, "sft", None)])
def test_an_evaluate_record_names_the_model_it_scored(iteration, stage, k):
    assert evaluated_model(iteration, stage) == k


def _complete(stage_dir, artifacts=None):
    stage_dir.mkdir(parents=True)
    (stage_dir / "manifest.json").write_text(json.dumps({"outputs": {}, "artifacts": artifacts or {}}))
    (stage_dir / "DONE").write_text("")


def _trained(stage_dir, name):
    """A completed training stage whose model is an adapter inside the run folder, stored as the loop stores it."""
    adapter = f"run:{stage_dir.parent.name}/{stage_dir.name}/adapter"
    _complete(stage_dir, {"model": {"model": {"name": name, "base": "/models/base", "adapter": adapter}}})


@pytest.fixture
def run(tmp_path):
    """A run of two iterations: SFT and the first DPO complete, the second DPO not; M0 and M1 evaluated."""
    folder = tmp_path / "exp" / "r"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": {"iterations": 2, "seed": 3}, "data": {"prompts": "p"}}))
    (folder / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "stage": "evaluate_m0", "eval/x": 1.0}) + "\n")
    _trained(folder / "iter_0" / "sft", "m1")
    _trained(folder / "iter_1" / "dpo", "m2")
    (folder / "iter_2" / "dpo").mkdir(parents=True)  # begun, not complete
    for k, stage_dir in enumerate([folder / "iter_0" / "evaluate_m0", folder / "iter_0" / "evaluate"]):
        _complete(stage_dir)
        (stage_dir / "eval.json").write_text(json.dumps({"scores": {"x": k}}))
        (stage_dir / "predictions.jsonl").write_text(json.dumps({"id": "a", "score": k}) + "\n")
    return folder


def test_the_models_are_those_trained_with_their_paths_inside_the_folder(run):
    m0 = ModelRef("m0", "/models/base")
    m1, m2 = RunReader(run).models(m0, sft_enabled=True)[1:]
    assert m1 == ModelRef("m1", "/models/base", str(run / "iter_0" / "sft" / "adapter"))
    assert m2 == ModelRef("m2", "/models/base", str(run / "iter_1" / "dpo" / "adapter"))
    assert RunReader(run).models(m0, sft_enabled=False)[:2] == [m0, ModelRef("m1", "/models/base")]


def test_a_run_before_its_sft_has_only_m0(run):
    (run / "iter_0" / "sft" / "DONE").unlink()
    assert RunReader(run).models(ModelRef("m0", "/models/base"), sft_enabled=True) == [ModelRef("m0", "/models/base")]


def test_config_data_metrics_and_evaluations(run):
    folder = RunReader(run)
    assert folder.exists() and folder.config == {"iterations": 2, "seed": 3} and folder.data == {"prompts": "p"}
    assert folder.metrics() == [{"iteration": 0, "stage": "evaluate_m0", "eval/x": 1.0}]
    assert [folder.evaluated(k) for k in range(4)] == [True, True, False, False]
    assert folder.evaluation(1).report == {"scores": {"x": 1}} and folder.evaluation(1).predictions == [{"id": "a", "score": 1}]
    assert folder.evaluation(2) is None
    assert find_runs(run.parent.parent) == [run] == find_runs(run / "run.json")


def test_a_malformed_metrics_line_names_file_and_line(run):
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n{"iter\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: malformed JSON"):
        RunReader(run).metrics()


def test_no_run_found_names_the_path(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.json").write_text("{}")  # no metrics.jsonl: not a run that logged
    with pytest.raises(DataError, match="no run folder"):
        find_runs(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        find_runs(tmp_path / "missing")
