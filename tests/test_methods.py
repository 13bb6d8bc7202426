"""The plug-in methods: the registry, the maths of OSP, SPPO and SCIR by hand, and each method through the
config on the tiny model, against CREAM on the same samples and rewards."""

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from cream import preflight
from cream.config import DPOConfig, LoggerConfig, PairsConfig, load_config
from cream.methods.scir import ScirConfig
from cream.plugins.registry import config_class
from cream.config.runs import LoggerMode
from cream.errors import ConfigError
from cream.training.losses import CREAM, cream_loss, soft_label
from cream.methods.scir import vote
from cream.plugins.contracts import PairStats
from cream.rewards.pairing import adjacent, best_worst, preference_probability, ranked
from cream.plugins.registry import FILTERS, LOSSES, PAIRINGS, REWARDERS, Registry
from cream.runs.rows import Pair, RewardRow, read_rows, write_rows
from tests.conftest import FIXTURE_DATA

CONF = Path(__file__).resolve().parents[1] / "conf"


def _load(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return load_config(cfg)


# ---- the registry -------------------------------------------------------------------------------------------


def test_every_kind_holds_its_built_in_and_plug_in_entries():
    assert {"implicit", "likelihood", "judge", "oracle"} <= set(REWARDERS.names())
    assert {"best_worst", "ranked", "adjacent"} <= set(PAIRINGS.names())
    assert "scir" in FILTERS.names()  # from cream/methods/scir.py, found without being named anywhere
    assert {"cream", "sppo", "sppo_hard"} <= set(LOSSES.names())


def test_an_unknown_name_names_its_key_and_the_known_names():
    with pytest.raises(ConfigError, match=r"`dpo\.loss`: unknown loss 'dpo2'; known: cream, sppo, sppo_hard"):
        LOSSES.get("dpo2")
    registry = Registry("thing", "a.key")
    registry.register("one", 1)
    with pytest.raises(ValueError, match="thing 'one' is registered already"):
        registry.register("one", 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["pairs.strategy=best_of_three"], r"`pairs\.strategy`: unknown pairing strategy 'best_of_three'; known: adjacent, best_worst, ranked"),
        (["pairs.filters=[scir,upo]"], r"`pairs\.filters`: unknown pair filter 'upo'; known: .*scir"),
        (["dpo.loss=ipo"], r"`dpo\.loss`: unknown loss 'ipo'; known: cream, sppo, sppo_hard"),
        (["pairs=scir", "dpo.loss=sppo", "scir.penalty=0.5"], r"`scir\.penalty`: dpo\.loss=sppo has no penalty term"),
        (["pairs=scir", "scir.judge=implicit"], r"`scir\.judge`: must name another rewarder"),
    ],
)
def test_plug_in_settings_are_refused_at_start_up_naming_the_key(overrides, message):
    cfg = _load(["experiment=smoke", *overrides])  # composes: the names are checked before any model loads
    with pytest.raises(ConfigError, match=message):
        preflight.check(cfg)


@pytest.mark.parametrize("overrides, key", [(["pairs.tau=0"], "pairs.tau"), (["scir.judge_temperature=-1"], "scir.judge_temperature"),
                                            (["scir.penalty=-0.1"], "scir.penalty")])
