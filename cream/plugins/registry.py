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
| `SETTINGS` | a top-level group (`upo`, `scir`, ...) | the dataclass of a method's own settings | the config schema |

Built-in entries live beside the maths they use (`cream.rewards.rewarders`, `cream.rewards.pairing`,
`cream.training.losses`; the `none` adaptive sampler in `cream.plugins.samplers`) and register themselves
exactly as the modules of the package `cream.methods` do: `load_plugins` imports each of them once, by name,
before the first lookup, so a new method needs no edit here. A method's settings dataclass registers in `SETTINGS`
under its group name; `load_plugins` then composes the configuration schema (`cream.config.store_schema`), so a
method's keys are validated like any other, and its schema lives in its module.

An entry declares the configuration keys its result depends on in `settings` (a tuple of sections or dotted
keys, or a function of the config returning one): the stages that run it add them to their fingerprint, so a
changed setting recomputes what reads it, and only that (`settings_of`).

A method module that fails to import, or registers a name that is taken, is reported in one line naming its
file (`PROBLEMS`, logged); its entries are withdrawn, and an experiment that does not select it runs.

What each kind of entry must do, and the types entries pass: `cream.plugins.contracts`.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import traceback
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Optional, TypeVar, Union

from cream.errors import ConfigError
from cream.plugins.contracts import AdaptiveSampler, Loss, PairFilter, Pairing, Rewarder

if TYPE_CHECKING:
    from cream.config import Config

Entry = TypeVar("Entry")
log = logging.getLogger("cream")
PROBLEMS: list[str] = []  # one line per plug-in module that could not be loaded


class Registry(Generic[Entry]):
    """Named entries of one kind, looked up by the name a config key gives."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, Entry] = {}
        self._origins: dict[str, str] = {}  # name -> the module that registered it

    def register(self, name: str, entry: Entry) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already, by {self._origins[name]}")
        self._entries[name] = entry
        self._origins[name] = _loading or "?"
        return entry

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Entry]]:
        load_plugins()
        return sorted(self._entries.items())

    def get(self, name: str, key: Optional[str] = None) -> Entry:
        """The entry `name`; a ConfigError naming the config key (`key`, else this registry's) and the known names."""
        load_plugins()
        if name not in self._entries:
            broken = f"; plug-in modules that failed to load: {' | '.join(PROBLEMS)}" if PROBLEMS else ""
            raise ConfigError(f"config key `{key or self.key}`: unknown {self.kind} {name!r}; "
                              f"known: {', '.join(sorted(self._entries))}{broken}")
        return self._entries[name]

    def _withdraw(self, module: str) -> None:
        for name in [n for n, origin in self._origins.items() if origin == module]:
            del self._entries[name], self._origins[name]


REWARDERS: Registry[Rewarder] = Registry("rewarder", "rewarder.name")
PAIRINGS: Registry[Pairing] = Registry("pairing strategy", "pairs.strategy")
FILTERS: Registry[PairFilter] = Registry("pair filter", "pairs.filters")
LOSSES: Registry[Loss] = Registry("loss", "dpo.loss")
ADAPTIVE_SAMPLERS: Registry[AdaptiveSampler] = Registry("adaptive sampler", "sampling.adaptive")
SETTINGS: Registry[type] = Registry("settings group", "<group>")  # a method's own config group -> its dataclass
KINDS = (REWARDERS, PAIRINGS, FILTERS, LOSSES, ADAPTIVE_SAMPLERS, SETTINGS)

BUILT_IN = ("cream.rewards.rewarders", "cream.rewards.pairing", "cream.training.losses", "cream.plugins.samplers")
METHODS = "cream.methods"
_loaded = False
_loading: Optional[str] = None  # the module being imported by `load_plugins`


def load_plugins() -> None:
    """Import the modules that register entries: the built-in ones, then every module of `cream.methods`; then
    store the configuration schema with every method's settings group. A method module that fails is withdrawn
    and reported in one line (`PROBLEMS`); a built-in one that fails is a bug and raises."""
    global _loaded, _loading
    if _loaded:
        return
    _loaded = True
    for module in BUILT_IN:
        _loading = module
        importlib.import_module(module)
    package = importlib.import_module(METHODS)
    for info in pkgutil.iter_modules(package.__path__):
        _loading = module = f"{METHODS}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as e:  # any failure of a plug-in's own code: reported, the others still load
            for registry in KINDS:
                registry._withdraw(module)
            PROBLEMS.append(_problem_line(module, e))
            log.warning("plug-in not loaded: %s", PROBLEMS[-1])
    _loading = None
    from cream.config import store_schema

    store_schema(dict(SETTINGS._entries), PROBLEMS)


def _problem_line(module: str, error: Exception) -> str:
    """`cream/methods/x.py line 12: NameError: name 'y' is not defined`: the plug-in's own line of the failure."""
    path = f"{module.replace('.', '/')}.py"
    line = getattr(error, "lineno", None)  # a SyntaxError carries its own
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename.replace("\\", "/").endswith(path):
            line = frame.lineno
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    return f"{path}{f' line {line}' if line else ''}: {message}"


def config_class() -> type:
    """The configuration schema with every loaded method's settings group (`cream.config.Config` plus them)."""
    load_plugins()
    from cream.config import schema

    return schema()


Settings = Union[tuple[str, ...], Callable[["Config"], tuple[str, ...]]]


def settings_of(entries: Iterable[Any], cfg: "Config") -> tuple[str, ...]:
    """The configuration keys the `entries` read (each entry's `settings`), in order, once each."""
    keys: dict[str, None] = {}
    for entry in entries:
        declared = getattr(entry, "settings", ())
        keys.update(dict.fromkeys(declared(cfg) if callable(declared) else declared))
    return tuple(keys)


def rewarders_of(cfg: "Config", names: Iterable[str]) -> list[Rewarder]:
    return [REWARDERS.get(name) for name in dict.fromkeys(names)]


def check_config(cfg: "Config") -> None:
    """Every plug-in the configuration names exists, and each selected plug-in accepts the configuration."""
    REWARDERS.get(cfg.rewarder.name)
    REWARDERS.get(cfg.regularizer.first_previous, "regularizer.first_previous")
    for name in cfg.diagnose.rewarders:
        REWARDERS.get(name, "diagnose.rewarders")
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
