"""Answer extraction from free-text responses: the option letter of multiple choice, GSM8K's number.

Pure functions, shared by the `paper` evaluation protocol (as lm-eval filters) and any rewarder that
checks responses against the ground truth.

Multiple choice, in order of preference:
1. The letter after the last answer marker ("Answer:", "answer is", "Final answer:", markdown bold
   removed), optionally in brackets or after "option"/"choice". A letter counts when it stands
   alone: bracketed, or followed by the end of the text, a line break or punctuation. Any letter
   case is accepted there ("answer: c"). A capital followed by more words also counts
   ("The answer is B because ..."), except "A" and "I" followed by a lower-case word, which read
   as the article and the pronoun ("Answer: A good choice ...", "Answer: I think ...").
2. Last resort: the text ends with a lone capital option letter ("... so it is C.", "(B)").
Only letters of the shown options count (A-E by default); digits are never mapped to letters,
because every option is shown lettered (ARC rows labelled 1-4 are re-lettered in the data).

GSM8K: the first number after the last "####", "answer:" or "answer is" that has one, else the
last number in the text. Thousands commas and "$" are dropped; decimals and negatives are kept;
the number is normalised ("18.00" -> "18", "18.50" -> "18.5").
"""

from __future__ import annotations

import re
import string
from decimal import Decimal, InvalidOperation

from cream.config.prompts import is_multiple_choice

_MARKER = r"\banswer(?:\s+is)?\s*:?\s*(?:(?:option|choice)\s+)?"
# group 1: bracketed letter (any case); group 2: letter followed by a delimiter (any case);
# group 3: capital letter followed by whitespace and more text.
_CHOICE_AFTER_MARKER = re.compile(
    _MARKER + r"(?:[(\[{]\s*([A-Za-z])\s*[)\]}]|([A-Za-z])(?=[ \t]*(?:$|\n)|[.,;:!?)\]}'\"]|\s+[-–—])|([A-Z])(?=\s+\S))",
    re.IGNORECASE,
)
_PROSE_AFTER_LETTER = re.compile(r"\s+[a-z]")
_LONE_FINAL_LETTER = re.compile(r"(?:^|[\s(\[])([A-Z])[)\]]?[.!]?\s*$")

_NUMBER_MARKER = re.compile(r"####|\banswer\s*:|\banswer\s+is\b", re.IGNORECASE)
# A minus sign counts only where it cannot be subtraction ("10-3" gives 10 and 3).
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def extract_choice(text: str, n_options: int = 5) -> str | None:
    """The option letter a response chose (upper case), or None; rules in the module docstring."""
    valid = string.ascii_uppercase[:n_options]
    text = text.replace("*", "")  # markdown bold: "**Answer:** C", "Answer: **C**"
    for match in reversed(list(_CHOICE_AFTER_MARKER.finditer(text))):
        letter = next(g for g in match.groups() if g is not None)
        # Group 3 is matched case-insensitively by the shared flag: insist on a real capital.
        if match.group(3) is not None and (
            not letter.isupper() or (letter in "AI" and _PROSE_AFTER_LETTER.match(text, match.end()))
        ):
            continue
        if letter.upper() in valid:
            return letter.upper()
    final = _LONE_FINAL_LETTER.search(text.rstrip())
    if final and final.group(1) in valid:
        return final.group(1)
    return None


def normalize_number(number: str) -> str | None:
    """A number as a canonical string: no commas or "$", no trailing zeros ("18.50" -> "18.5")."""
    cleaned = _THOUSANDS_COMMA.sub("", number.strip()).replace("$", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    return "0" if value == 0 else format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """GSM8K's final answer in a response, normalised, or None; rules in the module docstring."""
    text = _THOUSANDS_COMMA.sub("", text).replace("$", "")
    for marker in reversed(list(_NUMBER_MARKER.finditer(text))):
        number = _NUMBER.search(text, marker.end())
        if number:
            return normalize_number(number.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def is_correct(response: str, answer: str, task: str, n_options: int | None = None) -> bool:
    """Whether a response reaches the answer: GSM8K by number, multiple choice by option letter.

    `task` is a benchmark name (`gsm8k`, `arc_easy`, ..., `truthfulqa_mc` or `truthfulqa`).
    `n_options` is the number of options shown; None accepts letters up to the answer's (at least
    A-E), for callers that only know the answer.
    """
    if task == "gsm8k":
        target = normalize_number(str(answer))
        return target is not None and extract_number(response) == target  # no number read: never correct
    if not (is_multiple_choice(task) or task == "truthfulqa"):
        raise ValueError(f"unknown task {task!r}: expected gsm8k or a multiple-choice benchmark")
    answer = answer.strip().upper()
    if n_options is None:
        n_options = max(5, string.ascii_uppercase.index(answer) + 1)
    return extract_choice(response, n_options) == answer
