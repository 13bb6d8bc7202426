"""The reward-bias diagnosis: its arithmetic by hand, its config keys, its stage on the tiny model, its CLI."""

import json
import math
import re

import pytest

from cream.config import Config, DataConfig, DiagnoseConfig, JudgeConfig, ModelConfig, SamplingConfig
from cream.config.engine import ModelSource
from cream.config.rewards import AgreementMeasure
from cream.rewards.consistency import prompt_consistency
from cream.data.load import load_prompts
from cream.diagnose import main
from cream.rewards.diagnostics import PromptOutcome, consistency_split, diagnose_rewarder, prompt_counts, reward_accuracy
from cream.errors import ConfigError, DataError
from cream.eval.extract import is_correct
from cream.engine.generation import chat_prompt_ids
from cream.engine.models import load_tokenizer
from cream.runs.model_ref import ModelRef
from cream.plugins.contracts import PairStats
from cream.rewards.pairing import choose_pair
from cream.stages import diagnose
from tests.conftest import FIXTURE_DATA, stage_context
from tests.test_config import _load

nan = float("nan")


def same(a, b):
    """Equal, NaN equal to NaN."""
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == pytest.approx(b)


# --- arithmetic ----------------------------------------------------------------------------------

# counts: wins, comparisons, pairs, chosen_correct, inverted, any_correct, prompts
@pytest.mark.parametrize("outcome, counts", [
    # a tie is half a win; the chosen response is correct
    (PromptOutcome([1.0, 1.0, 0.0], [True, False, False], (0, 2)), [1.5, 2, 1, 1, 0, 1, 1]),
    # all correct: nothing to compare, a pair that cannot be inverted
    (PromptOutcome([2.0, 1.0], [True, True], (0, 1)), [0, 0, 1, 1, 0, 1, 1]),
    # all wrong: no correct response to prefer
    (PromptOutcome([2.0, 1.0], [False, False], (0, 1)), [0, 0, 1, 0, 0, 0, 1]),
    # an unscored (None) correct response takes no part; the wrong one chosen over the correct one: inverted
    (PromptOutcome([None, 3.0, 1.0], [True, False, True], (1, 2)), [0, 1, 1, 0, 1, 1, 1]),
    # no pair: counted for AUC and any-correct only
    (PromptOutcome([1.0, 1.0], [True, False], None), [0.5, 1, 0, 0, 0, 1, 1]),
])
def test_prompt_counts(outcome, counts):
    assert prompt_counts(outcome) == [*counts, 0, 0, 0, 0]  # no lengths given: no length-controlled comparison


@pytest.mark.parametrize("consistency, threshold, above, below", [
    # 0.5 and 0.9 halve the four measured prompts equally well (3:1, 1:3): the higher threshold wins
    ([0.2, 0.5, None, 0.9, 0.5], 0.9, [0, 0, 0, 1, 0], [1, 1, 0, 0, 1]),
    ([0.2, 0.5, 0.9, 1.0], 0.9, [0, 0, 1, 1], [1, 1, 0, 0]),  # two and two
    # C tied at 1 on most prompts (the 135M model): a median split would leave the high side empty
    ([1.0, 1.0, 1.0, 0.3, 0.6], 1.0, [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]),
    ([0.5, 0.5], 0.5, [0, 0], [1, 1]),  # all equal: nothing high
    ([None, None], nan, [0, 0], [0, 0]),  # never measured: in neither
    ([], nan, [], []),
])
def test_consistency_split(consistency, threshold, above, below):
    t, a, b = consistency_split(consistency)
    assert same(t, threshold) and a.tolist() == [bool(x) for x in above] and b.tolist() == [bool(x) for x in below]


# Four prompts by hand:            wins comparisons pair   chosen  inverted any  C
TABLE = [
    (PromptOutcome([3.0, 1.0, 2.0], [True, False, False], (0, 1)), 0.9),  # 2  2  yes  right  no   yes  above
    (PromptOutcome([1.0, 2.0], [True, False], (1, 0)), 0.1),  #              0  1  yes  wrong  yes  yes  below
    (PromptOutcome([1.0, 1.0], [True, False], None), 0.5),  #                .5 1  no   -      -    yes  low
    (PromptOutcome([2.0, 1.0], [False, False], (0, 1)), None),  #            0  0  yes  wrong  no   no   unmeasured
]


