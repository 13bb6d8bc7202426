"""Standard errors and paired bootstrap differences (cream.eval.stats), and their use in analysis.compare."""

import json
import math

import pytest

from analysis.compare import compare
from cream.eval.stats import Difference, average_stderr, paired_bootstrap, score_stderr


def test_binomial_stderr_by_hand():
    # p = 3/4, n = 4: sqrt(0.75 * 0.25 / 4) = sqrt(0.046875)
    assert score_stderr([1, 1, 1, 0]) == pytest.approx(0.21650635, abs=1e-8)
    assert score_stderr([1, 1]) == 0.0
    assert math.isnan(score_stderr([]))


def test_sample_stderr_of_non_binary_scores_by_hand():
    # mean 0.5, squared deviations 0.09 + 0.01 + 0.01 + 0.09 = 0.2; s^2 = 0.2 / 3; se = sqrt(0.2 / 3 / 4)
    assert score_stderr([0.2, 0.4, 0.6, 0.8]) == pytest.approx(math.sqrt(0.2 / 12), abs=1e-12)
    assert average_stderr([0.3, 0.4]) == pytest.approx(0.25)  # sqrt(0.09 + 0.16) / 2


def test_paired_bootstrap_of_identical_runs_is_zero():
    a = {"x": [1, 0, 1, 1, 0, 0, 1, 0], "y": [0.2, 0.9, 0.4]}
    diffs = paired_bootstrap(a, a, resamples=10_000, seed=0)
    for d in diffs.values():
        assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0) and d.within_noise


def test_paired_bootstrap_when_one_run_wins_every_item():
    a = {"x": [1] * 10, "y": [1] * 20}
    b = {"x": [0] * 10, "y": [0] * 20}
    diffs = paired_bootstrap(a, b, resamples=10_000, seed=0)
    assert (diffs["x"].diff, diffs["x"].low, diffs["x"].high) == (1.0, 1.0, 1.0)
    assert diffs["average"].diff == 1.0 and not diffs["average"].within_noise
    assert diffs["average"].describe("CREAM", "SRLM", scale=100) == "CREAM - SRLM: +100.0 (95% CI +100.0 to +100.0), CREAM higher"


def test_paired_bootstrap_noise_is_never_a_win():
    a, b = {"x": [1, 0] * 10}, {"x": [0, 1] * 10}  # half the items each way: no difference
    diffs = paired_bootstrap(a, b, resamples=10_000, seed=0)
    d = diffs["x"]
    assert d.diff == 0.0 and d.low < 0 < d.high and d.within_noise
    # 20 items, differences +-1: se = 1 / sqrt(20), so the 95% interval is about +-0.44
    assert d.low == pytest.approx(-0.45, abs=0.06) and d.high == pytest.approx(0.45, abs=0.06)
    assert d.describe("CREAM", "SRLM", 100).endswith("within the noise")
    assert paired_bootstrap(a, b, seed=0) == diffs  # seeded: the same interval every time
    assert Difference(0.012, -0.004, 0.028).describe("CREAM", "SRLM", 100) == \
        "CREAM - SRLM: +1.2 (95% CI -0.4 to +2.8), within the noise"


def test_paired_bootstrap_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap({"x": [1, 0]}, {"x": [1]})


def _run(root, name, correct, m0_correct=None):
    """A run folder with M0 and M1 evaluated on arc_easy (ids a0..) and truthfulqa (mc1 unscored, mc2 scored); M0
    scores `m0_correct` on arc_easy when given, else `correct` like M1."""
    run = root / name / "s0"
    run.mkdir(parents=True)
    m1_correct = correct
    (run / "run.json").write_text(json.dumps({"config": {"experiment_name": name, "seed": 0}}))
    records = []
    for k, stage, folder in [(0, "evaluate_m0", "iter_0/evaluate_m0"), (1, "evaluate", "iter_0/evaluate")]:
        correct = m0_correct if k == 0 and m0_correct is not None else m1_correct
        rows = [{"task": "arc_easy", "lm_eval_task": "cream_harness_arc_easy", "id": f"a{i}", "score": float(c)}
                for i, c in enumerate(correct)]
        rows += [{"task": "truthfulqa", "lm_eval_task": "cream_harness_truthfulqa_mc1", "id": f"t{i}", "score": 0.0}
                 for i in range(4)]
        rows += [{"task": "truthfulqa", "lm_eval_task": "cream_harness_truthfulqa_mc2", "id": f"t{i}", "score": 0.5}
                 for i in range(4)]
        (run / folder).mkdir(parents=True)
        (run / folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        arc = 100 * sum(correct) / len(correct)
        (run / folder / "eval.json").write_text(json.dumps({
            "protocol": "harness", "data": "/data", "scores": {"arc_easy": arc, "truthfulqa": 50.0, "average": (arc + 50) / 2}}))
        records.append({"iteration": 0, "stage": stage, "eval/arc_easy": arc, "eval/truthfulqa": 50.0,
                        "eval/average": (arc + 50) / 2, "eval/arc_easy_stderr": 100 * score_stderr(correct),
                        "eval/truthfulqa_stderr": 0.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_compare_reports_paired_differences_and_stderr(tmp_path):
    _run(tmp_path / "runs", "CREAM", [1] * 30)
    _run(tmp_path / "runs", "SRLM", [0] * 30)
    _run(tmp_path / "runs", "SRLM2", [1, 0] * 15)
    summary = compare([tmp_path / "runs"], tmp_path / "out")
    assert set(summary) == {"CREAM", "SRLM", "SRLM2"}  # stderr keys are no benchmark of their own
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| CREAM | M1 | 1 | 100.0 ± 0.0 | 50.0 ± 0.0 | 75.0 |" in text
    assert "| SRLM2 | M1 | 1 | 50.0 ± 9.1 |" in text  # sqrt(0.25 / 30) = 0.0913
    assert "**CREAM (M1, 1 seed) vs SRLM (M1, 1 seed)**, 34 items (one seed each: the interval covers the item noise only):" in text
    assert "  - arc_easy: CREAM - SRLM: +100.0 (95% CI +100.0 to +100.0), CREAM higher" in text
    assert "  - truthfulqa: CREAM - SRLM: +0.0 (95% CI +0.0 to +0.0), within the noise" in text
    assert "  - average: CREAM - SRLM: +50.0 (95% CI +50.0 to +50.0), CREAM higher" in text
    assert "  - arc_easy: SRLM - SRLM2: -50.0 (95% CI -66.7 to -33.3), SRLM2 higher" in text


def test_each_methods_last_model_is_compared_with_its_own_m0(tmp_path):
    """The positive control's line: M1 right on every arc_easy item where M0 was wrong on every one."""
    _run(tmp_path / "runs", "GAIN", [1] * 30, m0_correct=[0] * 30)
    _run(tmp_path / "runs", "FLAT", [1, 0] * 15)
    compare([tmp_path / "runs"], tmp_path / "out")
    text = (tmp_path / "out" / "summary.md").read_text()
    against_m0 = text.split("## Against M0", 1)[1].split("## Differences", 1)[0]
    assert "**GAIN: M1 vs M0** (1 seed), 34 items (one seed: the interval covers the item noise only):" in against_m0
    assert "  - arc_easy: GAIN M1 - GAIN M0: +100.0 (95% CI +100.0 to +100.0), GAIN M1 higher" in against_m0
    assert "  - average: GAIN M1 - GAIN M0: +50.0 (95% CI +50.0 to +50.0), GAIN M1 higher" in against_m0
    assert "  - arc_easy: FLAT M1 - FLAT M0: +0.0 (95% CI +0.0 to +0.0), within the noise" in against_m0