def test_bad_plug_in_values_name_the_key(overrides, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises((ConfigError, ConfigCompositionException), match=key.replace(".", r"\.")):
        _load(overrides)


@pytest.mark.parametrize("experiment, expected", [
    ("osp_smollm", {"pairs.strategy": "ranked", "pairs.tau": 1.0, "regularizer.name": "none", "dpo.loss": "cream"}),
    ("sppo_smollm", {"pairs.strategy": "best_worst", "pairs.tau": 1.0, "dpo.loss": "sppo"}),
    ("scir_smollm", {"pairs.filters": ["scir"], "rewarder.name": "implicit", "judge.reply_prefix": "Score:"}),
    ("cream_smollm", {"pairs.strategy": "best_worst", "pairs.tau": None, "pairs.filters": [], "dpo.loss": "cream"}),
    ("upo_smollm", {"pairs.filters": ["uncertainty"], "regularizer.name": "none", "upo.k": 10, "upo.site": "attention",
                    "upo.uncertainty": "bald", "upo.selection": "sample"}),
    ("bstar_smollm", {"sampling.adaptive": "bstar", "pairs.filters": ["reward_threshold"], "sampling.n": 4}),
    ("selfref_smollm", {"rewarder.name": "self_reference", "regularizer.name": "none", "pairs.filters": []}),
])
def test_method_presets_compose_over_cream_smollm_and_pass_preflight(experiment, expected):
    cfg = _load([f"experiment={experiment}"])
    base = _load(["experiment=cream_smollm"])
    for key, value in expected.items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert getattr(got, "value", got) == value, key
    assert (cfg.data, cfg.seed, cfg.iterations, cfg.model) == (base.data, base.seed, base.iterations, base.model)
    preflight.check(cfg)


@pytest.mark.parametrize("option", sorted((CONF / "pairs").glob("*.yaml")), ids=lambda p: p.stem)
def test_pairs_options_state_only_what_they_change(option):
    defaults = dataclasses.asdict(PairsConfig())
    for key, value in (yaml.safe_load(option.read_text()) or {}).items():
        assert key in defaults and value != defaults[key], f"{option}: {key}"


# ---- OSP: ranked pairings and preference strength ----------------------------------------------------------


@pytest.mark.parametrize(
    "rewards, texts, expected",
    [
        # ordered 0 (3.0), 2 (2.0), 1 (1.0)
        ([3.0, 1.0, 2.0], "abc", {best_worst: [(0, 1)], ranked: [(0, 2), (0, 1), (2, 1)], adjacent: [(0, 2), (2, 1)]}),
        # a tie at the top: no pair between the tied, the first index ranks first
        ([2.0, 2.0, 1.0], "abc", {best_worst: [(0, 2)], ranked: [(0, 2), (1, 2)], adjacent: [(1, 2)]}),
        # a tie at the bottom: best_worst's rejected is the first of the worst
        ([3.0, 1.0, 1.0], "abc", {best_worst: [(0, 1)], ranked: [(0, 1), (0, 2)], adjacent: [(0, 1)]}),
        # unscored responses take no part
        ([None, 1.0, 0.0, None], "abcd", {best_worst: [(1, 2)], ranked: [(1, 2)], adjacent: [(1, 2)]}),
        # the same text twice is no preference
        ([3.0, 2.0, 1.0], "aab", {best_worst: [(0, 2)], ranked: [(0, 2), (1, 2)], adjacent: [(1, 2)]}),
    ],
)
def test_pairings_by_hand(rewards, texts, expected):
    for strategy, pairs in expected.items():
        stats = PairStats()
        assert [(c.chosen, c.rejected) for c in strategy(rewards, list(texts), stats)] == pairs, strategy.__name__
        assert stats.kept == 1 and stats.dropped == 0


@pytest.mark.parametrize("rewards, texts, reason", [([1.0, 1.0, 1.0], "abc", "dropped_all_equal"),
                                                    ([1.0, None, None], "abc", "dropped_unscored"),
                                                    ([2.0, 1.0], ["same", " same "], "dropped_identical_text")])
def test_a_prompt_without_preference_gives_no_pair_under_any_strategy(rewards, texts, reason):
    for strategy in (best_worst, ranked, adjacent):
        stats = PairStats()
        assert strategy(rewards, list(texts), stats) == []
        assert getattr(stats, reason) == 1 and stats.kept == 0


@pytest.mark.parametrize("gap, tau, p", [(1.0, 1.0, 0.7310585786300049), (2.0, 0.5, 0.9820137900379085),
                                         (-1.0, 1.0, 0.2689414213699951), (0.0, 1.0, 0.5), (-800.0, 1.0, 0.0),
                                         (3.0, None, 1.0), (0.0, None, 0.5), (-2.0, None, 0.0)])
def test_preference_probability_by_hand(gap, tau, p):
    assert preference_probability(gap, tau) == pytest.approx(p, abs=1e-12)


@pytest.mark.parametrize("c, p, label", [(1.0, 0.73, 0.73), (0.8, 1.0, 0.8), (0.8, 0.7, 0.62), (0.5, 0.9, 0.5),
                                         (0.2, 0.5, 0.5), (0.0, 0.9, 0.1)])
def test_soft_label_combines_consistency_and_strength(c, p, label):
    assert soft_label(c, p) == pytest.approx(label)


def test_the_soft_preference_loss_is_cream_loss_with_the_label():
    # 0.62 * -log s(0.4) + 0.38 * -log s(-0.4), by hand
    assert cream_loss(torch.tensor([0.4]), torch.tensor([soft_label(0.8, 0.7)])).item() == pytest.approx(0.6650152524)


# ---- SCIR: votes, weights, penalty --------------------------------------------------------------------------


# votes, weights and the judge path: tests/test_scir.py


def _pair(i, chosen, rejected, **kw):
    return Pair(id=f"p{i}", task="gsm8k", answer="1", prompt="q", chosen="a", rejected="b", chosen_reward=1.0,
                rejected_reward=0.0, consistency=0.9, chosen_correct=False, rejected_correct=False, prompt_ids=[1],
                chosen_ids=[2], rejected_ids=[3], ref_chosen_logps=-1.0, ref_rejected_logps=-1.0,
                chosen_index=chosen, rejected_index=rejected, **kw)


def test_weight_and_penalty_reach_the_pair_loss_by_hand():
    # h = 0.1 * ((-10 + 11) - (-12 + 11.5)) = 0.15; label 0.62, judge 0.9, weight 0.5, penalty 0.5
    batch = {"ref_chosen_logps": torch.tensor([-11.0]), "ref_rejected_logps": torch.tensor([-11.5]),
             "target": torch.tensor([0.62]), "weight": torch.tensor([0.5]), "penalty": torch.tensor([0.5]),
             "penalty_target": torch.tensor([0.9])}
    loss, logged = CREAM.per_example(torch.tensor([-10.0, -12.0]), batch, 0.1)
    assert loss.item() == pytest.approx(0.497967785842149)
    assert logged["rewards/margins"].item() == pytest.approx(1.5)


def test_a_pairs_file_written_before_the_plug_ins_reads_as_it_trained(tmp_path):
    old = {k: v for k, v in dataclasses.asdict(_pair(0, 0, 1)).items()
           if k not in ("chosen_index", "rejected_index", "strength", "target", "weight", "penalty", "penalty_target")}
    (tmp_path / "pairs.jsonl").write_text(json.dumps(old) + "\n")
    (pair,) = read_rows(tmp_path / "pairs.jsonl", Pair)
    assert (pair.target, pair.weight, pair.penalty, pair.strength) == (0.9, 1.0, 0.0, 1.0)  # the label was C


# ---- each method through the config on the tiny model, against CREAM on the same samples ------------------


def run_methods(root, methods: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """CREAM on the smoke experiment, then each method resumed (`resume=force`) from a copy of its run folder:
    the same SFT, samples and rewards, so the pairs and what the loss sees compare one to one."""
    from tests.test_integration import cli

    base = ("experiment=smoke", f"paths.data={FIXTURE_DATA}", "eval.enabled=false", "logger.mode=disabled",
            "data.shard_size=4", "run_name=m")
    folders = {}
    for name, overrides in {"cream": (), **methods}.items():
        folder = root / name / "smoke" / "m"
        if name != "cream":
            shutil.copytree(folders["cream"], folder)
        result = cli(*base, f"paths.runs={root / name}", *overrides, *(("resume=force",) if name != "cream" else ()))
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_methods(tmp_path_factory.mktemp("methods"), {
        "osp": ("pairs=osp",), "sppo": ("dpo.loss=sppo", "pairs.tau=1.0"),
        # a random model never writes a parsable judgement: the likelihood casts the second vote
        "scir": ("pairs=scir", "scir.judge=likelihood", "scir.penalty=0.5")})


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _stage(run, name):
    return run / "iter_1" / name


def _metrics(run, stage):
    """The stage's last record: a folder resumed from CREAM's holds CREAM's record of each recomputed stage first."""
    return [r for r in _jsonl(run / "metrics.jsonl") if r["stage"] == stage and r["iteration"] == 1][-1]


def _loss_inputs(run, loss_name, tiny_model_dir, tmp_path):
    """The batch the registered loss receives from the trainer, on the run's own examples (one step of all of
    them; the trainer shuffles, so compare sorted values)."""
    from cream.training.dpo_trainer import CreamDPOTrainer, ExampleCollator, examples_dataset, training_args
    from cream.engine.models import load_tokenizer
    from cream.config import ModelConfig
    from cream.config.engine import ModelSource
    from cream.engine.models import load_base_model
    from cream.plugins.contracts import Loss

    loss = LOSSES.get(loss_name)
    seen = []

    def recorded(logps, batch, beta):
        seen.append({k: v.clone() for k, v in batch.items()})
        return loss.per_example(logps, batch, beta)

    spy = Loss(loss.layout, loss.columns, recorded)
    path = _stage(run, "pairs") / ("scored_responses.jsonl" if loss.layout == "responses" else "pairs.jsonl")
    dataset = examples_dataset(path, loss)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_base_model(str(tiny_model_dir), ModelConfig(name="tiny", source=ModelSource.tiny))
    cfg = DPOConfig(lora=None, batch_size=len(dataset), grad_accum=1, lr=1e-4)
    trainer = CreamDPOTrainer(model=model, args=training_args(cfg, tmp_path / "out", 0, len(dataset)),
                              train_dataset=dataset, processing_class=tokenizer,
                              data_collator=ExampleCollator(tokenizer.pad_token_id, spy), loss=spy)
    trainer.train()
    (batch,) = seen
    return batch


def _key(p):
    return p["id"], p["chosen_index"], p["rejected_index"]


def test_resume_recomputes_only_what_each_method_changes(runs):
    sample_manifest = (_stage(runs["cream"], "sample") / "manifest.json").read_text()
    reward = (_stage(runs["cream"], "reward") / "manifest.json").read_text()
    for name in ("osp", "sppo", "scir"):
        assert (_stage(runs[name], "sample") / "manifest.json").read_text() == sample_manifest, name
        assert ((_stage(runs[name], "reward") / "manifest.json").read_text() == reward) == (name != "scir"), name
        assert (_stage(runs[name], "pairs") / "pairs.jsonl").read_bytes() != \
            (_stage(runs["cream"], "pairs") / "pairs.jsonl").read_bytes(), name


def test_osp_trains_on_every_ranked_pair_with_its_soft_label(runs, tiny_model_dir, tmp_path):
    cream = {_key(p): p for p in _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")}
    osp = _jsonl(_stage(runs["osp"], "pairs") / "pairs.jsonl")
    rewards = {r["id"]: r for r in _jsonl(_stage(runs["osp"], "reward") / "rewards.jsonl")}
    assert set(cream) < {_key(p) for p in osp}  # best/worst among the ranked pairs, and more
    for p in osp:
        r = rewards[p["id"]]["rewards"]
        assert p["chosen_reward"] == r[p["chosen_index"]] > p["rejected_reward"] == r[p["rejected_index"]]
        # tau 1: the implicit reward's own Bradley-Terry probability, sigmoid(dpo.beta x gap), beta 0.1
        strength = 1 / (1 + math.exp(-0.1 * (p["chosen_reward"] - p["rejected_reward"])))
        assert p["strength"] == pytest.approx(strength)
        assert p["target"] == pytest.approx(p["consistency"] * strength + (1 - p["consistency"]) * (1 - strength))
        if _key(p) in cream:  # the same pair: CREAM's label is C, OSP's moves it toward 1/2 by the strength
            assert cream[_key(p)]["target"] == cream[_key(p)]["consistency"] == p["consistency"]
            assert abs(p["target"] - 0.5) <= abs(p["consistency"] - 0.5)
    assert any(p["target"] != p["consistency"] for p in osp)
    batch = _loss_inputs(runs["osp"], "cream", tiny_model_dir, tmp_path)
    assert sorted(batch["target"].tolist()) == pytest.approx(sorted(p["target"] for p in osp))
    cream_batch = _loss_inputs(runs["cream"], "cream", tiny_model_dir, tmp_path / "c")
    assert sorted(cream_batch["target"].tolist()) == pytest.approx(sorted(p["consistency"] for p in cream.values()))


def test_scir_keeps_the_pairs_both_votes_prefer_weighted_by_their_confidence(runs, tiny_model_dir, tmp_path):
    cream = {_key(p): p for p in _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")}
    scir = _jsonl(_stage(runs["scir"], "pairs") / "pairs.jsonl")
    rewards = {r["id"]: r for r in _jsonl(_stage(runs["scir"], "reward") / "rewards.jsonl")}
    assert {_key(p) for p in scir} <= set(cream)
    for p in scir:
        scores = rewards[p["id"]]["scores"]
        c, r = p["chosen_index"], p["rejected_index"]
        v = vote(scores["implicit"][c] - scores["implicit"][r], scores["likelihood"][c] - scores["likelihood"][r], 0.1, 1.0)
        assert v.agree and p["weight"] == pytest.approx(v.weight) and p["weight"] < 1
        assert p["penalty"] == 0.5 and p["penalty_target"] == pytest.approx(v.judge)
        assert p["target"] == cream[_key(p)]["target"]  # the label is CREAM's; the weight and penalty are SCIR's
    metrics = _metrics(runs["scir"], "pairs")
    assert metrics["scir/agreement_rate"] == pytest.approx(len(scir) / len(cream))
    batch = _loss_inputs(runs["scir"], "cream", tiny_model_dir, tmp_path)
    assert sorted(batch["weight"].tolist()) == pytest.approx(sorted(p["weight"] for p in scir))
    assert sorted(batch["penalty_target"].tolist()) == pytest.approx(sorted(p["penalty_target"] for p in scir))
    cream_batch = _loss_inputs(runs["cream"], "cream", tiny_model_dir, tmp_path / "c")
    assert cream_batch["weight"].tolist() == [1.0] * len(cream) and cream_batch["penalty"].tolist() == [0.0] * len(cream)
