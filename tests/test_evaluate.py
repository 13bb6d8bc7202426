"""The evaluate stage through lm-eval, on the tiny random model and the fixture data (5 items per task)."""

import json
import shutil
from pathlib import Path

import pytest

from cream.runs.artifacts import read_json, read_jsonl, write_jsonl
from cream.config import EvalConfig
from cream.config.eval import EvalProtocol
from cream.errors import ConfigError, DataError
from cream.evaluate import main
from cream.eval.harness import evaluate_model, wrong_answers
from cream.eval.task_files import KNOWN_TASKS, lm_tasks

LIMIT = 5


@pytest.fixture(scope="module", params=["paper", "harness"])
def evaluated(request, tiny_model_dir, fixture_data, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cfg = EvalConfig(protocol=EvalProtocol(request.param), limit=LIMIT, max_gen_toks=16, batch_size=8)
    scores = evaluate_model(cfg, fixture_data, tiny_model_dir, None, out)
    return request.param, scores, out


def test_scores_and_files(evaluated):
    protocol, scores, out = evaluated
    assert set(scores) == set(KNOWN_TASKS) | {"average"}
    assert all(0.0 <= s <= 100.0 for s in scores.values())
    assert scores["average"] == pytest.approx(sum(scores[t] for t in KNOWN_TASKS) / len(KNOWN_TASKS))

    report = json.loads((out / "eval.json").read_text())
    assert report["scores"] == scores
    assert report["protocol"] == protocol and report["split"] == "validation" and report["limit"] == LIMIT
    predictions = read_jsonl(out / "predictions.jsonl")
    assert report["seconds"] > 0 and report["items"] == len(predictions)
    per_task = {t: [p for p in predictions if p["task"] == t] for t in KNOWN_TASKS}
    # the harness scores TruthfulQA with two lm-eval tasks (mc1 and mc2)
    assert {t: len(p) for t, p in per_task.items()} == {
        t: LIMIT * (2 if protocol == "harness" and t == "truthfulqa" else 1) for t in KNOWN_TASKS
    }
    for p in predictions:
        assert {"task", "id", "question", "prompt", "response", "extracted", "target", "correct"} <= set(p)
    # each task's score is the mean of its items' scores
    for task in ("arc_easy", "siqa", "gsm8k"):
        items = per_task[task]
        assert scores[task] == pytest.approx(100 * sum(p["score"] for p in items) / len(items))
    # TruthfulQA's true option is always first in the file; the paper protocol shuffles it
    if protocol == "paper":
        assert {p["target"] for p in per_task["truthfulqa"]} != {"A"}
        assert all(p["prompt"].rstrip().endswith("assistant") for p in predictions)  # chat template
        assert 'end your response with "Answer: <answer>".' in predictions[0]["prompt"]

    wrong = wrong_answers(out, 4)
    assert len(wrong) <= 4 and all(not w["correct"] for w in wrong)


def test_generation_on_crams_decoder_equals_transformers(evaluated, tiny_model_dir, fixture_data, tmp_path):
    """`eval.backend: torch` (the default, used above) against lm-eval's stock HF generation."""
    protocol, scores, out = evaluated
    cfg = EvalConfig(protocol=EvalProtocol(protocol), limit=LIMIT, max_gen_toks=16, batch_size=8, backend="hf")
    # equal scores; TruthfulQA mc2's probability mass moves with log-likelihoods' float rounding (< 1e-4)
    assert evaluate_model(cfg, fixture_data, tiny_model_dir, None, tmp_path) == pytest.approx(scores, abs=1e-3)
    ours, stock = read_jsonl(out / "predictions.jsonl"), read_jsonl(tmp_path / "predictions.jsonl")
    assert [p["response"] for p in ours] == [p["response"] for p in stock]


def test_rendered_tasks_point_at_absolute_snapshots_of_the_data_files(evaluated, fixture_data):
    """lm-eval reads a copy of each split named by its sha256 (the datasets cache keys a path by its time)."""
    import hashlib

    import yaml

    _, _, out = evaluated
    rendered = sorted((out / "lm_eval_tasks").glob("*.yaml"))
    assert rendered
    for path in rendered:
        config = yaml.safe_load(path.read_text().replace("!function", ""))
        snapshot = Path(config["dataset_kwargs"]["data_files"]["validation"])
        assert snapshot.is_absolute() and snapshot.parent == (out / "lm_eval_tasks" / "data").resolve()
        folder, split = snapshot.name.split("-")[:2]
        original = (fixture_data / folder / f"{split}.jsonl").read_bytes()
        assert snapshot.read_bytes() == original and hashlib.sha256(original).hexdigest()[:16] in snapshot.name
        assert config["test_split"] == "validation"


@pytest.mark.parametrize(
    "limit, limits, expected",
    [
        (None, {"arc_easy": 3}, {"arc_easy": 3, "openbookqa": 6}),  # unnamed tasks: the whole split (6 rows)
        (2, {"arc_easy": 3}, {"arc_easy": 2, "openbookqa": 2}),  # `limit` caps the named ones too
        (None, {"arc_easy": 50}, {"arc_easy": 6, "openbookqa": 6}),  # never more than the split has
    ],
)
def test_per_task_limits_score_the_first_items(tiny_model_dir, fixture_data, tmp_path, limit, limits, expected):
    cfg = EvalConfig(protocol=EvalProtocol.harness, tasks=["arc_easy", "openbookqa"], limit=limit, limits=limits,
                     batch_size=8)
    evaluate_model(cfg, fixture_data, tiny_model_dir, None, tmp_path)
    predictions = read_jsonl(tmp_path / "predictions.jsonl")
    for task, n in expected.items():
        ids = [p["id"] for p in predictions if p["task"] == task]
        rows = read_jsonl(fixture_data / task / "validation.jsonl")
        assert ids == [r["id"] for r in rows[:n]]  # the first n items, in order: every model scores the same ones
    assert read_json(tmp_path / "eval.json")["limits"] == limits


def test_per_task_limits_need_local_data(tmp_path):
    with pytest.raises(ConfigError, match="eval.limits"):
        evaluate_model(EvalConfig(protocol=EvalProtocol.harness, limits={"arc_easy": 3}), None, tmp_path, None, tmp_path)


def test_limit_is_announced(tiny_model_dir, fixture_data, tmp_path, capsys):
    cfg = EvalConfig(protocol=EvalProtocol.harness, tasks=["openbookqa"], limit=2)
    evaluate_model(cfg, fixture_data, tiny_model_dir, None, tmp_path)
    assert "eval.limit=2: scoring 2 items per task (not the full split)" in capsys.readouterr().out


def test_cli(tiny_model_dir, fixture_data, tmp_path, capsys):
    main(["--model", str(tiny_model_dir), "--protocol", "paper", "--tasks", "arc_easy,gsm8k", "--limit", "2",
          "--max-gen-toks", "8", "--data", str(fixture_data), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["scores"]) == {"arc_easy", "gsm8k", "average"}
    assert "average" in capsys.readouterr().out


def _copy_data(fixture_data, tmp_path, task):
    shutil.copytree(fixture_data / task, tmp_path / task)
    return tmp_path / task / "validation.jsonl"


def test_missing_split_file_names_task_and_path(fixture_data, tmp_path):
    cfg = EvalConfig(protocol=EvalProtocol.paper, tasks=["truthfulqa"], split="test")
    with pytest.raises(DataError) as err:
        evaluate_model(cfg, fixture_data, tmp_path / "no-model", None, tmp_path)
    assert "`truthfulqa`" in str(err.value)
    assert str(fixture_data / "truthfulqa_mc" / "test.jsonl") in str(err.value)


@pytest.mark.parametrize(
    "protocol, task, folder, field",
    [
        ("paper", "arc_easy", "arc_easy", "choices"),
        ("paper", "gsm8k", "gsm8k", "answer"),
        ("harness", "siqa", "siqa", "context"),
        ("harness", "truthfulqa", "truthfulqa_mc", "mc2_targets"),
    ],
)
def test_missing_field_is_named(fixture_data, tmp_path, protocol, task, folder, field):
    path = _copy_data(fixture_data, tmp_path, folder)
    rows = read_jsonl(path)
    del rows[2][field]
    write_jsonl(path, rows)
    cfg = EvalConfig(protocol=EvalProtocol(protocol), tasks=[task])
    with pytest.raises(DataError, match=f"`{field}`"):
        evaluate_model(cfg, tmp_path, tmp_path / "no-model", None, tmp_path / "out")


def test_unknown_task_lists_known_ones(fixture_data, tmp_path):
    cfg = EvalConfig(tasks=["arc_easy", "hellaswag"])
    with pytest.raises(ConfigError) as err:
        evaluate_model(cfg, fixture_data, tmp_path / "no-model", None, tmp_path)
    assert "hellaswag" in str(err.value)
    assert all(t in str(err.value) for t in KNOWN_TASKS)


def test_paper_protocol_needs_local_data(tmp_path):
    with pytest.raises(ConfigError, match="paths.data"):
        evaluate_model(EvalConfig(protocol=EvalProtocol.paper), None, tmp_path, None, tmp_path)


def test_hub_tasks_exist_in_lm_eval():
    from lm_eval.tasks import TaskManager

    names = {t.name for task in KNOWN_TASKS for t in lm_tasks(task, EvalProtocol.harness, hub=True)}
    assert names <= set(TaskManager().all_tasks)
