"""How the model is asked: a benchmark row as a question with lettered options, and the judge's rubric.

The question format is shared by sampling (unlabelled prompts) and the `paper` evaluation protocol,
so the model sees the same format in both.
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


# SRLM's additive 5-point LLM-as-a-judge prompt (Yuan et al. 2024, Fig. 2), the default `judge.template`:
# the model judges its own responses; `{prompt}` and `{response}` are filled in.
SRLM_JUDGE_TEMPLATE = (
    "Review the user's question and the corresponding response using the additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the user's inquiry, even if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's question, but does not completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question in a useful way, regardless of whether it seems to have been written by an AI Assistant or if it has elements typically found in blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's perspective, addressing the user's question directly and comprehensively, and is well-organized and helpful, even if there is slight room for improvement in clarity, conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question by an AI Assistant, without extraneous information, reflecting expert knowledge, and demonstrating a high-quality, engaging, and insightful answer.\n"
    '\n'
    'User: {prompt}\n'
    '<response>{response}</response>\n'
    '\n'
    "After examining the user's instruction and the response:\n"
    '- Briefly justify your total score, up to 100 words.\n'
    '- Conclude with the score using the format: "Score: <total points>"\n'
    '\n'
    "Remember to assess from the AI Assistant perspective, utilizing web search knowledge as necessary. To evaluate the response in alignment with this additive scoring model, we'll systematically attribute points based on the outlined criteria."
)


# The self-reference judge's pairwise prompt (`self_reference.template`, cream/methods/self_reference.py): the
# model's own greedy answer is the reference the two responses are compared with; the reply is prefilled with
# `self_reference.reply_prefix`, so the next token is the verdict.
SELF_REFERENCE_TEMPLATE = (
    "Compare two responses to the question below. A reference answer is given: judge which response agrees "
    "better with it and answers the question more correctly and helpfully.\n"
    "\n"
    "Question: {prompt}\n"
    "\n"
    "Reference answer: {reference}\n"
    "\n"
    "Response A: {response_a}\n"
    "\n"
    "Response B: {response_b}\n"
    "\n"
    'Reply with "Better response: A" or "Better response: B".'
)
