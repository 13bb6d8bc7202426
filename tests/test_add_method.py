"""docs/methods.md's "Adding a method", followed literally: the repository copied to a temporary folder, the
two files of the page written there, and the page's command run (on the smoke experiment's tiny model).

A broken plug-in module beside it (one that fails to import, one that registers a taken name) is reported in
one line naming its file, and does not stop the experiment, which does not select it; an experiment that
selects a name of the broken module stops at start-up with that line in its error.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_DATA, REPO

BLOCK = re.compile(r'```(\w+) title="([^"]+)"\n(.*?)```', re.S)
BROKEN = {  # module -> (its text, the line its report must give)
    "cream/methods/half_done.py": ("from cream.plugins.registry import FILTERS\n\nFILTERS.register('half_done', object())\nundefined_name\n",
                                   "cream/methods/half_done.py line 4: NameError: name 'undefined_name' is not defined"),
    "cream/methods/taken_name.py": ("from cream.plugins.registry import REWARDERS\n\nREWARDERS.register('judge', object())\n",
                                    "cream/methods/taken_name.py line 3: ValueError: rewarder 'judge' is registered already, "
                                    "by cream.rewards.rewarders"),
}


def docs_blocks() -> dict[str, str]:
    """The titled code blocks of "Adding a method": file path (or `run`) -> text."""
    page = (REPO / "docs" / "methods.md").read_text()
    section = page[page.index("## Adding a method"):]
    return {title: text for _, title, text in BLOCK.findall(section)}


@pytest.fixture(scope="module")
def copy_with_method(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__")
    for part in ("cream", "conf"):
        shutil.copytree(REPO / part, root / part, ignore=ignore)
    shutil.copy(REPO / "train.py", root / "train.py")
    blocks = docs_blocks()
    written = [title for title in blocks if title != "run"]
    assert written == ["cream/methods/short_chosen.py", "conf/pairs/short_chosen.yaml"]  # one module, one config file
    for title in written:
        (root / title).write_text(blocks[title])
    for path, (text, _) in BROKEN.items():
        (root / path).write_text(text)
    return root


def run_in(root: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    # `python train.py` in the copy imports the copy's `cream` (the script's folder comes first on sys.path)
    return subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=900)


def test_the_documented_method_runs_from_one_module_and_one_config_file(copy_with_method, tmp_path):
    command = shlex.split(docs_blocks()["run"].strip())
    assert command[:2] == ["python", "train.py"]
    result = run_in(copy_with_method, [*command[1:], f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}",
                                       "eval.enabled=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    [metrics] = [r for r in map(json.loads, next(tmp_path.rglob("metrics.jsonl")).read_text().splitlines())
                 if r["stage"] == "pairs"]
    assert 0 < metrics["short_chosen/kept_share"] <= 1
    [run_json] = tmp_path.rglob("run.json")
    assert json.loads(run_json.read_text())["config"]["short_chosen"] == {"max_ratio": 4.0}
    problems = [line for line in result.stderr.splitlines() if line.startswith("plug-in not loaded: ")]
    assert problems == [f"plug-in not loaded: {line}" for _, line in sorted(BROKEN.values(), key=lambda v: v[1])]


def test_selecting_a_broken_modules_name_stops_at_start_up_naming_its_file(copy_with_method, tmp_path):
    result = run_in(copy_with_method, ["train.py", "experiment=smoke", "pairs.filters=[half_done]",
                                       f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}"])
    assert result.returncode == 2
    assert "config key `pairs.filters`: unknown pair filter 'half_done'" in result.stderr
    assert BROKEN["cream/methods/half_done.py"][1] in result.stderr
    assert not list(tmp_path.rglob("run.json"))  # refused before a run folder is made


def test_a_typo_in_the_methods_key_fails_at_composition(copy_with_method, tmp_path):
    result = run_in(copy_with_method, ["train.py", "experiment=smoke", "pairs=short_chosen", "short_chosen.max_ration=2",
                                       f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}"])
    assert result.returncode == 2 and "max_ration" in result.stderr
    result = run_in(copy_with_method, ["train.py", "experiment=smoke", "pairs=short_chosen", "short_chosen.max_ratio=0",
                                       f"paths.runs={tmp_path}", f"paths.data={FIXTURE_DATA}"])
    assert result.returncode == 2 and "config key `short_chosen.max_ratio`: must be > 0" in result.stderr
