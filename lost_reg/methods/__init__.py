"""Discovery methods, chosen by name from one table: patch features in, one object per image out.

Every caller (``eval``, ``discover``, ``serve``, ``sweep``, the Python API) builds its method
with :func:`build_method` from a name and the options given, so no caller knows any method.
"""

from __future__ import annotations

from typing import Any

from .base import Discovery, Method, OptionSpec, option_specs
from .lost import Lost, LostResult, lost
from .tokencut import TokenCut, TokenCutResult, tokencut

METHODS: dict[str, type[Method]] = {"lost": Lost, "tokencut": TokenCut}


def build_method(name: str, **options: Any) -> Method:
    """``METHODS[name](**options)``, with a clear error for an unknown name or an option it lacks."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    cls = METHODS[name]
    known = {spec.name for spec in option_specs(cls)}
    foreign = sorted(set(options) - known)
    if foreign:
        raise ValueError(f"option {', '.join(foreign)} does not apply to method {name} "
                         f"(it takes {', '.join(spec.name for spec in option_specs(cls))})")
    return cls(**options)


def all_option_specs() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Every method option by name, with the methods that take it (first declaration wins)."""
    out: dict[str, tuple[OptionSpec, list[str]]] = {}
    for name, cls in METHODS.items():
        for spec in option_specs(cls):
            out.setdefault(spec.name, (spec, []))[1].append(name)
    return out


__all__ = [
    "Discovery", "METHODS", "Lost", "LostResult", "Method", "OptionSpec", "TokenCut",
    "TokenCutResult", "all_option_specs", "build_method", "lost", "option_specs", "tokencut",
]
