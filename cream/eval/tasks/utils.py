"""Python hooks of the task templates: document preparation, answer-extraction filter, TruthfulQA mc2."""

from __future__ import annotations

import numpy as np

from cream.eval.extract import extract_choice, extract_number, normalize_number
from cream.config.prompts import format_question, ground_truth, is_multiple_choice

# Appended to every question of the `paper` protocol (CREAM: think step by step, end with "Answer:").
INSTRUCTION = '\nLet\'s think step by step, and end your response with "Answer: <answer>".'


def paper_doc(row: dict, task: str) -> dict:
    """The prompt and the normalised target of one row under the `paper` protocol."""
    target = ground_truth(row, task)
    return {
        "cream_prompt": format_question(row, task) + INSTRUCTION,
        "cream_target": target if is_multiple_choice(task) else normalize_number(target),
    }


def _paper_docs(task: str):
    def process_docs(dataset):
        return dataset.map(lambda row: paper_doc(row, task))

    return process_docs


# One `process_docs_<data folder>` per benchmark: lm-eval hands process_docs the dataset alone.
for _task in ("arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa_mc"):
    globals()[f"process_docs_{_task}"] = _paper_docs(_task)


def extract_answers(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval `custom` filter: each response becomes its extracted answer ("" when none).

    Multiple-choice rows carry `choices` (their count bounds the letters); GSM8K rows do not.
    """
    def extract(text: str, doc: dict) -> str:
        found = extract_choice(text, len(doc["choices"])) if "choices" in doc else extract_number(text)
        return found or ""

    return [[extract(r, doc) for r in rs] for rs, doc in zip(resps, docs)]


def gsm8k_target(doc: dict) -> str:
    return normalize_number(str(doc["answer"])) or str(doc["answer"])


def process_results_mc2(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """TruthfulQA mc2 as in lm-eval: the normalised probability mass on the true options."""
    ll = np.array([r[0] for r in results])
    probs = np.exp(ll - ll.max())  # shifted for stability; the ratio is unchanged
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probs[labels == 1].sum() / probs.sum())}
