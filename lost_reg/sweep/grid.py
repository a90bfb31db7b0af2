"""The sweep's settings: a comma-list-and-range grammar for values, and the product of the options swept.

Values are lists with ranges, see :func:`expand`: ``0,0.1,0.2`` or ``0:0.2:0.1``; a prefix is
kept, so ``cos:0:0.5:0.1`` is ``cos:0,cos:0.1,…,cos:0.5``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..backbone import Tap
from ..methods import Method, all_option_specs, option_fields
from ..recipes import AUTO, recipe_for, resolve_method, resolve_prep

_RANGE = re.compile(r"^(?P<prefix>[A-Za-z][\w-]*:)?(?P<a>-?[\d.]+(?:e-?\d+)?):(?P<b>-?[\d.]+(?:e-?\d+)?)"
                    r":(?P<step>[\d.]+(?:e-?\d+)?)$")


def expand(text: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """A comma list of values and ranges ``[PREFIX:]A:B:STEP`` (B included) → distinct values, in order."""
    out: list[Any] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise ValueError(f"empty value in {text!r}")
        m = _RANGE.match(item)
        if not m:
            values = [item]
        else:
            a, b, step = float(m["a"]), float(m["b"]), float(m["step"])
            if step <= 0 or b < a:
                raise ValueError(f"range {item!r} needs A <= B and STEP > 0")
            n = math.floor((b - a) / step + 1e-9) + 1
            values = [f"{m['prefix'] or ''}{round(a + i * step, 10):g}" for i in range(n)]
        for v in values:
            try:
                value = cast(v)
            except ValueError as e:
                raise ValueError(f"{v!r} in {text!r}: {e}") from None
            if value not in out:
                out.append(value)
    return out


@dataclass(frozen=True)
class SweepSetting:
    """One setting of a sweep: how the image is prepared, which features, which method."""

    prep: str
    features: str
    layer: int
    method: Method

    @property
    def tap(self) -> Tap:
        return self.features, self.layer

    @property
    def name(self) -> str:
        """Readable and unique: ``resize/v-1/tokencut(tau=0.3,eps=1e-05,…)``."""
        options = ",".join(f"{k}={v}" for k, v in self.method.options().items())
        return f"{self.prep}/{self.features}{self.layer}/{self.method.name}({options})"

    @property
    def slug(self) -> str:
        """The name as a folder name."""
        return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", self.name).strip("_")


def expand_settings(family: str, methods: Sequence[str], options: dict[str, list[Any]], features: Sequence[str],
                    layers: Sequence[int], preps: Sequence[str]) -> list[SweepSetting]:
    """Every combination: each method with the product of its own option lists (unset options as
    ``eval`` would set them: the recipe's for the recipe's method), × preparations × features × layers.
    ``auto`` values resolve as in ``eval``."""
    names = list(dict.fromkeys(recipe_for(family).method if m == AUTO else m for m in methods))
    for option, (_, owners) in all_option_specs().items():
        if option in options and not set(names) & set(owners):
            raise ValueError(f"--{option.replace('_', '-')} applies to {', '.join(owners)}, "
                             "which --method does not list")
    out: list[SweepSetting] = []
    for name in names:
        own = [field for field in option_fields()[name] if field in options]
        for combo in itertools.product(*(options[o] for o in own)):
            method = resolve_method(family, name, dict(zip(own, combo)))
            for prep, kind, layer in itertools.product(preps, features, layers):
                setting = SweepSetting(resolve_prep(family, method, prep), kind, layer, method)
                if setting not in out:
                    out.append(setting)
    return out
