"""Log-likelihoods with shared contexts (`eval.backend: torch`) against lm-eval's stock HF model."""

import pytest
import torch

from cream.runs.artifacts import read_json, read_jsonl
from cream.config import EvalConfig
from cream.config.eval import EvalProtocol
from cream.eval.harness import evaluate_model
from cream.eval.lm_eval_scoring import scoring_window
from cream.engine.scoring import plan_batches, primers

MC_TASKS = ["arc_easy", "arc_challenge", "openbookqa", "siqa", "truthfulqa"]


def test_scoring_window_truncates_the_context_from_the_left():
    assert scoring_window([1, 2, 3], [4, 5], max_length=10) == ((1, 2, 3), (4, 5))
    # lm-eval feeds (context + continuation)[-(max_length + 1):][:-1] and scores the last len(continuation)
    assert scoring_window([1, 2, 3, 4, 5], [6, 7], max_length=4) == ((3, 4, 5), (6, 7))
    assert scoring_window([1, 2], [3, 4, 5], max_length=3) == ((2,), (3, 4, 5))
    with pytest.raises(ValueError):
        scoring_window([1], [2, 3, 4], max_length=2)


def test_plan_batches_groups_contexts_and_drops_duplicates():
    seqs = [((1, 2, 3), (7,)), ((1,), (8,)), ((1, 2, 3), (9, 9)), ((1, 2, 3), (7,)), ((4, 5), (6,))]
    batches = plan_batches(seqs, batch_size=2)
    assert batches == [((), [((1,), [(8,)]), ((4, 5), [(6,)])]), ((), [((1, 2, 3), [(7,), (9, 9)])])]


def test_plan_batches_keeps_a_primer_s_contexts_together():
    seqs = [((1, 2, 3, 4), (7,)), ((9,), (8,)), ((1, 2, 3, 5, 5), (6,)), ((1, 2, 6), (6,))]
    batches = plan_batches(seqs, batch_size=8, min_primer=3)
    assert batches == [((), [((9,), [(8,)]), ((1, 2, 6), [(6,)])]),
                       ((1, 2, 3), [((1, 2, 3, 4), [(7,)]), ((1, 2, 3, 5, 5), [(6,)])])]


def test_plan_batches_splits_a_prompt_whose_responses_overflow_a_row():
    seqs = [((1, 2), (3, 3, 3)), ((1, 2), (4, 4)), ((1, 2), (5, 5, 5, 5)), ((9,), (6,) * 10)]
    assert plan_batches(seqs, batch_size=8, row_tokens=8) == [
        ((), [((1, 2), [(5, 5, 5, 5)]), ((1, 2), [(3, 3, 3), (4, 4)]), ((9,), [(6,) * 10])])]  # a long one alone


@pytest.mark.parametrize("contexts, primer_of", [
    ([(1, 2, 3, 4), (1, 2, 3, 5)], {(1, 2, 3, 4): (1, 2, 3), (1, 2, 3, 5): (1, 2, 3)}),
    ([(1, 2, 3, 4), (1, 2, 9, 5)], {(1, 2, 3, 4): (), (1, 2, 9, 5): ()}),  # 2 shared tokens: too few
    ([(1, 2, 3, 4)], {(1, 2, 3, 4): ()}),  # nothing to share with
    # one context is the other's start: the primer leaves it one token of its own
    ([(1, 2, 3), (1, 2, 3, 4, 5)], {(1, 2, 3): (), (1, 2, 3, 4, 5): ()}),
    ([(1, 2, 3, 4), (1, 2, 3, 4, 5), (1, 2, 3, 4, 6)], {c: (1, 2, 3) for c in [(1, 2, 3, 4), (1, 2, 3, 4, 5), (1, 2, 3, 4, 6)]}),
    # two runs, each with its own primer; the run of one context gets none
    ([(1, 2, 3, 7), (5, 5, 5, 1), (1, 2, 3, 8), (5, 5, 5, 2), (6, 6)],
     {(1, 2, 3, 7): (1, 2, 3), (1, 2, 3, 8): (1, 2, 3), (5, 5, 5, 1): (5, 5, 5), (5, 5, 5, 2): (5, 5, 5), (6, 6): ()}),
])
def test_primers(contexts, primer_of):
    assert primers(contexts, min_tokens=3) == primer_of


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from lm_eval.api.registry import get_model

    from cream.eval.lm_eval_decoder import DecoderLM

    args = {"pretrained": str(tiny_model_dir), "dtype": "float32"}
    extra = {"batch_size": 4, "device": "cpu"}
    return DecoderLM.create_from_arg_obj(args, extra), get_model("hf").create_from_arg_obj(args, extra)


def _requests(texts):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(texts)]


