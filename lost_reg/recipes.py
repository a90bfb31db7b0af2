"""Defaults per backbone family: which method with which options, features, layer, preparation and precision.

Every ``auto`` (the default of ``--method``, ``--features``, ``--layer`` and ``--prep``) comes
from the recipe of the backbone's family, and so do a method's unset options. The family is that of
the code that published the weights (:attr:`lost_reg.models.Source.family`: a DINO ``.pth`` is DINO
v1 whatever architecture name it is loaded under). DINO v1 keeps the
LOST paper's setting, where LOST was designed and published. Every other family gets the setting
chosen with ``lost-reg sweep`` on the offline DINOv2 ViT-S/14 over 50 VOC12 images
(../shared/data/voc12_dev; README, Defaults): TokenCut on the last block's values at τ = 0.5,
near-best over τ ∈ [0, 0.7], with LOST on the same values at cos:0.2 for ``--method lost``. No
other backbone can be measured here, so they share it until someone sweeps them.

``--dtype auto`` runs a family in bfloat16 (where the device multiplies it natively) only if its recipe
says so: only where bfloat16 was measured to give float32's boxes (README, Precision and compilation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .devices import AUTO
from .devices import resolve_dtype as device_dtype
from .methods import METHODS, Method, build_method


@dataclass(frozen=True)
class Recipe:
    """The default setting of one backbone family."""

    method: str
    """The method of ``--method auto``."""
    options: dict[str, dict[str, Any]]
    """Per method, the options it gets when they are left unset (else the method's own defaults)."""
    features: str
    layer: int
    prep: str
    bf16: bool = False
    """Whether ``--dtype auto`` may run this family in bfloat16: only where it gave float32's boxes."""


RECIPES: dict[str, Recipe] = {
    # bfloat16 unmeasured: no DINO v1 weights here
    "dino": Recipe("lost", {"lost": {"k_patches": 100, "affinity": "raw"}, "tokencut": {"tau": 0.2}},
                   "k", -1, "pad"),
    # bfloat16 moved 2 of TokenCut's and 7 of LOST's 50 voc12_dev boxes (README, Precision and compilation)
    "other": Recipe("tokencut", {"tokencut": {"tau": 0.5}, "lost": {"k_patches": 100, "affinity": "cos:0.2"}},
                    "v", -1, "resize"),
}


def recipe_for(family: str) -> Recipe:
    """The recipe of a backbone family (:attr:`lost_reg.checkpoints.Publisher.family`)."""
    if family not in RECIPES:
        raise ValueError(f"unknown backbone family {family!r}: one of {', '.join(RECIPES)}")
    return RECIPES[family]


@dataclass(frozen=True)
class Setting:
    """A fully resolved setting: no ``auto`` left."""

    method: Method
    features: str
    layer: int
    prep: str


def resolve_method(family: str, name: str = AUTO, options: dict[str, Any] | None = None) -> Method:
    """The method ``name`` (``auto``: the recipe's) with ``options``; the recipe fills the unset ones."""
    recipe = recipe_for(family)
    name = recipe.method if name == AUTO else name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: use auto or one of {', '.join(METHODS)}")
    return build_method(name, **{**recipe.options.get(name, {}), **(options or {})})


def resolve_prep(family: str, method: Method, prep: str = AUTO) -> str:
    """``auto`` → ``pad`` when the method runs its paper's reference graph (so its boxes stay identical
    to the reference code), else the recipe's preparation."""
    if prep != AUTO:
        return prep
    return "pad" if method.reference_graph() else recipe_for(family).prep


def resolve_dtype(family: str, device: torch.device, dtype: str = AUTO, native: bool | None = None) -> str:
    """``auto`` → ``bfloat16`` where the family's recipe allows it and ``device`` multiplies it natively
    (:func:`lost_reg.devices.resolve_dtype`; ``native`` overrides that probe), else ``float32``; a name as it is."""
    if dtype == AUTO and not recipe_for(family).bf16:
        return "float32"
    return device_dtype(device, dtype, native)


def resolve(family: str, method: str = AUTO, options: dict[str, Any] | None = None, features: str = AUTO,
            layer: int | None = None, prep: str = AUTO) -> Setting:
    """Every ``auto`` (and an unset layer) of a setting, from the backbone family's recipe."""
    recipe = recipe_for(family)
    m = resolve_method(family, method, options)
    return Setting(m, recipe.features if features == AUTO else features,
                   recipe.layer if layer is None else layer, resolve_prep(family, m, prep))
