"""The self-reference judge (`rewarder=self_reference`): the model judges pairs of its responses against an
answer it wrote itself first.

For each prompt the model answers greedily (`self_reference.answer_tokens`), then, for each pair of responses
(i, j), reads `self_reference.template` with the reference answer and the two responses in both orders,
i as A and j as B, then j as A and i as B, its reply prefilled with `self_reference.reply_prefix`. A verdict
is the next-token probability of the two verdict tokens (`self_reference.verdicts`, " A" and " B"):
P(first wins) = P(A) / (P(A) + P(B)) = sigmoid(log P(A) - log P(B)). It parses when the two tokens hold at
least `self_reference.min_mass` of the next-token probability. A pair is judged when both orders parse, and
then P(i beats j) = (P_AB(i wins) + P_BA(i wins)) / 2: averaging over the orders cancels position bias.
A response's score is its win rate, the mean P(i beats j) over the pairs it was judged in (None: none).

Choices where the method leaves one open: one order alone is not used (it would bring back the position
bias); two responses with the same text prefer neither (1/2) without a verdict; the verdict is read from
probabilities, not sampled text, so it costs one forward pass of the judge prompt per order (the two verdict
tokens share it through the scoring kernel's prompt cache). Logged: the parse rate (the share of verdicts
whose two tokens hold `min_mass` of the probability) and the position-bias rate (the share of judged pairs
whose two orders pick different winners).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Optional

from cream.config.prompts import SELF_REFERENCE_TEMPLATE
from cream.errors import ConfigError, StageError, require
from cream.engine.generation import chat_prompt_ids, generate
from cream.engine.models import load_tokenizer
from cream.plugins.contracts import Scores
from cream.plugins.registry import REWARDERS, SETTINGS
from cream.engine.scoring import sequence_logprobs


@dataclass
class SelfReferenceConfig:
    """The self-reference judge (`rewarder=self_reference`): the model answers each prompt greedily, then gives a
    verdict on each pair of responses against that answer, in both orders."""

    template: str = SELF_REFERENCE_TEMPLATE  # fills {prompt}, {reference}, {response_a}, {response_b}
    reply_prefix: str = "Better response:"  # the verdict is the next token after this prefill
    verdicts: list[str] = field(default_factory=lambda: [" A", " B"])  # one token each: "A wins", "B wins"
    answer_tokens: int = 128  # the greedy reference answer's token budget
    # a verdict counts (parses) when its two tokens hold at least this share of the next-token probability
    min_mass: float = 0.5
    batch_size: int = 8  # judge prompts per scoring forward

    def __post_init__(self) -> None:
        for placeholder in ("{prompt}", "{reference}", "{response_a}", "{response_b}"):
            require(placeholder in self.template, "self_reference.template", f"must contain {placeholder}")
        require(len(self.verdicts) == 2 and self.verdicts[0] != self.verdicts[1], "self_reference.verdicts",
                f"must be two different strings (A wins, B wins), got {self.verdicts}")
        require(self.answer_tokens > 0, "self_reference.answer_tokens", f"must be > 0, got {self.answer_tokens}")
        require(0 <= self.min_mass <= 1, "self_reference.min_mass", f"must be in [0, 1], got {self.min_mass}")
        require(self.batch_size > 0, "self_reference.batch_size", f"must be > 0, got {self.batch_size}")

PLACEHOLDER = re.compile(r"\{(prompt|reference|response_a|response_b)\}")


@dataclass(frozen=True)
class Verdict:
    first_wins: float  # P(the response shown as A wins), the two verdict tokens' probabilities normalized
    mass: float  # the share of the next-token probability the two verdict tokens hold


def verdict(logp_a: float, logp_b: float) -> Verdict:
    """The verdict from the log-probs of the tokens "A wins" and "B wins" at the verdict position."""
    gap = logp_a - logp_b
    first = 1 / (1 + math.exp(-gap)) if gap >= 0 else math.exp(gap) / (1 + math.exp(gap))
    return Verdict(first, math.exp(logp_a) + math.exp(logp_b))


def pair_preference(i_first: Optional[Verdict], j_first: Optional[Verdict], min_mass: float
                    ) -> tuple[Optional[float], Optional[bool]]:
    """P(i beats j) averaged over the two orders, and whether the orders pick different winners; (None, None)
    when either order is missing or does not parse."""
    if i_first is None or j_first is None or i_first.mass < min_mass or j_first.mass < min_mass:
        return None, None
    a, b = i_first.first_wins, 1 - j_first.first_wins  # each order's P(i wins)
    return (a + b) / 2, (a > 0.5) != (b > 0.5)


def response_scores(n: int, preference: dict[tuple[int, int], Optional[float]]) -> list[Optional[float]]:
    """Each response's mean P(it beats the other) over its judged pairs (keys (i, j), i < j: P(i beats j))."""
    wins: list[list[float]] = [[] for _ in range(n)]
    for (i, j), p in preference.items():
        if p is not None:
            wins[i].append(p)
            wins[j].append(1 - p)
    return [sum(w) / len(w) if w else None for w in wins]


