"""analysis.compare on a real smoke run, relabelled into two methods and a second seed: figures, table, errors."""

import csv
import json
import os
import subprocess
import sys

import pytest

from analysis.compare import compare
from analysis.figures import FIGURES, OFFSET_SPAN, offsets, plot, y_range
from analysis.load import group_methods, load_run
from analysis.stats import Point, points
from analysis.upload import wandb_unavailable
from tests.conftest import FIXTURE_DATA, REPO
from tests.test_integration import cli

SHIFT = 10.0  # added to every eval/* score of the copied second seed, so the mean moves by SHIFT / 2


def _copy_run(src, dst, config_changes=None, edit=lambda record: record):
    """A run folder with src's run.json (config updated) and metrics.jsonl (each record edited)."""
    dst.mkdir(parents=True)
    manifest = json.loads((src / "run.json").read_text())
    manifest["config"].update(config_changes or {})
    (dst / "run.json").write_text(json.dumps(manifest))
    records = [edit(json.loads(line)) for line in (src / "metrics.jsonl").read_text().splitlines()]
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _shift_scores(record):
    return {k: v + SHIFT if k.startswith("eval/") else v for k, v in record.items()}


def _drop_reward_accuracy(record):  # as in runs made before the diagnostics existed
    return {k: v for k, v in record.items() if not k.startswith(("reward_accuracy/", "explore/"))}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _scores(records):
    """model index -> its evaluate record: M0 from evaluate_m0, M_{t+1} from iteration t's evaluate."""
    return {0 if r["stage"] == "evaluate_m0" else r["iteration"] + 1: r for r in records if r["stage"].startswith("evaluate")}