def test_loglikelihood_equals_stock_hf(models):
    ours, stock = models
    context = "Question: What is the colour of the sky?\nAnswer:"
    texts = [(context, " blue"), (context, " green"), (context, " the sky is blue "), (context, " blue"),
             ("", "Hello world"), ("Hi", " there"), ("Q: Why? ", "Because."),
             ("A much longer context " * 12, " yes"), ("A much longer context " * 12, " no")]
    got = ours.loglikelihood(_requests(texts))
    want = stock.loglikelihood(_requests(texts))
    assert [g for _, g in got] == [g for _, g in want]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-4)
    assert got[0] == got[3]  # a repeated request gets the same value


def test_loglikelihood_with_a_primer_equals_stock_hf(models):
    """Contexts sharing a few-shot preamble (encoded once) and options of very different lengths in one row."""
    ours, stock = models
    preamble = "".join(f"Q: What is {n} plus {n}?\nA: It is {2 * n}.\n\n" for n in range(1, 6))
    texts = [(preamble + "Q: What is the colour of the sky?\nA:", " Blue."),
             (preamble + "Q: What is the colour of the sky?\nA:", " It is blue on a clear day, and grey under clouds."),
             (preamble + "Q: Where is Paris?\nA:", " France."),
             (preamble + "Q: Where is Paris?\nA:", " In the north of France, on the Seine, about 450 km from the sea."),
             ("Q: Unrelated?\nA:", " Yes.")]
    contexts = [tuple(ours.tok_encode(c)) for c, _ in texts]
    assert len(set(primers(contexts).values()) - {()}) == 1  # the preamble is shared
    got, want = ours.loglikelihood(_requests(texts)), stock.loglikelihood(_requests(texts))
    assert [g for _, g in got] == [g for _, g in want]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-4)


def test_is_greedy_equals_stock_hf(models):
    """Token-level requests: the tiny model's own greedy continuation (is_greedy True) and others."""
    ours, stock = models
    ids = stock.tok_encode("Question: What is the colour of the sky?\nAnswer:")
    greedy = []
    with torch.inference_mode():
        for _ in range(3):
            greedy.append(int(stock.model(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
    requests = [(None, ids, greedy), (None, ids, greedy[:1]), (None, ids, greedy[:2] + [4461]), (None, ids[:1], [4461])]
    got, want = ours._loglikelihood_tokens(requests), stock._loglikelihood_tokens(requests)
    assert [g for _, g in got] == [g for _, g in want] == [True, True, False, False]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-4)


def test_truncated_requests_equal_stock_hf(models, monkeypatch):
    ours, stock = models
    for lm in models:
        monkeypatch.setattr(lm, "_max_length", 12)
    texts = [("one two three four five six seven eight nine ten eleven twelve", " thirteen fourteen"),
             ("one two three four five six seven eight nine ten eleven twelve", " zero"), ("short", " one")]
    got, want = ours.loglikelihood(_requests(texts)), stock.loglikelihood(_requests(texts))
    assert [g for _, g in got] == [g for _, g in want]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-4)


def test_evaluate_model_torch_equals_hf_on_every_multiple_choice_task(tiny_model_dir, fixture_data, tmp_path):
    runs = {}
    for backend in ("torch", "hf"):
        cfg = EvalConfig(protocol=EvalProtocol.harness, tasks=MC_TASKS, limit=6, batch_size=8, backend=backend)
        out = tmp_path / backend
        runs[backend] = (evaluate_model(cfg, fixture_data, tiny_model_dir, None, out), read_json(out / "eval.json"),
                         read_jsonl(out / "predictions.jsonl"))
    (scores, report, preds), (hf_scores, hf_report, hf_preds) = runs["torch"], runs["hf"]
    assert scores == pytest.approx(hf_scores, abs=1e-3)  # percent; mc2 is a probability mass
    for task, metrics in hf_report["metrics"].items():
        for key in ("acc,none", "acc_norm,none"):
            if key in metrics and not task.endswith("_mc2"):  # accuracies: identical
                assert report["metrics"][task][key] == metrics[key], (task, key)
    assert {p["lm_eval_task"] for p in preds} == {
        f"cream_harness_{t}" for t in MC_TASKS[:4]} | {"cream_harness_truthfulqa_mc1", "cream_harness_truthfulqa_mc2"}
    assert len(preds) == len(hf_preds)
    for p, q in zip(preds, hf_preds):
        assert (p["lm_eval_task"], p["id"], p["extracted"]) == (q["lm_eval_task"], q["id"], q["extracted"])
        assert p["loglikelihoods"] == pytest.approx(q["loglikelihoods"], abs=1e-4)
        assert p["score"] == pytest.approx(q["score"], abs=1e-4)
    # standard errors: binomial on accuracies, the sample standard error on mc2's probability mass
    from cream.eval.stats import score_stderr

    assert set(report["stderr"]) == set(MC_TASKS) | {"average"}
    for task, lm_task in [("arc_easy", "cream_harness_arc_easy"), ("truthfulqa", "cream_harness_truthfulqa_mc2")]:
        item_scores = [p["score"] for p in preds if p["lm_eval_task"] == lm_task]
        assert report["stderr"][task] == pytest.approx(100 * score_stderr(item_scores))
    assert 0 < report["stderr"]["average"] < max(report["stderr"][t] for t in MC_TASKS)