def judge_text(template: str, prompt: str, reference: str, response_a: str, response_b: str) -> str:
    """The template with its placeholders filled in one pass: a text that contains a placeholder (or braces)
    is inserted as it is, never filled in turn."""
    values = {"prompt": prompt, "reference": reference, "response_a": response_a, "response_b": response_b}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class Greedy:
    """What `generation.generate` reads for the reference answer: one greedy continuation per prompt."""

    max_new_tokens: int
    batch_size: int
    n: int = 1
    temperature: float = 0.0  # the decoders read 0 as greedy
    top_p: float = 1.0


def verdict_token_ids(tokenizer, verdicts: list[str]) -> list[int]:
    ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in verdicts]
    if any(len(i) != 1 for i in ids):
        raise ConfigError(f"config key `self_reference.verdicts`: each verdict must be one token of the model's "
                          f"tokenizer; {verdicts} encode to {ids}")
    return [i[0] for i in ids]


class SelfReferenceRewarder:
    needs_reference = False
    settings = ("self_reference",)

    def logp_models(self, spec) -> list:
        return []

    def scores(self, spec, rows, logps, inputs) -> tuple[Scores, dict]:
        cfg: SelfReferenceConfig = inputs.config.self_reference
        tokenizer = load_tokenizer(spec.model.base)
        token_a, token_b = verdict_token_ids(tokenizer, cfg.verdicts)
        out_dir = inputs.stage_dir / "self_reference" / spec.model.name
        answerable = [k for k, row in enumerate(rows) if len(row.prompt_ids) + cfg.answer_tokens <= inputs.max_length]
        answers = generate(inputs.pool, spec.model, tokenizer, [rows[k].prompt_ids for k in answerable],
                           Greedy(cfg.answer_tokens, inputs.engine.batch_size), inputs.engine, inputs.seed,
                           out_dir / "answers", "reference answers", inputs.max_length)
        reference = {k: samples[0].text for k, samples in zip(answerable, answers)}
        prefix = tokenizer(cfg.reply_prefix, add_special_tokens=False)["input_ids"]
        # (row, i, j, i shown first) -> its judge prompt's ids; pairs of the same text prefer neither
        prompts: dict[tuple[int, int, int, bool], list[int]] = {}
        same_text: set[tuple[int, int, int]] = set()
        too_long = 0
        for k, row in enumerate(rows):
            texts = [r.text for r in row.responses]
            for i, j in itertools.combinations(range(len(texts)), 2):
                if texts[i].strip() == texts[j].strip():
                    same_text.add((k, i, j))
                    continue
                for i_first in (True, False):
                    a, b = (texts[i], texts[j]) if i_first else (texts[j], texts[i])
                    ids = chat_prompt_ids(tokenizer, judge_text(cfg.template, row.prompt, reference.get(k, ""), a, b)) + prefix
                    if k not in reference or len(ids) + 1 > inputs.max_length:
                        too_long += 1
                        continue
                    prompts[(k, i, j, i_first)] = ids
        keys = list(prompts)
        sequences = [(prompts[key], [token]) for key in keys for token in (token_a, token_b)]
        with inputs.pool.use(spec.model) as model:
            values = sequence_logprobs(model, sequences, cfg.batch_size, tokenizer.pad_token_id, desc="self-reference verdicts") \
                if sequences else []
        verdicts = {key: verdict(values[2 * m], values[2 * m + 1]) for m, key in enumerate(keys)}
        out, disagreements = [], []
        for k, row in enumerate(rows):
            preference: dict[tuple[int, int], Optional[float]] = {}
            for i, j in itertools.combinations(range(len(row.responses)), 2):
                if (k, i, j) in same_text:
                    preference[(i, j)] = 0.5
                    continue
                p, disagree = pair_preference(verdicts.get((k, i, j, True)), verdicts.get((k, i, j, False)), cfg.min_mass)
                preference[(i, j)] = p
                if disagree is not None:
                    disagreements.append(disagree)
            out.append(response_scores(len(row.responses), preference))
        parsed = sum(v.mass >= cfg.min_mass for v in verdicts.values())
        if verdicts and parsed == 0:
            raise StageError(f"the self-reference judge ({spec.model.name}) gave no verdict whose tokens {cfg.verdicts} hold "
                             f"self_reference.min_mass={cfg.min_mass} of the probability in {len(verdicts)} verdicts "
                             f"(mean mass {sum(v.mass for v in verdicts.values()) / len(verdicts):.3g}): check "
                             f"`self_reference.template`, `self_reference.reply_prefix` and `self_reference.verdicts`")
        stats = {
            "self_reference/reference_answers": len(reference),
            "self_reference/verdicts": len(verdicts),
            "self_reference/forward_passes": len(keys),  # judge prompts encoded, one per pair and order
            "self_reference/parse_rate": parsed / len(verdicts) if verdicts else float("nan"),
            "self_reference/mean_mass": sum(v.mass for v in verdicts.values()) / len(verdicts) if verdicts else float("nan"),
            "self_reference/position_bias_rate": sum(disagreements) / len(disagreements) if disagreements else float("nan"),
            "self_reference/too_long": too_long,
            "self_reference/unscored_responses": sum(s is None for row in out for s in row),
        }
        return out, stats


REWARDERS.register("self_reference", SelfReferenceRewarder())
SETTINGS.register("self_reference", SelfReferenceConfig)
