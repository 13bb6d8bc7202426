"""UPO (Uncertainty-enhanced Preference Optimization: "Self-Evolutionary Large Language Models through
Uncertainty-Enhanced Preference Optimization", Wang et al., AAAI 2025, arXiv 2409.11212) as a pair filter,
`pairs.filters=[uncertainty]`.

Each pair's preference probability under M_t's implicit reward model, p = sigmoid(beta * margin) with
margin = (log pi_t(y+) - log pi_ref(y+)) - (log pi_t(y-) - log pi_ref(y-)), is estimated `upo.k` times with
dropout active in M_t (Monte Carlo dropout): pass k shifts M_t's log-prob of each response by its dropout
pass minus its dropout-free value (the reward stage's), so margin_k = implicit gap + shift(y+) - shift(y-).
The pair's certainty is the variance of p over the passes (population variance: at most 1/4 for values in
[0, 1]). The `upo.keep` share of pairs with the lowest variance is kept (ties: the earlier pair);
`upo.weighting=certainty` also weights each kept pair by 1 - 4 Var[p], 1 when every pass agrees.

Choices where the paper leaves one open or differs: the estimator is the policy M_t itself (the paper trains
a separate estimator model); dropout sits on the attention probabilities by default (`upo.site=attention`, any
model) or on the LoRA adapters' inputs (`upo.site=lora`), with probability `upo.dropout`; selection is
deterministic (the most certain first), not sampled in proportion to certainty. The cost, `upo/forward_passes`,
is the response log-probs computed with dropout: k per distinct response of the pairs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from cream.config import Config
from cream.config.plugins import DropoutSite, RewarderName, UpoWeighting
from cream.errors import ConfigError
from cream.engine.models import load_tokenizer
from cream.rewards.pairing import preference_probability
from cream.plugins.contracts import FilterResult
from cream.plugins.registry import FILTERS
from cream.engine.scoring import distinct_count, logprobs_under

IMPLICIT = RewarderName.implicit.value


@dataclass(frozen=True)
class Certainty:
    mean: float  # the mean over the passes of p = sigmoid(beta * margin)
    variance: float  # their population variance


def mc_preference(margins: Sequence[float], beta: float) -> Certainty:
    """The mean and variance of sigmoid(beta * margin) over the dropout passes' implicit reward margins."""
    probabilities = [preference_probability(beta * m, 1.0) for m in margins]
    mean = sum(probabilities) / len(probabilities)
    return Certainty(mean, sum((p - mean) ** 2 for p in probabilities) / len(probabilities))


def most_certain(variances: Sequence[float], keep: float) -> list[bool]:
    """Keep flags for the ceil(keep * n) pairs of lowest variance (the earlier pair first among equal ones)."""
    count = math.ceil(keep * len(variances) - 1e-9)  # 0.3 * 10 is 3.0000000000000004: still 3
    kept = set(sorted(range(len(variances)), key=lambda i: (variances[i], i))[:count])
    return [i in kept for i in range(len(variances))]


def certainty_weight(variance: float) -> float:
    """1 - 4 Var[p]: 1 when the passes agree exactly, 0 at the largest variance of a value in [0, 1] (1/4)."""
    return 1 - 4 * variance


@contextmanager
def dropout_active(model: torch.nn.Module, site: DropoutSite, p: float) -> Iterator[None]:
    """`model` in training mode with dropout `p` at `site`; every changed module and the mode are restored after."""
    changed = []  # (owner, attribute, old value)
    for module in model.modules():
        if site == DropoutSite.attention and isinstance(getattr(module, "attention_dropout", None), float):
            changed.append((module, "attention_dropout", module.attention_dropout))
            module.attention_dropout = p
        elif site == DropoutSite.lora and isinstance(getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
            for name, old in module.lora_dropout.items():  # peft keeps nn.Identity at dropout 0: replaced, not edited
                changed.append((module.lora_dropout, name, old))
                module.lora_dropout[name] = torch.nn.Dropout(p)
    if not changed:
        raise ConfigError(f"config key `upo.site`: {site.value}, but the model has no "
                          f"{'attention module with an `attention_dropout`' if site == DropoutSite.attention else 'LoRA adapter'}")
    training = model.training
    model.train()
    try:
        yield
    finally:
        for owner, name, old in changed:
            setattr(owner, name, old)
        model.train(training)


@contextmanager
def seeded_dropout(model: torch.nn.Module, site: DropoutSite, p: float, seed: int) -> Iterator[None]:
    """`dropout_active` with the masks of `seed` (the same on a rerun); the caller's random state is restored after."""
    with torch.random.fork_rng(), dropout_active(model, site, p):
        torch.manual_seed(seed)
        yield


class UncertaintyFilter:
    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return (IMPLICIT,)

    def check(self, cfg: Config) -> None:
        if cfg.upo.site == DropoutSite.lora and cfg.dpo.lora is None:
            raise ConfigError("config key `upo.site`: lora needs LoRA adapters (dpo.lora is null: full fine-tuning); "
                              "use upo.site=attention")

    def apply(self, pairs, rewards, ctx) -> FilterResult:
        cfg, policy = ctx.cfg, ctx.policy
        sequences = [seq for p in pairs for seq in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))]
        passes = [logps for _, logps in logprobs_under(
            ctx.pool, [policy], sequences, cfg.rewarder.batch_size, load_tokenizer(policy.base).pad_token_id, "upo",
            passes=cfg.upo.k, within=lambda model: seeded_dropout(model, cfg.upo.site, cfg.upo.dropout, ctx.sampling_seed))]
        certainties = []
        for m, pair in enumerate(pairs):
            implicit = rewards[pair.id].scores[IMPLICIT]
            gap = implicit[pair.chosen_index] - implicit[pair.rejected_index]
            margins = [gap + (logps[2 * m] - pair.ref_chosen_logps) - (logps[2 * m + 1] - pair.ref_rejected_logps)
                       for logps in passes]
            certainties.append(mc_preference(margins, cfg.dpo.beta))
        keep = most_certain([c.variance for c in certainties], cfg.upo.keep)
        weighted = cfg.upo.weighting == UpoWeighting.certainty
        weight = [certainty_weight(c.variance) if weighted else 1.0 for c in certainties]
        kept = [c for c, k in zip(certainties, keep) if k]
        metrics = {
            "upo/forward_passes": cfg.upo.k * distinct_count(sequences),
            "upo/kept_share": len(kept) / len(pairs),
            "upo/mean_variance": sum(c.variance for c in certainties) / len(certainties),
            "upo/kept_mean_variance": sum(c.variance for c in kept) / len(kept),
            "upo/mean_probability": sum(c.mean for c in certainties) / len(certainties),
            "upo/mean_weight": sum(w for w, k in zip(weight, keep) if k) / len(kept),
        }
        return FilterResult(keep=keep, weight=weight, metrics=metrics)


FILTERS.register("uncertainty", UncertaintyFilter())