@pytest.mark.parametrize("group, prompts, pairs, auc, chosen_correct, inverted, any_correct", [
    ("all", 4, 3, 2.5 / 4, 1 / 3, 1 / 3, 3 / 4),  # AUC pools comparisons: 2.5 wins of 4
    ("c_high", 1, 1, 1.0, 1.0, 0.0, 1.0),
    ("c_low", 2, 1, 0.5 / 2, 0.0, 1.0, 1.0),
])
def test_diagnosis_by_hand(group, prompts, pairs, auc, chosen_correct, inverted, any_correct):
    result = diagnose_rewarder([o for o, _ in TABLE], [c for _, c in TABLE], resamples=500, seed=0, level=0.95)
    assert result["consistency_threshold"] == 0.9
    g = result[group]
    assert (g["prompts"], g["pairs"]) == (prompts, pairs)
    for rate, expected in [("auc", auc), ("chosen_correct", chosen_correct), ("inverted", inverted),
                           ("any_correct", any_correct)]:
        assert g[rate].value == pytest.approx(expected)
        assert g[rate].low <= g[rate].value <= g[rate].high


def test_the_split_difference_by_hand():
    result = diagnose_rewarder([o for o, _ in TABLE], [c for _, c in TABLE], resamples=500, seed=0, level=0.95)
    diff = result["high_minus_low"]
    assert diff["auc"].diff == pytest.approx(1.0 - 0.25) and diff["chosen_correct"].diff == 1.0
    assert diff["inverted"].diff == -1.0 and diff["any_correct"].diff == 0.0
    assert diff["auc"].low <= diff["auc"].diff <= diff["auc"].high and diff["auc"].level == 0.95


def test_intervals_resample_prompts():
    """Two prompts, one chosen right, one wrong: a resample holds 0, 1 or 2 right ones with chances 1/4, 1/2, 1/4."""
    outcomes = [PromptOutcome([2.0, 1.0], [True, False], (0, 1)), PromptOutcome([2.0, 1.0], [False, True], (0, 1))]
    wide = diagnose_rewarder(outcomes, [0.5, 0.5], resamples=4000, seed=1, level=0.90)["all"]["chosen_correct"]
    assert (wide.value, wide.low, wide.high) == (0.5, 0.0, 1.0)  # 5th and 95th percentiles
    narrow = diagnose_rewarder(outcomes, [0.5, 0.5], resamples=4000, seed=1, level=0.30)["all"]["chosen_correct"]
    assert (narrow.low, narrow.high) == (0.5, 0.5)  # 35th and 65th
    # identical prompts: every resample is the same
    same_prompts = diagnose_rewarder([outcomes[0]] * 3, [0.5] * 3, resamples=100, seed=0, level=0.95)["all"]["auc"]
    assert (same_prompts.value, same_prompts.low, same_prompts.high) == (1.0, 1.0, 1.0)


def test_seeded():
    a = diagnose_rewarder([o for o, _ in TABLE], [c for _, c in TABLE], resamples=200, seed=3, level=0.95)
    b = diagnose_rewarder([o for o, _ in TABLE], [c for _, c in TABLE], resamples=200, seed=3, level=0.95)
    assert repr(a["all"]) == repr(b["all"]) and repr(a["high_minus_low"]) == repr(b["high_minus_low"])  # NaN too


def test_an_empty_split_and_undefined_rates_are_nan():
    outcomes = [PromptOutcome([1.0, 2.0], [False, False], None)] * 2  # no pair, no comparison
    result = diagnose_rewarder(outcomes, [0.5, 0.5], resamples=100, seed=0, level=0.95)
    assert result["c_high"]["prompts"] == 0  # every C is equal: no split
    for group in ("all", "c_high"):
        for rate in ("auc", "chosen_correct", "inverted"):
            e = result[group][rate]
            assert math.isnan(e.value) and math.isnan(e.low) and math.isnan(e.high)
    assert result["all"]["any_correct"].value == 0.0 and math.isnan(result["c_high"]["any_correct"].value)
    assert math.isnan(result["high_minus_low"]["any_correct"].diff)
    nothing = diagnose_rewarder([], [], resamples=10, seed=0, level=0.95)
    assert nothing["all"]["prompts"] == 0 and math.isnan(nothing["all"]["auc"].value)
    with pytest.raises(ValueError, match="2 prompts but 1"):
        diagnose_rewarder(outcomes, [0.5], resamples=10, seed=0, level=0.95)


