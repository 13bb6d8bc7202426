"""SRLM judge parsing, oracle correctness and reward-accuracy arithmetic."""

import pytest

from cream.config import JudgeConfig
from cream.rewards.diagnostics import reward_accuracy
from cream.errors import ConfigError
from cream.rewards.judge import judge_prompt, parse_score
from cream.rewards.rewarders import oracle_scores
from cream.runs.rows import PromptSamples, Response

JUDGE = {k: getattr(JudgeConfig(), k) for k in ("template", "pattern", "min_score", "max_score")}  # the srlm judge
PATTERN = JUDGE["pattern"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The response is relevant and helpful.\nScore: 4", 4),
        ("score: 4/5", 4),
        ("Score:4", 4),
        ("SCORE: 3", 3),
        ("**Score:** 5", 5),
        ("Score: 0", 0),
        ("Score: 5.", 5),
        ("Justification... Score: 2\n", 2),
        ("Score: 6", None),  # outside 0..5
        ("Score: 10", None),
        ("Score: 4/10", None),  # another scale
        ("Score: 4.5", None),  # not a whole number of points
        ("The response earns four points.", None),  # no score
        ("", None),
        ("Score: 3 ... on reflection, Score: 4", None),  # two different scores
        ("Score: 4\nFinal. Score: 4", 4),  # the same score twice
        ("It deserves a 4. I give it 4 points out of 5.", None),
        ("Score: <total points>", None),  # the template echoed back
        ("My score: 2 because the answer is incomplete.", 2),  # inside the justification, alone
        ("Score: -1", None),
        ("Score: 3/5", 3),
        ("Scores: 3", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text, PATTERN, 0, 5) == expected


def test_judge_template_is_filled_without_format_errors():
    filled = judge_prompt(JUDGE["template"], "What is {x}?", "It is {y}.")
    assert "User: What is {x}?" in filled and "<response>It is {y}.</response>" in filled


@pytest.mark.parametrize(
    "override, key",
    [({"template": "no placeholders"}, "judge.template"), ({"pattern": "score: \\d"}, "judge.pattern"),
     ({"pattern": "(unclosed"}, "judge.pattern"), ({"samples": 0}, "judge.samples")],
)
def test_judge_config_validated(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        JudgeConfig(**{**JUDGE, **override})


def test_oracle_scores_use_evaluation_extraction():
    def row(task, answer, *texts):
        return PromptSamples("p", task, "q", answer, [1, 2], [Response(t, [3], True) for t in texts])

    rows = [row("gsm8k", "1234", "So the total is $1,234.", "#### 12"),
            row("arc_easy", "B", "Answer: (B)", "This is a trap. Answer: C")]
    assert oracle_scores(rows) == [[1.0, 0.0], [1.0, 0.0]]


def test_reward_accuracy_arithmetic():
    pairs = [(True, False), (False, True), (True, True), (False, False)]
    prompts = [
        ([3.0, 1.0, 2.0], [True, False, False]),  # correct beats both wrong: 2/2
        ([1.0, 2.0], [True, False]),  # inverted: 0/1
        ([1.0, 1.0], [True, False]),  # tie: 1/2
        ([1.0, None, 0.0], [False, True, False]),  # the correct one is unscored: no comparison
        ([1.0, 2.0], [False, False]),  # nothing correct
    ]
    m = reward_accuracy(pairs, prompts)
    assert m["reward_accuracy/chosen_correct"] == 0.5
    assert m["reward_accuracy/rejected_wrong"] == 0.5
    assert m["reward_accuracy/inverted"] == 0.25
    assert m["reward_accuracy/auc"] == pytest.approx((2 + 0 + 0.5) / 4)
    assert m["reward_accuracy/comparisons"] == 4
    assert m["explore/any_correct"] == pytest.approx(4 / 5)
