"""The plug-in registries: what scores responses, which pairs a prompt gives, which pairs survive, what loss trains.

A method is a plug-in: one module that registers its parts under names, and one config file choosing them.
Each kind has one registry, looked up by the name the config gives; `check_config` validates every name at
start-up (from `cream.preflight`, before any model loads), naming the config key and the known names.

| registry | config key | an entry | used by |
|---|---|---|---|
| `REWARDERS` | `rewarder.name` (and `scir.judge`) | `Rewarder` | the reward stage |
| `PAIRINGS` | `pairs.strategy` | a `Pairing` function | the pairs stage |
| `FILTERS` | `pairs.filters` (a list, applied in order) | a `PairFilter` | the pairs stage |
| `LOSSES` | `dpo.loss` | `Loss` | the dpo stage (`cream.training.dpo_trainer`) |
| `ADAPTIVE_SAMPLERS` | `sampling.adaptive` | an `AdaptiveSampler` | the sample stage |

Built-in entries live beside the maths they use (`cream.rewards.rewarders`, `cream.rewards.pairing`,
`cream.training.losses`; the `none` adaptive sampler in `cream.plugins.samplers`) and register themselves
exactly as the modules of the package `cream.methods` do: `load_plugins` imports each of them once, by name,
before the first lookup, so a new method needs no edit here.

What each kind of entry must do, and the types entries pass: `cream.plugins.contracts`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Generic, Optional, TypeVar

from cream.errors import ConfigError
from cream.plugins.contracts import AdaptiveSampler, Loss, PairFilter, Pairing, Rewarder

if TYPE_CHECKING:
    from cream.config import Config

Entry = TypeVar("Entry")


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

BUILT_IN = ("cream.rewards.rewarders", "cream.rewards.pairing", "cream.training.losses", "cream.plugins.samplers")
_loaded = False


def load_plugins() -> None:
    """Import the modules that register entries: the built-in ones, then every module of `cream.methods`."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILT_IN:
        importlib.import_module(module)
    for info in pkgutil.iter_modules(importlib.import_module("cream.methods").__path__):
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