def test_reward_accuracy_and_the_diagnosis_agree():
    """The pairs stage's metric and the diagnosis count the same way."""
    outcomes = [o for o, _ in TABLE]
    pairs = [(o.correct[o.pair[0]], o.correct[o.pair[1]]) for o in outcomes if o.pair]
    accuracy = reward_accuracy(pairs, [(o.rewards, o.correct) for o in outcomes])
    result = diagnose_rewarder(outcomes, [c for _, c in TABLE], resamples=10, seed=0, level=0.95)["all"]
    for rate in ("auc", "chosen_correct", "inverted"):
        assert result[rate].value == pytest.approx(accuracy[f"reward_accuracy/{rate}"])
    assert result["any_correct"].value == accuracy["explore/any_correct"]


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("diagnose.prompts=0", "diagnose.prompts"),
    ("diagnose.n=1", "diagnose.n"),
    ("diagnose.rewarders=[]", "diagnose.rewarders"),
    ("diagnose.rewarders=[judge,judge]", "diagnose.rewarders"),
    ("diagnose.rewarders=[implicit,vibes]", "diagnose.rewarders"),
    ("diagnose.max_new_tokens=0", "diagnose.max_new_tokens"),
    ("diagnose.bootstrap=0", "diagnose.bootstrap"),
    ("diagnose.confidence=1.0", "diagnose.confidence"),
])
def test_bad_diagnose_values_name_the_key(override, key):
    from hydra.errors import ConfigCompositionException

    from cream.plugins.registry import check_config

    with pytest.raises((ConfigError, ConfigCompositionException), match=key.replace(".", r"\.")):
        check_config(_load([override]))  # a rewarder's name is checked against the registry at start-up


def test_diagnose_defaults():
    cfg = _load([])
    assert not cfg.diagnose.enabled and (cfg.diagnose.prompts, cfg.diagnose.n) == (256, 4)
    assert cfg.diagnose.rewarders == ["implicit", "likelihood", "judge",
                                      "oracle"]


def test_held_out_prompts_follow_the_training_shards():
    prompts = [{"id": str(i)} for i in range(10)]
    cfg = Config(experiment_name="t", run_name="t", iterations=2, data=DataConfig(shard_size=3),
                 diagnose=DiagnoseConfig(prompts=4))
    assert [p["id"] for p in diagnose.held_out(prompts, cfg)] == ["6", "7", "8", "9"]
    cfg.diagnose.prompts = 5
    with pytest.raises(DataError, match=r"`diagnose\.prompts`: 5 held-out prompts .* after the 6 .* 4 of the 10"):
        diagnose.held_out(prompts, cfg)


# --- the stage on the tiny model, with responses of known correctness -------------------------------

PLANTED = [[True, True, False], [False, False, False], [True, True, True], [True, False, False]]  # per held-out prompt
OPENINGS = ["", "I think so. ", "Let me see. "]  # distinct texts: identical best and worst make no pair


def planted_text(prompt: dict, variant: int, correct: bool) -> str:
    if prompt["task"] == "gsm8k":
        return f"{OPENINGS[variant]}#### {prompt['answer'] if correct else prompt['answer'] + '1'}"
    wrong = "A" if prompt["answer"] != "A" else "B"
    return f"{OPENINGS[variant]}Answer: {prompt['answer'] if correct else wrong}"


