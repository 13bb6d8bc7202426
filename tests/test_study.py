"""The study (analysis/study.py): every run composes and validates at both scales, the methods of a seed
share their shards, and the analysis covers whatever runs have finished."""

import json

import pytest

import analysis.study
from analysis.study import METHODS, SCALES, analyse, grid, main, overrides, run_all, run_dir, run_name
from cream.config import to_plain_dict
from cream.data.load import load_prompts, shard
from tests.conftest import FIXTURE_DATA
from tests.test_sweeps import _load

RUNS = "/tmp/study-runs"  # paths.runs is only composed here, never written
# What decides a run's prompt shards (load_prompts, shard) and its M1 (SFT): the same for the methods of a seed.
SHARED_WITHIN_SEED = ("seed", "iterations", "data", "sft", "model", "sampling")
TASKS = {"cpu": ["arc_easy", "arc_challenge", "openbookqa", "siqa", "truthfulqa"],
         "control": ["arc_easy", "arc_challenge", "openbookqa", "siqa"]}
TASKS["gpu"] = TASKS["cpu"]
EVAL = {"cpu": "harness_sized", "gpu": "harness_sized", "control": "paper"}


def _composed(scale):
    """(seed, method) -> (validated Config, group choices) of every run of the scale."""
    return {(seed, method): _load(tuple(overrides(scale, method, seed, RUNS))) for seed, method in grid(scale)}


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_run_composes_validates_and_keeps_its_method(scale):
    runs = _composed(scale)
    assert sorted(runs) == sorted((s, m) for s in SCALES[scale].seeds for m in METHODS)
    for (seed, method), (cfg, choices) in runs.items():
        assert (choices["experiment"], cfg.experiment_name, cfg.seed) == (method, method, seed)
        assert cfg.run_name == run_name(scale, seed) and cfg.paths.runs == RUNS
        assert choices["eval"] == EVAL[scale] and cfg.eval.tasks == TASKS[scale] and cfg.iterations == 2
    # the scale changes sizes, not the method: the rewarder and regularizer of each preset stay
    methods = {m: (cfg.rewarder.name, cfg.regularizer.name.value) for (s, m), (cfg, _) in runs.items() if s == 0}
    assert methods == {"srlm_smollm": ("judge", "none"), "cream_smollm": ("implicit", "cream_dyn"),
                       "oracle_smollm": ("oracle", "none")}


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_the_methods_of_a_seed_share_shards_and_all_runs_share_the_evaluation(scale):
    plain = {key: to_plain_dict(cfg) for key, (cfg, _) in _composed(scale).items()}
    for seed in SCALES[scale].seeds:
        for key in SHARED_WITHIN_SEED:
            assert len({json.dumps(plain[seed, m][key], sort_keys=True) for m in METHODS}) == 1, (scale, seed, key)
    # the same items for every run, so the paired bootstrap applies between any two
    assert len({json.dumps(c["eval"], sort_keys=True) for c in plain.values()}) == 1


def test_the_cpu_shards_are_the_same_prompts_for_the_methods_of_a_seed_and_differ_across_seeds():
    """On the fixture data, which holds enough prompts for the cpu scale's shards."""
    shards = {}
    for (seed, method), (cfg, _) in _composed("cpu").items():
        prompts = load_prompts(cfg.data, FIXTURE_DATA, cfg.seed)
        shards[seed, method] = [[p["id"] for p in shard(prompts, t, cfg.data.shard_size)]
                                for t in range(1, cfg.iterations + 1)]
    for seed in SCALES["cpu"].seeds:
        assert shards[seed, METHODS[0]] == shards[seed, METHODS[1]] == shards[seed, METHODS[2]]
    assert shards[0, METHODS[0]] != shards[1, METHODS[0]]


def test_the_gpu_scale_refuses_to_fall_back_to_the_cpu():
    cfg, _ = _load(tuple(overrides("gpu", METHODS[0], 0, RUNS)))
    assert cfg.device == "cuda"


