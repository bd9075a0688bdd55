"""Named components: generators, rewards, feature encoders, methods, metrics, prompt sets.

Every registered component is a class with a nested pydantic ``Config`` (strict: unknown keys
are errors) and a constructor taking that config first. ``validate`` checks a suite's args
against ``Config`` without building anything, so no weights are loaded.

A suite may also name ``package.module:Class`` for a user's own component.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from drpo_bench.errors import UserError, nearest

T = TypeVar("T")


#: a random seed. torch.manual_seed and Generator.manual_seed take at most 2^64 - 1 and numpy's
#: default_rng no negative seed; below 2^63, eval.seed + a cell's seed still fits torch
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class StrictConfig(BaseModel):
    """Base for every component config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    cls: type[T]
    description: str
    #: a preset: these config values first, then the suite's args (e.g. a tiny twin's weights: tiny)
    preset: dict[str, Any] | None = None
    #: the module that registered a preset (its args are code there); None for a plain entry
    defined_in: str | None = None

    @property
    def config_model(self) -> type[BaseModel]:
        return getattr(self.cls, "Config", StrictConfig)

    def parse_config(self, args: dict[str, Any] | None) -> BaseModel:
        return self.config_model.model_validate({**(self.preset or {}), **(args or {})})


class Registry(Generic[T]):
    """A name → class table for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, cls, doc)
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def preset(self, name: str, base: type[T], args: dict[str, Any], description: str) -> None:
        """Register ``name`` as ``base`` with ``args`` preset (the suite's args override them): one
        class, several ready-made configurations, e.g. ``sd-turbo-tiny`` = sd-turbo with tiny weights."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        caller = sys._getframe(1).f_globals.get("__name__")  # the preset's args live in that module's code
        self._entries[name] = Entry(name, base, description, dict(args), caller)

    def build(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Construct component ``name`` with ``args`` validated against its config (presets applied)."""
        entry = self.get(name)
        return entry.cls(entry.parse_config(args))

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        load_builtins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UserError:
            return False
        return True

    def get(self, name: str) -> Entry[T]:
        load_builtins()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return Entry(name, _import_object(name, self.kind), "user component")
        hint = ", ".join(nearest(name, self._entries))
        raise UserError(
            f"unknown {self.kind} {name!r}. Nearest valid names: {hint}. "
            f"List them all with `drpo-bench ls {self.kind}s`, or name your own as package.module:Class."
        )


def _import_object(path: str, kind: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import {kind} {path!r}: {exc}. Is the module on PYTHONPATH?") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise UserError(f"module {module_name!r} has no {attr!r} (named as {kind} {path!r})") from exc


GENERATORS: Registry[Any] = Registry("generator")
REWARDS: Registry[Any] = Registry("reward")
FEATURES: Registry[Any] = Registry("feature")
METHODS: Registry[Any] = Registry("method")
METRICS: Registry[Any] = Registry("metric")
PROMPTS: Registry[Any] = Registry("prompt")

REGISTRIES: dict[str, Registry[Any]] = {
    "generators": GENERATORS,
    "rewards": REWARDS,
    "features": FEATURES,
    "methods": METHODS,
    "metrics": METRICS,
    "prompts": PROMPTS,
}

# Packages whose every module is imported once, so their @register decorators run.
_BUILTIN_PACKAGES = (
    "drpo_bench.generators",
    "drpo_bench.rewards",
    "drpo_bench.drpo",
    "drpo_bench.metrics",
    "drpo_bench.shapes",
    "drpo_bench.prompts",
    "drpo_bench.toy",
    "baselines",
)
_loaded = False


def load_builtins() -> None:
    """Import every module of the built-in packages and ``baselines/`` (auto-discovery)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in _BUILTIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")
