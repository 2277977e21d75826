"""Names of swappable components, so that a config (or a JSON file, or a command line) can name them.

Each :class:`Registry` maps a name to a class or a builder. The tables:

- :data:`MEMORY_MODELS`: the fast-weight family ``f(W; x)`` of a memory head, as builders
  ``(dim_head, *, depth, expansion, activation) -> MemoryModel``.
- :data:`OBJECTIVES`: the inner loss (paper eq. 12 and MIRAS' alternatives).
- :data:`OPTIMIZERS`: the inner optimizer (eq. 13 momentum, plain gradient descent, Muon).
- :data:`RETENTIONS`: the retention (the paper's l2 forgetting and MIRAS' alternatives).
- :data:`FEATURE_MAPS`: the feature map on the memory's queries and keys.
- :data:`MEMORY_GATES`: how ``theta``, ``eta``, ``alpha`` are produced when a config names
  them by string (a float in a config means a constant gate, ``None`` switches it off).
- :data:`COMBINES`: how a block merges attention and memory outputs (MAC eq. 25, MAG eq. 28).
- :data:`ACTIVATIONS`: activations a memory MLP may use.
- :data:`VARIANTS`: block builders ``(config, layer) -> nn.Module`` for each variant; filled by
  :mod:`titans.builders`.

Adding a component is one call, e.g.
``MEMORY_MODELS.register("my_mlp", lambda d, **kw: MyMemory(d))``; configs may then name it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from memory_blocks.feature_maps import FEATURE_MAPS as _FEATURE_MAPS
from memory_blocks.memories import GatedMLPMemory, LinearMemory, MemoryModel, MLPMemory
from memory_blocks.memories.activations import ACTIVATIONS as _ACTIVATIONS
from memory_blocks.objectives import OBJECTIVES as _OBJECTIVES
from memory_blocks.optimizers import OPTIMIZERS as _OPTIMIZERS
from memory_blocks.retention import RETENTIONS as _RETENTIONS
from memory_blocks.step_scale import STEP_SCALES as _STEP_SCALES

from titans.gating import NormalizedGate, ProductGate, SigmoidGate

__all__ = [
    "ACTIVATIONS",
    "COMBINES",
    "FEATURE_MAPS",
    "MEMORY_GATES",
    "MEMORY_MODELS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "RETENTIONS",
    "STEP_SCALES",
    "VARIANTS",
    "Registry",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components.

    Args:
        kind: what the entries are (used in error messages, e.g. ``"memory model"``).
        entries: the initial name -> entry pairs.
        where: the table's importable name (e.g. ``"titans.registry.MEMORY_MODELS"``), which the
            errors of :meth:`get` show as the place to register a component.
    """

    def __init__(self, kind: str, entries: dict[str, T] | None = None, *, where: str | None = None) -> None:
        self.kind = kind
        self.where = where or f"the {kind} registry"
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Adds ``entry`` under ``name``; refuses to overwrite unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"Registry({self.kind}): a name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"Registry({self.kind}): {name!r} is already registered (pass replace=True)")
        self._entries[name] = entry
        return entry

    def get(self, name: str, field: str) -> T:
        """The entry called ``name``.

        Raises:
            ValueError: naming the config ``field``: ``name`` is not a string (a config names
                its components; an object must be registered under a name first), or no entry
                is registered under it (the message lists the names and says how to register
                one: a user's component must be registered in every process that builds or
                loads a model naming it)."""
        if not isinstance(name, str):
            raise ValueError(
                f"{field}: expects the name of a registered {self.kind} (a string), got a "
                f"{type(name).__name__} object; register it first, {self.where}.register('my_name', ...), "
                "and give 'my_name'"
            )
        if name not in self._entries:
            raise ValueError(
                f"{field}: unknown {self.kind} {name!r}; choose one of {self.names()}, or register your own with "
                f"{self.where}.register({name!r}, ...) (in every process that builds or loads a model naming it)"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _linear(dim: int, *, depth: int, expansion: float, activation: str) -> MemoryModel:
    return LinearMemory(dim, dim)


def _mlp(dim: int, *, depth: int, expansion: float, activation: str) -> MemoryModel:
    return MLPMemory(dim, depth=depth, expansion=expansion, activation=activation)


def _gated_mlp(dim: int, *, depth: int, expansion: float, activation: str) -> MemoryModel:
    return GatedMLPMemory(dim, expansion=expansion)


MemoryBuilder = Callable[..., MemoryModel]

#: Memory models by name: ``linear`` (delta rule / linear attention), ``mlp`` (the paper's
#: deep memory, ``memory_depth`` layers), ``gated_mlp`` (SwiGLU-style; ignores the depth).
MEMORY_MODELS: Registry[MemoryBuilder] = Registry(
    "memory model", {"linear": _linear, "mlp": _mlp, "gated_mlp": _gated_mlp}, where="titans.registry.MEMORY_MODELS"
)
#: Inner objectives by name (classes from :mod:`memory_blocks.objectives`).
OBJECTIVES: Registry[type] = Registry("objective", dict(_OBJECTIVES), where="titans.registry.OBJECTIVES")
#: Inner optimizers by name (classes from :mod:`memory_blocks.optimizers`).
OPTIMIZERS: Registry[type] = Registry("optimizer", dict(_OPTIMIZERS), where="titans.registry.OPTIMIZERS")
#: Retentions by name (classes from :mod:`memory_blocks.retention`).
RETENTIONS: Registry[type] = Registry("retention", dict(_RETENTIONS), where="titans.registry.RETENTIONS")
#: Feature maps on queries and keys by name (classes from :mod:`memory_blocks.feature_maps`).
FEATURE_MAPS: Registry[type] = Registry("feature map", dict(_FEATURE_MAPS), where="titans.registry.FEATURE_MAPS")
#: Step scales by name: how theta becomes the step of eq. 13 (:mod:`memory_blocks.step_scale`).
STEP_SCALES: Registry[type] = Registry("step scale", dict(_STEP_SCALES), where="titans.registry.STEP_SCALES")
#: Gate kinds a config may name by string; a float means a constant gate.
MEMORY_GATES: Registry[str] = Registry("gate", {"learned": "learned"}, where="titans.registry.MEMORY_GATES")
#: Attention/memory combinations by name (classes from :mod:`titans.gating`).
COMBINES: Registry[type] = Registry(
    "combine gate", {"normalized": NormalizedGate, "product": ProductGate, "sigmoid": SigmoidGate},
    where="titans.registry.COMBINES",
)
#: Activations of a memory MLP.
ACTIVATIONS: Registry[Any] = Registry("activation", dict(_ACTIVATIONS), where="titans.registry.ACTIVATIONS")
#: Block builders per variant, ``(config, layer) -> nn.Module`` (see :mod:`titans.builders`).
VARIANTS: Registry[Callable[..., Any]] = Registry("variant", where="titans.registry.VARIANTS")
