"""How a benchmark row is shown to the model: the question, with lettered options for multiple choice.

Shared by sampling (unlabelled prompts) and the `paper` evaluation protocol, so the model sees the
same format in both.
"""

from __future__ import annotations

import random
import string

LETTERS = string.ascii_uppercase  # TruthfulQA has rows with up to 13 options
MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "openbookqa", "siqa", "truthfulqa_mc")


def is_multiple_choice(task: str) -> bool:
    return task in MULTIPLE_CHOICE


def shown_choices(row: dict, task: str, seed: int = 0) -> tuple[list[str], str]:
    """The options in the order shown and the letter of the true one.

    TruthfulQA lists its true option first in every row, so its options are shuffled with a
    generator seeded by (seed, row id): fixed across runs, different across questions.
    """
    choices = list(row["choices"])
    answer_index = list(row["labels"]).index(row["answer"])
    if task == "truthfulqa_mc":
        order = list(range(len(choices)))
        random.Random(f"{seed}:{row['id']}").shuffle(order)
        choices = [choices[i] for i in order]
        answer_index = order.index(answer_index)
    return choices, LETTERS[answer_index]


def format_question(row: dict, task: str, seed: int = 0) -> str:
    """The question text; multiple-choice options follow as `A. option` lines."""
    if not is_multiple_choice(task):
        return row["question"].strip()
    choices, _ = shown_choices(row, task, seed)
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{row['question'].strip()}\n{options}"


def ground_truth(row: dict, task: str, seed: int = 0) -> str:
    """The answer a correct response must reach: the shown letter, or GSM8K's number."""
    if is_multiple_choice(task):
        return shown_choices(row, task, seed)[1]
    return str(row["answer"])