def test_run_folders_are_distinct_across_runs_and_scales():
    folders = [run_dir(RUNS, scale, m, s) for scale in SCALES for s, m in grid(scale)]
    assert len(set(folders)) == len(folders) == sum(len(SCALES[scale].seeds) for scale in SCALES) * len(METHODS)


# --- the analysis over hand-made run folders -----------------------------------------------------------

ITERATIONS = 2


def _make_run(root, method, seed, models, score):
    """A run folder of the cpu study whose models M0..M_{models-1} were evaluated, each task at `score(k)`;
    finished (the last evaluation's DONE mark) when every model was."""
    folder = run_dir(root, "cpu", method, seed)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": {"experiment_name": method, "seed": seed,
                                                            "iterations": ITERATIONS}}))
    records = [{"iteration": 0 if k < 2 else k - 1, "stage": "evaluate_m0" if k == 0 else "evaluate",
                **{f"eval/{t}": score(k) for t in [*TASKS, "average"]}} for k in range(models)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if models == ITERATIONS + 2:
        (folder / f"iter_{ITERATIONS}" / "evaluate").mkdir(parents=True)
        (folder / f"iter_{ITERATIONS}" / "evaluate" / "DONE").write_text("")


def _rows(summary, section):
    """The table rows of a section of summary.md, as lists of cells."""
    text = summary.split(section, 1)[1].split("\n#", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def test_the_analysis_reports_what_finished_and_names_what_did_not(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        for method in METHODS:
            _make_run(runs, method, seed, ITERATIONS + 2, lambda k, s=seed: 30.0 + 10 * s + k)
    _make_run(runs, "cream_smollm", 2, 2, lambda k: 60.0)  # seed 2: CREAM stopped after M1; SRLM, Oracle not started
    summary = analyse("cpu", runs, tmp_path / "out")

    assert summary["cream_smollm"]["models"][0]["eval/average"] == pytest.approx((30 + 40 + 60) / 3)
    assert summary["cream_smollm"]["models"][3]["eval/average"] == pytest.approx((33 + 43) / 2)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "6 of 9 runs finished" in text
    assert "- cream_smollm seed 2 (study-cpu-s2): unfinished" in text
    assert "- srlm_smollm seed 2 (study-cpu-s2): missing" in text and "- oracle_smollm seed 2 (study-cpu-s2): missing" in text
    seeds = {(r[0], r[1]): r for r in _rows(text, "## Across seeds")}
    assert seeds["cream_smollm", "M0"][2:4] == ["3", "43.3 ± 15.3"]  # 30, 40, 60: sd 15.28
    assert seeds["cream_smollm", "M3"][2:4] == ["2", "38.0 ± 7.1"]  # 33, 43: sd 7.07
    assert seeds["srlm_smollm", "M3"][2:4] == ["2", "38.0 ± 7.1"]


def test_the_cli_without_any_run_fails_naming_the_folder(tmp_path, capsys):
    assert main(["--scale", "cpu", "--runs", str(tmp_path), "--analyse-only"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "make study STUDY_SCALE=cpu" in err


def _fake_train(monkeypatch, exit_codes):
    """train.py replaced by a recorder: the i-th call exits with exit_codes.get(i, 0)."""
    calls = []

    def run(command, cwd):
        calls.append(command[2:])
        return type("Completed", (), {"returncode": exit_codes.get(len(calls) - 1, 0)})()

    monkeypatch.setattr(analysis.study.subprocess, "run", run)
    return calls


def test_the_runs_go_seed_by_seed_and_a_failed_run_does_not_stop_the_others(monkeypatch, tmp_path):
    calls = _fake_train(monkeypatch, {1: 2})
    failed = run_all("cpu", tmp_path)
    assert calls == [overrides("cpu", m, s, tmp_path) for s in SCALES["cpu"].seeds for m in METHODS]
    assert failed == ["cream_smollm seed 0 (exit 2)"]


def test_ctrl_c_in_a_run_stops_the_study(monkeypatch, tmp_path):
    calls = _fake_train(monkeypatch, {0: 130})
    assert main(["--scale", "cpu", "--runs", str(tmp_path)]) == 130
    assert len(calls) == 1
