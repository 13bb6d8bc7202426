"""One iteration of the embedded SmolLM2-135M on tiny shards (slow: a few minutes on 2 cores)."""

import json

import pytest

from tests.conftest import FIXTURE_DATA
from tests.test_integration import cli


@pytest.mark.slow
def test_one_iteration_of_the_embedded_model(tmp_path):
    result = cli(
        "experiment=cream_smollm", f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}", "run_name=slow",
        "iterations=1", "data.shard_size=4", "sampling.n=3", "sampling.max_new_tokens=32",
        "sft.max_examples=8", "sft.max_length=256", "eval.limit=2", "eval.max_gen_toks=48",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "cream_smollm" / "slow"
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_stage = {(r["iteration"], r["stage"]): r for r in records}
    assert by_stage[(1, "pairs")]["pairs/kept"] >= 1
    assert 0 <= by_stage[(1, "consistency")]["consistency/mean"] <= 1
    assert by_stage[(1, "dpo")]["dpo/steps"] >= 1
    # the preset evaluates M0 and the final model only (eval.every=0), on the sized harness tasks
    assert 0 <= by_stage[(0, "evaluate_m0")]["eval/average"] <= 100
    assert (0, "evaluate") not in by_stage
    assert 0 <= by_stage[(1, "evaluate")]["eval/average"] <= 100
    responses = [json.loads(l) for l in (run_dir / "iter_1" / "sample" / "responses.jsonl").read_text().splitlines()]
    # a real instruct model answers in words
    assert sum(len(r["text"].split()) > 3 for row in responses for r in row["responses"]) >= 6
