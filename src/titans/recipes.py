"""Named memory recipes: the design-space choices of Titans and its follow-ups (MIRAS, ATLAS).

A recipe is a few :class:`~titans.config.TitansConfig` fields: the memory's attentional bias
(``objective``), retention (``retention``; "read per chunk": ``retention_readout="chunk"``, the
nonlinear readout expanded inside each chunk and exact at its end, MIRAS' chunk-wise training;
Moneta keeps the per-token readout, which learned needle recall where the per-chunk one did not,
docs/guides/design_space.md), learning
algorithm (``optimizer``, ``omega_window``) and the keys' feature map. The memory architecture
(``memory_model``, ``memory_depth``, ...) and the stabilising rules (``step_scale``,
``forget_target``) are left to the config, so every recipe runs on the same deep memory and the
same stabilised step (docs/guides/design_space.md).

| recipe | attentional bias | retention | learning algorithm | features |
|---|---|---|---|---|
| ``titans`` | l2 (squared error) | l2 decay | momentum | identity |
| ``moneta`` | l_p, p = 3 | l_q normalisation, q = 4 | momentum | identity |
| ``yaad`` | Huber, delta = 1 | l2 decay | momentum | identity |
| ``memora`` | l2 | KL (softmax), read per chunk | momentum | identity |
| ``atlas`` | l2, Omega rule, c = 4 | l2 decay | Muon (5 Newton-Schulz steps) | polynomial, p = 2 |
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["RECIPES", "recipe_fields"]

#: The fields each recipe sets (every other field keeps its default or the caller's value).
RECIPES: dict[str, dict[str, Any]] = {
    "titans": {},
    "moneta": {"objective": "lp", "objective_kwargs": {"p": 3.0}, "retention": "lq", "retention_kwargs": {"q": 4.0}},
    "yaad": {"objective": "huber", "objective_kwargs": {"delta": 1.0}, "retention": "l2"},
    "memora": {"objective": "squared_error", "retention": "kl", "retention_readout": "chunk"},
    "atlas": {
        "optimizer": "muon",
        "omega_window": 4,
        "feature_map": "polynomial",
        "feature_map_kwargs": {"degree": 2},
    },
}


def recipe_fields(name: str) -> dict[str, Any]:
    """The config fields of recipe ``name`` (a fresh copy).

    Args:
        name: a key of :data:`RECIPES`.

    Returns:
        Field name -> value.

    Raises:
        ValueError: when ``name`` is not a recipe.
    """
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return copy.deepcopy(RECIPES[name])