def random_adapters(base, folders):
    """LoRA adapters with random weights, one per folder: other models of the loop on the tiny base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cream.engine.models import load_base_model

    model = get_peft_model(load_base_model(str(base), ModelConfig(name="tiny", source=ModelSource.tiny)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    for seed, folder in enumerate(folders):
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(std=0.3, generator=torch.Generator().manual_seed(seed))
        model.save_pretrained(folder)
    return [str(f) for f in folders]


def test_the_stage_reports_what_its_responses_are(tiny_model_dir, tmp_path):
    """The diagnose stage samples, then is rerun over responses planted in its chunk files (the resume
    path): every number of diagnose.json must follow from the planted correctness and the saved scores."""
    prompts = load_prompts(DataConfig(), FIXTURE_DATA, 0)[:8]
    adapters = random_adapters(tiny_model_dir, [tmp_path / "m1", tmp_path / "m2"])
    models = [ModelRef("m0", str(tiny_model_dir)), *(ModelRef(f"m{k}", str(tiny_model_dir), a) for k, a in enumerate(adapters, 1))]
    ctx = stage_context(tmp_path, models, iterations=1, data=DataConfig(shard_size=2),
                        model=ModelConfig(name="tiny", source=ModelSource.tiny, max_length=1024),
                        sampling=SamplingConfig(batch_size=6),
                        judge=JudgeConfig(template="{prompt}\n{response}\nScore:", samples=1, max_new_tokens=3, batch_size=12),
                        diagnose=DiagnoseConfig(prompts=4, n=3, max_new_tokens=4, bootstrap=300))
    ctx.prompts = prompts
    stage_dir = tmp_path / "diagnose"
    every_rewarder = ctx.cfg.diagnose.rewarders
    ctx.cfg.diagnose.rewarders = ["oracle"]  # the first run only samples the chunks to plant into
    diagnose.run(ctx, stage_dir)
    ctx.cfg.diagnose.rewarders = every_rewarder
    held = prompts[2:6]  # after the run's one shard of 2
    tokenizer = load_tokenizer(str(tiny_model_dir))
    by_ids = {tuple(chat_prompt_ids(tokenizer, p["prompt"])): (p, correct) for p, correct in zip(held, PLANTED)}
    for chunk in sorted((stage_dir / "chunks").iterdir()):
        rows = [json.loads(line) for line in chunk.read_text().splitlines()]
        for row in rows:
            prompt, correct = by_ids[tuple(row["prompt_ids"])]
            texts = [planted_text(prompt, v, c) for v, c in enumerate(correct)]
            row["samples"] = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                               "finished": True} for t in texts]
        chunk.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = diagnose.run(ctx, stage_dir)

    diagnosis = json.loads((stage_dir / "diagnose.json").read_text())
    scores = [json.loads(line) for line in (stage_dir / "scores.jsonl").read_text().splitlines()]
    responses = [json.loads(line) for line in (stage_dir / "responses.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scores] == [p["id"] for p in held] and diagnosis["prompts"] == 4
    assert [s["correct"] for s in scores] == PLANTED
    assert [[is_correct(r["text"], row["answer"], row["task"]) for r in row["responses"]] for row in responses] == PLANTED
    assert (diagnosis["model"], diagnosis["previous"]) == ("m2", "m1")
    assert diagnosis["rewarders"]["implicit"]["scored_as"] == {"rewarder": "implicit", "model": "m2", "reference": "m0"}

    # the oracle, by hand: pairs on prompts 0 and 3 only (2 and 1 are all equal), both chosen correct
    oracle = diagnosis["rewarders"]["oracle"]["all"]
    assert (oracle["pairs"], oracle["comparisons"]) == (2, 4)
    assert oracle["auc"]["value"] == oracle["chosen_correct"]["value"] == 1.0 and oracle["inverted"]["value"] == 0.0
    assert oracle["any_correct"]["value"] == 0.75

    # C: the run's rewarder (implicit, M2 vs M0) against M1's ranking, as the loop measures it
    threshold = consistency_split([s["consistency"] for s in scores])[0]
    assert diagnosis["consistency"]["threshold"] == pytest.approx(threshold)
    for s in scores:
        ranked = s["consistency_rankings"]
        assert s["consistency"] == pytest.approx(prompt_consistency(ranked["current"], ranked["previous"], AgreementMeasure.kendall))
    assert scores[0]["consistency_rankings"]["current"] == scores[0]["rewards"]["implicit"]

    for name in ("implicit", "likelihood", "judge", "oracle"):
        pairs = [choose_pair(s["rewards"][name], [r["text"] for r in row["responses"]], PairStats())
                 for s, row in zip(scores, responses)]
        assert [s["pairs"][name] for s in scores] == [None if c is None else [c.chosen, c.rejected] for c in pairs]
        expected = reward_accuracy([(s["correct"][c.chosen], s["correct"][c.rejected]) for s, c in zip(scores, pairs) if c],
                                   [(s["rewards"][name], s["correct"]) for s in scores])
        got = diagnosis["rewarders"][name]
        for rate in ("auc", "chosen_correct", "inverted"):
            value = expected[f"reward_accuracy/{rate}"]
            assert got["all"][rate]["value"] == (None if math.isnan(value) else pytest.approx(value)), (name, rate)
            assert same(result.metrics[f"diagnose/{name}/{rate}"], value)
        above = [s for s in scores if s["consistency"] >= threshold]
        assert got["c_high"]["prompts"] == len(above)
        assert got["c_low"]["prompts"] == 4 - len(above)
        assert got["seconds"] >= 0 and got["cpu_seconds"] >= 0
    assert diagnosis["rewarders"]["judge"]["stats"]["judge/judgements"] == 12  # the tiny model's judgements
    assert (stage_dir / "diagnose.png").read_bytes()[:4] == b"\x89PNG"


# --- the command line ---------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--run", "no/such/run"], r"^error: argument --run: no/such/run is not a run folder \(no run\.json\)$"),
    (["--run", "x", "--rewarders", "implicit,vibes"], r"^error: argument --rewarders: unknown rewarder 'vibes'; give "),
])
def test_bad_arguments_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err.strip())


@pytest.mark.slow  # a smoke run and a diagnosis: a minute on 2 cores
def test_the_loop_and_the_command_line_diagnose_the_same(tmp_path, capsys):
    """With `diagnose.enabled` the loop diagnoses the model each iteration trains; the CLI, given the finished
    run, rebuilds that model from the run folder and finds the same numbers."""
    from tests.test_integration import cli

    settings = ["diagnose.prompts=3", "diagnose.n=2", "diagnose.max_new_tokens=4", "diagnose.bootstrap=50"]
    result = cli("experiment=smoke", f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}", "run_name=d",
                 "eval.enabled=false", "diagnose.enabled=true", "diagnose.rewarders=[implicit,oracle]", *settings)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "smoke" / "d"
    by_loop = json.loads((run_dir / "iter_1" / "diagnose" / "diagnose.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "diagnose" and "diagnose/implicit/auc" in r for r in records)
    main(["--run", str(run_dir), "--data", str(FIXTURE_DATA), "--rewarders", "implicit,oracle", "--prompts=3", "--n=2",
          "--max-new-tokens=4", "--bootstrap=50"])  # the same settings
    by_cli = json.loads((run_dir / "diagnose" / "m2" / "diagnose.json").read_text())
    assert (by_cli["model"], by_cli["previous"]) == (by_loop["model"], by_loop["previous"]) == ("m2", "m1")
    for name in ("implicit", "oracle"):
        assert {k: v for k, v in by_cli["rewarders"][name].items() if "seconds" not in k} == \
               {k: v for k, v in by_loop["rewarders"][name].items() if "seconds" not in k}
    with pytest.raises(SystemExit):
        main(["--run", str(run_dir), "--iteration", "3"])  # the run has M0..M2
    # issue 21 case 9: a second diagnosis into a folder another one is writing stops, naming it
    from cream.runs.run_folder import hold

    other = hold(run_dir / "diagnose" / ".m2.lock", "diagnose folder", "`--out`")
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(run_dir), "--data", str(FIXTURE_DATA), "--rewarders", "oracle", "--prompts=3", "--n=3"])
    other.close()
    assert exit_.value.code == 2 and "in use by process" in capsys.readouterr().err
    assert json.loads((run_dir / "diagnose" / "m2" / "diagnose.json").read_text()) == by_cli  # untouched
    # another judge than the run's, by its conf/judge name
    main(["--run", str(run_dir), "--data", str(FIXTURE_DATA), "--rewarders", "judge", "--prompts=3", "--n=2",
          "--max-new-tokens=4", "--bootstrap=50", "--judge", "compact", "--out", str(tmp_path / "compact")])
    judged = json.loads((tmp_path / "compact" / "diagnose.json").read_text())
    assert judged["judge_settings"]["reply_prefix"] == "Score:" and judged["judge_settings"]["max_new_tokens"] == 6
    assert judged["rewarders"]["judge"]["stats"]["judge/judgements"] == 3 * 2 * 3  # prompts x n x samples
    with pytest.raises(SystemExit) as exit_:
        main(["--run", str(run_dir), "--judge", "nope"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("prompts, pairs, expected", [
    # a reward that is exactly the length: correlation 1, every chosen response the longer one
    ([([3.0, 5.0, 9.0], [3, 5, 9]), ([2.0, 7.0], [2, 7])], [(9, 3), (7, 2)],
     {"length/chosen_mean": 8.0, "length/rejected_mean": 2.5, "length/chosen_longer_share": 1.0,
      "length/equal_share": 0.0, "length/reward_spearman": 1.0}),
    # the reward prefers short: ranks of reward 1,2,3,4 against lengths 4,3,2,1 -> -1
    ([([1.0, 2.0], [40, 30]), ([3.0, 4.0], [20, 10])], [(30, 40), (10, 20)],
     {"length/chosen_mean": 20.0, "length/rejected_mean": 30.0, "length/chosen_longer_share": 0.0,
      "length/equal_share": 0.0, "length/reward_spearman": -1.0}),
    # unscored responses take no part; by hand: pooled (reward, length) = (1, 5), (2, 5), (3, 1):
    # reward ranks 1, 2, 3; length ranks 2.5, 2.5, 1 -> centred (-1, 0, 1) and (0.5, 0.5, -1):
    # r = -1.5 / sqrt(2 x 1.5) = -sqrt(3) / 2
    ([([1.0, None, 2.0], [5, 9, 5]), ([3.0], [1])], [(5, 5)],
     {"length/chosen_mean": 5.0, "length/rejected_mean": 5.0, "length/chosen_longer_share": 0.0,
      "length/equal_share": 1.0, "length/reward_spearman": -(3 ** 0.5) / 2}),
])
def test_length_bias_by_hand(prompts, pairs, expected):
    from cream.rewards.diagnostics import length_bias

    measured = length_bias(prompts, pairs, resamples=200, seed=0)
    assert {k: measured[k] for k in expected} == pytest.approx(expected)
    assert -1 <= measured["length/reward_spearman_low"] <= measured["length/reward_spearman_high"] <= 1


def test_the_length_controlled_auc_by_hand():
    """Two correct (c) and two wrong (w) responses; the reward is the length. Comparisons (correct vs wrong):
    c1 (len 9) vs w1 (len 3): longer, won; c1 vs w2 (len 12): shorter, lost; c2 (len 5) vs w1: longer, won;
    c2 vs w2: shorter, lost. AUC 2/4 = 0.5; correct-longer 2/2 = 1; correct-shorter 0/2 = 0; controlled (1 + 0)/2."""
    from cream.rewards.diagnostics import PromptOutcome, diagnose_rewarder

    lengths = [9, 5, 3, 12]
    outcome = PromptOutcome([float(n) for n in lengths], [True, True, False, False], (3, 2), lengths)
    result = diagnose_rewarder([outcome], [None], resamples=20, seed=0, level=0.95)["all"]
    assert [result[r].value for r in ("auc", "auc_correct_longer", "auc_correct_shorter", "auc_length_controlled")] == \
        [0.5, 1.0, 0.0, 0.5]
    equal = PromptOutcome([1.0, 0.0], [True, False], (0, 1), [4, 4])  # same length: in neither side
    result = diagnose_rewarder([equal], [None], resamples=20, seed=0, level=0.95)["all"]
    assert result["auc"].value == 1.0 and math.isnan(result["auc_length_controlled"].value)
