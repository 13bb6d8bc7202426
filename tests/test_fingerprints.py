"""A stage is reused only while the settings its result depends on are unchanged (issue 20): every setting of
every preset either changes the fingerprint of some stage, or is on one short list of settings that cannot
change a result, or is read only by plug-ins the configuration does not select (and then changes nothing).

The fingerprints are the loop's own (`cream.loop.fingerprint`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from cream.config import load_config, to_plain_dict
from cream.loop import fingerprint
from cream.plugins.registry import KINDS, SETTINGS, settings_of
from cream.runs.run_folder import NOT_RESULT_KEYS, flatten
from cream.stages import consistency, diagnose, dpo, evaluate, pairs, reward, sample, settings, sft

CONF = Path(__file__).resolve().parents[1] / "conf"
STAGES = (sft, sample, reward, consistency, pairs, dpo, diagnose, evaluate)
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# Settings that cannot change a result: those run.json leaves out (where things are written and read from: the
# data read is digested on its own, `data_identity`; what is logged; how the run is named and resumed; how many
# threads compute it), the experiment's name (the folder the run is in), and `device`: a run moved from a CPU to
# a GPU keeps what it computed (the numbers differ in the last bits, not in meaning).
NO_RESULT = (*NOT_RESULT_KEYS, "experiment_name", "device")
DATA = {"prompts": "p", "sft_examples": "s", "eval_files": {"arc_easy/validation.jsonl": "e"}}


def compose_preset(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = compose(config_name="config", overrides=[f"experiment={name}", "run_name=t", *overrides],
                           return_hydra_config=True)
    HydraConfig.instance().set_config(composed)  # experiment_name reads Hydra's choice of experiment
    return load_config(composed)


def fingerprints(cfg, plain: dict, data: dict = DATA) -> dict[str, dict]:
    """Each stage's fingerprint over `plain` (as run.json keeps it), with the keys `cfg` selects."""
    kept = {k: v for k, v in plain.items() if k not in NOT_RESULT_KEYS}
    return {stage.NAME: fingerprint(stage, cfg, kept, data, {}, ["m0"]) for stage in STAGES}


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1]] if value else ["x"]
    return 1  # None


def covered(key: str, keys) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def plug_in_keys(cfg) -> set[str]:
    """The keys some registered plug-in declares it reads, selected or not."""
    return {k for kind in KINDS if kind is not SETTINGS for _, entry in kind.items() for k in settings_of([entry], cfg)}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_setting_changes_a_fingerprint_or_cannot_change_a_result(preset):
    cfg = compose_preset(preset)
    plain = to_plain_dict(cfg)
    base = fingerprints(cfg, plain)
    selected = {k for stage in STAGES for k in settings(stage, cfg)}
    owned = plug_in_keys(cfg) | set(SETTINGS.names())  # a method's group is read by its plug-ins only
    unaccounted, stale = [], []
    for key, value in flatten(plain).items():
        edited = copy.deepcopy(plain)
        *parents, leaf = key.split(".")
        node = edited
        for part in parents:
            node = node[part]
        node[leaf] = changed(value)
        moved = [name for name, fp in fingerprints(cfg, edited).items() if fp != base[name]]
        if covered(key, NO_RESULT):
            assert not moved, f"{key} cannot change a result, yet moves {moved}"
        elif covered(key, owned) and not covered(key, selected):
            assert not moved, f"{key} is read only by plug-ins {preset} does not select, yet moves {moved}"
        elif not moved:
            unaccounted.append(key)
    assert not unaccounted, f"{preset}: settings no stage's fingerprint holds (stale results): {unaccounted}"


def test_a_self_reference_setting_recomputes_the_diagnosis_only():
    """`self_reference.answer_tokens=4` on a run that diagnoses with the self-reference judge: only the diagnose
    stage reads it (it reused a stale diagnosis before); under the implicit rewarder nothing else does."""
    rewarders = "diagnose.rewarders=[implicit,self_reference]"
    before = compose_preset("smoke", ("diagnose.enabled=true", rewarders))
    after = compose_preset("smoke", ("diagnose.enabled=true", rewarders, "self_reference.answer_tokens=4"))
    a, b = fingerprints(before, to_plain_dict(before)), fingerprints(after, to_plain_dict(after))
    assert [name for name in a if a[name] != b[name]] == ["diagnose"]


@pytest.mark.parametrize("override", ["judge.samples=5", "self_reference.answer_tokens=4", "upo.k=4", "scir.penalty=0.5",
                                      "bstar.probe_prompts=3"])
def test_settings_of_unselected_plug_ins_recompute_nothing(override):
    """cream_smollm selects none of these plug-ins (diagnose off, rewarder implicit): its stages keep their results."""
    before, after = compose_preset("cream_smollm", ("diagnose.rewarders=[implicit]",)), \
        compose_preset("cream_smollm", ("diagnose.rewarders=[implicit]", override))
    assert fingerprints(before, to_plain_dict(before)) == fingerprints(after, to_plain_dict(after))


@pytest.mark.parametrize("preset, override, stages", [
    ("srlm_smollm", "judge.samples=5", ["reward", "diagnose"]),  # the judge scores in both
    ("upo_smollm", "upo.k=4", ["pairs"]),
    ("scir_smollm", "scir.judge_temperature=2.0", ["pairs"]),
    ("scir_smollm", "scir.judge=likelihood", ["reward", "pairs"]),  # the filter's second vote is scored in the reward stage
    ("bstar_smollm", "bstar.probe_prompts=3", ["sample", "pairs"]),
    ("selfref_smollm", "self_reference.min_mass=0.4", ["reward", "diagnose"]),
])
def test_a_selected_plug_in_setting_recomputes_the_stages_that_run_it(preset, override, stages):
    before, after = compose_preset(preset), compose_preset(preset, (override,))
    a, b = fingerprints(before, to_plain_dict(before)), fingerprints(after, to_plain_dict(after))
    assert [name for name in a if a[name] != b[name]] == stages


@pytest.mark.parametrize("part, stages", [("eval_files", ["evaluate"]), ("sft_examples", ["sft"]),
                                          ("prompts", ["sample", "reward", "consistency", "pairs", "dpo", "diagnose"])])
def test_a_change_of_one_part_of_the_data_recomputes_the_stages_that_read_it(part, stages):
    """Issue 21 case 8: an edited evaluation file recomputed every stage; each stage depends on the parts of the
    data it reads."""
    cfg = compose_preset("smoke")
    plain = to_plain_dict(cfg)
    a, b = fingerprints(cfg, plain), fingerprints(cfg, plain, {**DATA, part: "edited"})
    assert [name for name in a if a[name] != b[name]] == stages
