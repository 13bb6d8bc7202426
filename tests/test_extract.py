"""Answer extraction: option letters, GSM8K numbers, and the correctness check built on them."""

import pytest

from cream.eval.extract import extract_choice, extract_number, is_correct, normalize_number


@pytest.mark.parametrize(
    "text, n_options, expected",
    [
        # the published extractor's failures: the article "a" is not option A, E is an option
        ("This is a good question. Answer: C", 5, "C"),
        ("It is a fact that water boils at 100 degrees.", 5, None),
        ("It is a fact that...", 5, None),
        ("Answer: a good choice would be the second one.", 5, None),
        ("Answer: A good choice would be the second one.", 5, None),
        ("Answer: I think it is the second one.", 10, None),
        ("Answer: E", 5, "E"),
        ("Answer: E", 4, None),
        ("Answer: E. rain", 5, "E"),
        # formats
        ("Answer: (B)", 5, "B"),
        ("Answer: [D]", 5, "D"),
        ("**Answer:** C", 5, "C"),
        ("Answer: **C**", 5, "C"),
        ("answer: b", 5, "B"),
        ("answer: b.\n", 5, "B"),
        ("The answer is B.", 5, "B"),
        ("The answer is B because plants make food.", 5, "B"),
        ("The correct answer is option (D).", 5, "D"),
        ("Final answer: choice A", 5, "A"),
        ("Answer: A. cellular telephone", 5, "A"),
        ("Answer: A) cellular telephone", 5, "A"),
        ("Answer: A - cellular telephone", 5, "A"),
        ("answer is: c", 5, "C"),
        ("The answer is\n\nB", 5, "B"),
        ("Answer: B is correct since rain needs clouds.", 5, "B"),
        # the last marker wins; a marker without a letter defers to an earlier one
        ("Answer: A\nOn reflection, Answer: C", 5, "C"),
        ("Answer: D. Let me answer this again.", 5, "D"),
        ("To answer this we compare options. Answer: (A)", 5, "A"),
        # letters beyond the shown options, and numeric labels, are not answers
        ("Answer: G", 13, "G"),
        ("Answer: K", 13, "K"),
        ("Answer: 2", 5, None),
        ("The answer is option 3.", 4, None),
        # last resort: a lone capital option letter at the end
        ("Plants need sunlight, so it is C.", 5, "C"),
        ("(B)", 5, "B"),
        ("D", 5, "D"),
        ("so the right one is b", 5, None),
        ("Photosynthesis makes food for a plant.", 5, None),
        ("", 5, None),
    ],
)
def test_extract_choice(text, n_options, expected):
    assert extract_choice(text, n_options) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She pays 2 + 3 = 5 dollars.\n#### 1,234", "1234"),
        ("#### 72", "72"),
        ("Answer: $18.00.", "18"),
        ("The total is $18.50.", "18.5"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("Each cup holds 3.5 liters.", "3.5"),
        ("The answer is 42.", "42"),
        ("answer: 1,000,000", "1000000"),
        ("The answer is 7 apples, since 3 + 4 = 7 and 10 - 3 = 7.", "7"),
        ("He had 10 and gave away 3, leaving 7 marbles", "7"),
        ("10-3 gives the change", "3"),
        ("First 12, then 15, finally 20", "20"),
        ("The answer is: we need 2 more boxes, so 6 in total.", "2"),
        ("#### 5\nThe answer is 6", "6"),
        ("There is no number here.", None),
        ("", None),
        ("It costs 0.50 dollars", "0.5"),
        ("It costs 100 dollars.", "100"),
        ("The list is 1,2,3", "3"),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("18.00", "18"), ("18.50", "18.5"), ("1,234", "1234"), ("$5", "5"), ("-0.0", "0"), ("1800", "1800"), ("x", None)],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "response, answer, task, n_options, expected",
    [
        ("Step by step... #### 1,234", "1234", "gsm8k", None, True),
        ("The answer is $18.00.", "18", "gsm8k", None, True),
        ("The answer is 17.", "18", "gsm8k", None, False),
        ("no number here", "not a number", "gsm8k", None, False),  # neither side numeric: not a match
        ("Answer: C", "C", "arc_easy", 4, True),
        ("Answer: c", "C", "siqa", 3, True),
        ("Answer: E", "E", "arc_challenge", None, True),
        ("This is a good question.", "A", "openbookqa", 4, False),
        ("Answer: K", "K", "truthfulqa_mc", None, True),
        ("Answer: K", "K", "truthfulqa", 13, True),
        ("Answer: K", "B", "truthfulqa", 4, False),
    ],
)
def test_is_correct(response, answer, task, n_options, expected):
    assert is_correct(response, answer, task, n_options) is expected


def test_is_correct_rejects_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        is_correct("Answer: A", "A", "hellaswag")