def compare_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "analysis.compare", *map(str, args)], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/smoke/{s0, s1} (two seeds of one method) and runs/smoke_srlm/s0 (another method, older keys)."""
    root = tmp_path_factory.mktemp("runs")
    result = cli("experiment=smoke", f"paths.runs={root}", f"paths.data={FIXTURE_DATA}", "run_name=s0", "eval.limit=2")
    assert result.returncode == 0, result.stderr[-3000:]
    src = root / "smoke" / "s0"
    _copy_run(src, root / "smoke" / "s1", {"seed": 1}, _shift_scores)
    _copy_run(src, root / "smoke_srlm" / "s0", {"experiment_name": "smoke_srlm"}, _drop_reward_accuracy)
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, compare([runs], out)


def test_figures_and_summary_are_written(report):
    out, _ = report
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1024, name
    summary = (out / "summary.md").read_text()
    assert "| smoke | M0 | 2 |" in summary and "| smoke_srlm | M2 | 1 |" in summary
    assert "smoke/s0" in summary and "smoke_srlm/s0" in summary


def test_seeds_are_averaged_and_methods_kept_apart(runs, report):
    _, summary = report
    assert set(summary) == {"smoke", "smoke_srlm"}
    assert len(summary["smoke"]["runs"]) == 2
    records = _records(runs / "smoke" / "s0")
    evals = _scores(records)
    assert sorted(summary["smoke"]["models"]) == sorted(evals) == [0, 1, 2]
    for k, record in evals.items():
        assert summary["smoke"]["models"][k]["eval/average"] == pytest.approx(record["eval/average"] + SHIFT / 2)
        assert summary["smoke_srlm"]["models"][k]["eval/average"] == pytest.approx(record["eval/average"])
    pairs = next(r for r in records if r["stage"] == "pairs")
    assert summary["smoke"]["iterations"][1]["pairs/kept"] == pairs["pairs/kept"]


def test_runs_without_reward_accuracy_are_skipped_not_failed(runs, report):
    _, summary = report
    assert "reward_accuracy/chosen_correct" in summary["smoke"]["iterations"][1]
    assert not any(k.startswith("reward_accuracy/") for k in summary["smoke_srlm"]["iterations"][1])


def test_runs_of_one_experiment_differing_in_a_setting_are_told_apart(runs, tmp_path):
    src = runs / "smoke" / "s0"
    _copy_run(src, tmp_path / "runs" / "a", {"regularizer": {"name": "cream_dyn", "measure": "kendall"}})
    _copy_run(src, tmp_path / "runs" / "b", {"regularizer": {"name": "none", "measure": "kendall"}})
    summary = compare([tmp_path / "runs"], tmp_path / "out")
    assert set(summary) == {"smoke [regularizer.name=cream_dyn]", "smoke [regularizer.name=none]"}


def test_wandb_export_csv_reads_like_the_run(runs, tmp_path):
    records = _records(runs / "smoke" / "s0")
    columns = ["experiment_name", *dict.fromkeys(k for r in records for k in r)]
    export = tmp_path / "export.csv"
    with open(export, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({"experiment_name": "exported", **r} for r in records)
    exported = compare([], tmp_path / "out", exports=[export])["exported"]
    assert exported["models"] == {k: {key: v for key, v in r.items() if key.startswith("eval/")}
                                  for k, r in _scores(records).items()}
    pairs = next(r for r in records if r["stage"] == "pairs")
    assert exported["iterations"][1]["pairs/kept"] == pairs["pairs/kept"]


def test_cli_prints_the_table_and_skips_wandb_offline(runs, tmp_path):
    result = compare_cli(runs, "--out", tmp_path / "out", "--wandb-upload", WANDB_MODE="offline")
    assert result.returncode == 0, result.stderr
    assert "| smoke_srlm | M2 |" in result.stdout
    assert "W&B upload skipped: WANDB_MODE=offline" in result.stdout


@pytest.mark.parametrize("env, netrc, reason", [
    ({"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, "", "WANDB_MODE=disabled"),
    ({}, "", "no API key"),
    ({"WANDB_API_KEY": "k"}, "", None),
    ({}, "machine api.wandb.ai login user password k\n", None),  # after `wandb login`
])
def test_wandb_upload_needs_online_mode_and_a_key(monkeypatch, tmp_path, env, netrc, reason):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "netrc").write_text(netrc)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    why = wandb_unavailable()
    assert why is None if reason is None else why.startswith(reason)


def test_malformed_metrics_line_fails_naming_file_and_line(runs, tmp_path):
    run_dir = tmp_path / "smoke" / "bad"
    _copy_run(runs / "smoke" / "s0", run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]  # a truncated record
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = compare_cli(tmp_path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert f"{run_dir / 'metrics.jsonl'}:2" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty", "missing"])
def test_no_run_found_fails_naming_the_path(tmp_path, make):
    path = tmp_path / "nothing_here"
    make(path)
    result = compare_cli(path, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert str(path) in result.stderr and "Traceback" not in result.stderr


# --- the numbers the figures draw and the summary prints, on hand-made runs ----------------------------------


def _hand_run(root, method, seed, scores, stderr=None):
    """A run folder of `method` whose models M0, M1, ... scored `scores[k]` on arc_easy (and the average)."""
    folder = root / method / f"s{seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"config": {"experiment_name": method, "seed": seed}}))
    records = [{"iteration": max(k - 1, 0), "stage": "evaluate_m0" if k == 0 else "evaluate",
                "eval/arc_easy": score, "eval/average": score,
                **({"eval/arc_easy_stderr": stderr[k]} if stderr else {})} for k, score in enumerate(scores)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture
def seeded(tmp_path):
    """Method `a` over three seeds (arc_easy 40, 50, 60 at M1; standard errors 4, 5, 9), `b` and `c` one seed
    each, tied with each other at every model."""
    root = tmp_path / "runs"
    for seed, (score, se) in enumerate([(40.0, 4.0), (50.0, 5.0), (60.0, 9.0)]):
        _hand_run(root, "a", seed, [30.0, score], [3.0, se])
    for method in ("b", "c"):
        _hand_run(root, method, 0, [30.0, 35.0])
    return root


def _methods(root):
    return group_methods([load_run(d) for d in sorted(p.parent for p in root.rglob("run.json"))])[1]


def test_points_are_the_mean_sd_and_standard_error_over_seeds(seeded):
    methods = _methods(seeded)
    m0, m1 = points(methods["a"]["models"], "eval/arc_easy")
    assert (m1.x, m1.mean, m1.sd, m1.stderr, sorted(m1.seeds)) == (1, 50.0, pytest.approx(10.0), 6.0, [40.0, 50.0, 60.0])
    assert (m0.mean, m0.sd) == (30.0, 0.0)  # the three seeds agree: no spread, not "no sd"
    single, = points(methods["b"]["models"], "eval/arc_easy")[1:]
    assert (single.mean, single.sd, single.stderr, single.seeds) == (35.0, None, None, [35.0])  # one seed: no sd


def test_the_summary_gives_mean_and_sd_over_seeds_with_their_count(seeded, tmp_path):
    compare([seeded], tmp_path / "out")
    text = (tmp_path / "out" / "summary.md").read_text().split("## Across seeds", 1)[1]
    assert "| a | M1 | 3 | 50.0 ± 10.0 | 50.0 ± 10.0 |" in text
    assert "| b | M1 | 1 | 35.0 | 35.0 |" in text


@pytest.mark.parametrize("values, expected", [
    ([0.03], (0.0, 20.0)),  # a flat line near 0 gets two whole steps, never +-0.04
    ([50.0], (40.0, 60.0)),
    ([33.0, 47.0], (30.0, 50.0)),
    ([99.5, 100.0], (80.0, 100.0)),  # kept inside the bounds
    ([2.0, 95.0], (0.0, 100.0)),
])
def test_y_range_is_whole_steps_at_least_two_tall_within_bounds(values, expected):
    assert y_range([Point(0, v, None, None, [v]) for v in values], (0.0, 100.0), 10.0) == expected


def test_y_range_covers_error_bars_and_seeds():
    spread = Point(0, 50.0, 8.0, 3.0, [41.0, 59.0, 50.0])
    measured = Point(1, 20.0, None, 12.0, [20.0])
    assert y_range([spread, measured], (0.0, 100.0), 10.0) == (0.0, 60.0)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_offsets_are_distinct_centred_and_within_the_span(n):
    shift = offsets(n)
    assert len(set(shift)) == n and sum(shift) == pytest.approx(0.0)
    assert max(shift) - min(shift) == pytest.approx(OFFSET_SPAN if n > 1 else 0.0)


def test_tied_methods_are_drawn_apart_on_one_shared_range(seeded, tmp_path):
    methods = _methods(seeded)
    panels = [("eval/arc_easy", "arc_easy"), ("eval/average", "average")]
    fig = plot(tmp_path / "b.png", "t", "accuracy", panels, methods, "models", "model", "M{}", ylim=(20.0, 70.0),
                percent_of=100)
    for ax in fig.axes[:len(panels)]:
        low, high = ax.get_ylim()
        assert 0 < 20.0 - low == pytest.approx(high - 70.0) and high - 70.0 < 5.0  # the range and a small margin
        lines = {line.get_label(): line for line in ax.get_lines()}
        xs = {label: list(line.get_xdata()) for label, line in lines.items() if label in methods}
        ys = {label: list(line.get_ydata()) for label, line in lines.items() if label in methods}
        assert ys["b"] == ys["c"] == [30.0, 35.0]  # tied ...
        assert all(xb != xc for xb, xc in zip(xs["b"], xs["c"]))  # ... yet side by side
        assert len({line.get_marker() for line in lines.values() if line.get_label() in methods}) == 3


def test_runs_on_other_data_are_not_seeds_and_a_repeated_seed_is_refused(tmp_path):
    """Issue 21 case 4: two seed-0 runs of one preset on different data read as one method with 2 seeds."""
    from cream.errors import DataError

    root = tmp_path / "runs"
    for name, prompts in (("shards_a", "digest-a"), ("shards_b", "digest-b")):
        folder = _hand_run(root, "a", 0, [30.0, 40.0]).rename(root / "a" / name)
        manifest = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**manifest, "data": {"prompts": prompts}}))
    methods = _methods(root)
    assert sorted(methods) == ["a [data_identity.prompts=digest-a]", "a [data_identity.prompts=digest-b]"]
    assert all(len(m["runs"]) == 1 for m in methods.values())
    # seeds 0 and 1 draw other shards from the same data (the study's design): one method with 2 seeds
    seeded = tmp_path / "seeded"
    for seed, prompts in ((0, "digest-s0"), (1, "digest-s1")):
        folder = _hand_run(seeded, "a", seed, [30.0, 40.0])
        manifest = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**manifest, "data": {"prompts": prompts, "eval_files": {"x": "h"}}}))
    assert {label: len(m["runs"]) for label, m in _methods(seeded).items()} == {"a": 2}
    # ... but evaluation files of other contents are other data, whatever the seeds
    (folder / "run.json").write_text(json.dumps({**manifest, "data": {"prompts": "digest-s1", "eval_files": {"x": "other"}}}))
    assert len(_methods(seeded)) == 2
    same = tmp_path / "same"
    _hand_run(same, "a", 0, [30.0, 40.0]).rename(same / "a" / "first")
    _hand_run(same, "a", 0, [30.0, 41.0])
    with pytest.raises(DataError, match="two runs of a with seed 0"):
        _methods(same)


def test_the_position_panel_joins_length_png_only_when_a_pairwise_judge_logged_it(seeded, tmp_path):
    from analysis.figures import LENGTH_PANELS, POSITION_PANEL, bias_panels

    assert bias_panels(_methods(seeded)) == LENGTH_PANELS  # score or no judge: nothing has an order
    folder = _hand_run(tmp_path / "runs", "selfref", 0, [30.0, 35.0])
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 1, "stage": "reward", POSITION_PANEL[0]: 0.25}) + "\n")
    methods = _methods(tmp_path / "runs")
    assert bias_panels(methods) == LENGTH_PANELS + [POSITION_PANEL]
    assert [p.mean for p in points(methods["selfref"]["iterations"], POSITION_PANEL[0])] == [0.25]
