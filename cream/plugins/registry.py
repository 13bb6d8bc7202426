"""The plug-in registries: what scores responses, which pairs a prompt gives, which pairs survive, what loss trains.

A method is a plug-in: one module that registers its parts under names, and one config file choosing them.
Each kind has one registry, looked up by the name the config gives; `check_config` validates every name at
start-up (from `cream.runs.preflight`, before any model loads), naming the config key and the known names.

| registry | config key | an entry | used by |
|---|---|---|---|
| `REWARDERS` | `rewarder.name` (and `scir.judge`) | `Rewarder` | the reward stage |
| `PAIRINGS` | `pairs.strategy` | a `Pairing` function | the pairs stage |
| `FILTERS` | `pairs.filters` (a list, applied in order) | a `PairFilter` | the pairs stage |
| `LOSSES` | `dpo.loss` | `Loss` | the train stage (`cream.training.dpo_trainer`) |
| `ADAPTIVE_SAMPLERS` | `sampling.adaptive` | an `AdaptiveSampler` | the sample stage |

Built-in entries live beside the maths they use (`cream.rewards.rewarders`, `cream.rewards.pairing`, `cream.training.losses`); the
modules of the package `cream.methods` are plug-ins, each imported once before the first lookup, so a new
method needs no edit here: its module registers itself.

Contracts (the protocols below spell them out):
- a `Rewarder` names the models whose log-probs of the responses it reads (the reward stage computes each
  (model, response) log-prob once) and scores every response, given those log-probs and a `RewardInputs`
  (the model pool, for rewarders that run their own model calls, such as a judge);
- a `Pairing` turns one prompt's rewards into preference pairs (`cream.rewards.pairing.Choice`), counting why a
  prompt gave none;
- a `PairFilter` sees the iteration's pairs (each carrying its response indices), the reward rows by prompt
  id and the stage `Context` (model pool, policy, config: it may run forward passes of its own), and returns
  a `FilterResult`: a keep flag and a weight per pair, values of other `Pair` fields to set, and its metrics.
  It names the rewarders whose scores of M_t's responses it reads (`RewardRow.scores`);
- an `AdaptiveSampler` picks the iteration's sampling settings from the current model (B-STaR's probe) and
  may leave settings for later stages in the sample stage's `adaptive.json`;
- a `Loss` says which examples it trains on (`layout`: `pairs` or `responses`, one per scored response),
  which per-example columns it reads, and computes the per-example loss from the policy's summed log-probs
  of the batch's sequences; per-example weights and targets reach it through those columns.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, Protocol, Sequence, TypeVar

from cream.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from cream.config import Config
    from cream.rewards.pairing import Choice, PairStats
    from cream.rewards.rewarders import RewardInputs, RewardSpec
    from cream.runs.rows import Pair, PromptSamples, RewardRow
    from cream.stages import Context
    from cream.stages.sample import SamplingChoice

Entry = TypeVar("Entry")
Scores = list[list[Optional[float]]]  # per prompt, one score per response (None: unscored)


class Rewarder(Protocol):
    needs_reference: bool  # whether it compares the model with a reference model (the implicit reward)

    def logp_models(self, spec: "RewardSpec") -> list: ...

    def scores(self, spec: "RewardSpec", rows: "list[PromptSamples]", logps: dict[str, list[float]],
               inputs: "RewardInputs") -> tuple[Scores, dict]: ...


Pairing = Callable[[Sequence[Optional[float]], Sequence[str], "PairStats"], "list[Choice]"]


@dataclass
class FilterResult:
    keep: list[bool]  # per pair, in the order given
    weight: list[float]  # per pair; multiplies the pair's weight (filters compose)
    metrics: dict = field(default_factory=dict)  # logged with the pairs stage's metrics
    fields: dict[str, list[Any]] = field(default_factory=dict)  # other `Pair` fields to set, per pair


class PairFilter(Protocol):
    def rewarders(self, cfg: "Config") -> tuple[str, ...]: ...  # whose scores of M_t's responses it reads

    def apply(self, pairs: "list[Pair]", rewards: "dict[str, RewardRow]", ctx: "Context") -> FilterResult: ...


@dataclass(frozen=True)
class Loss:
    layout: str  # "pairs" (batch = [chosen; rejected]) or "responses" (one sequence per scored response)
    columns: tuple[str, ...]  # per-example float columns the loss reads (of `Pair` or `ScoredResponse`)
    # (summed policy log-probs of the batch's sequences, the batch, beta) -> (per-example loss, values to log)
    per_example: Callable[["torch.Tensor", dict, float], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class AdaptiveSampler(Protocol):
    def check(self, cfg: "Config") -> None: ...  # its checks of the configuration, naming the keys

    # the iteration's sampling settings, from the current model on the prompts of the shard (`rows`)
    def choose(self, ctx: "Context", rows: "list[PromptSamples]", stage_dir) -> "SamplingChoice": ...


class Registry(Generic[Entry]):
    """Named entries of one kind, looked up by the name a config key gives."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry) -> Entry:
        if name in self._entries:
            raise ValueError(f"two {self.kind}s registered as {name!r}")
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def get(self, name: str, key: Optional[str] = None) -> Entry:
        """The entry `name`; a ConfigError naming the config key (`key`, else this registry's) and the known names."""
        load_plugins()
        name = getattr(name, "value", name)  # an enum of built-in names reads as its value
        if name not in self._entries:
            raise ConfigError(f"config key `{key or self.key}`: unknown {self.kind} {name!r}; "
                              f"known: {', '.join(sorted(self._entries))}")
        return self._entries[name]


REWARDERS: Registry[Rewarder] = Registry("rewarder", "rewarder.name")
PAIRINGS: Registry[Pairing] = Registry("pairing strategy", "pairs.strategy")
FILTERS: Registry[PairFilter] = Registry("pair filter", "pairs.filters")
LOSSES: Registry[Loss] = Registry("loss", "dpo.loss")
ADAPTIVE_SAMPLERS: Registry[AdaptiveSampler] = Registry("adaptive sampler", "sampling.adaptive")

BUILT_IN = ("cream.rewards.rewarders", "cream.rewards.pairing", "cream.training.losses", "cream.stages.sample")
_loaded = False


def load_plugins() -> None:
    """Import the modules that register entries: the built-in ones, then every module of `cream.methods`."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import cream.methods

    for module in BUILT_IN:
        importlib.import_module(module)
    for info in pkgutil.iter_modules(cream.methods.__path__):
        importlib.import_module(f"cream.methods.{info.name}")


def check_config(cfg: "Config") -> None:
    """Every plug-in the configuration names exists, and each selected plug-in accepts the configuration."""
    REWARDERS.get(cfg.rewarder.name)
    REWARDERS.get(cfg.regularizer.first_previous, "regularizer.first_previous")
    PAIRINGS.get(cfg.pairs.strategy)
    filters = [FILTERS.get(name) for name in cfg.pairs.filters]
    loss = LOSSES.get(cfg.dpo.loss)
    sampler = ADAPTIVE_SAMPLERS.get(cfg.sampling.adaptive)
    for entry in [*filters, loss, sampler]:
        check = getattr(entry, "check", None)  # a plug-in's own checks of the configuration, naming its keys
        if check is not None:
            check(cfg)
    for entry in filters:
        for name in entry.rewarders(cfg):
            REWARDERS.get(name)
