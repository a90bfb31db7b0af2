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
    """``METHODS[name](**options)``, options by name or by field (:func:`option_fields`), with a clear error for an
    unknown name or an option it lacks."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    cls, fields = METHODS[name], {field: spec.name for field, spec in option_fields()[name].items()}
    foreign = sorted(set(options) - set(fields) - set(fields.values()))
    if foreign:
        raise ValueError(f"option {', '.join(foreign)} does not apply to method {name} "
                         f"(it takes {', '.join(fields.values())})")
    return cls(**{fields.get(k, k): v for k, v in options.items()})


def option_fields() -> dict[str, dict[str, OptionSpec]]:
    """Each method's options by their field in the one namespace of flags and form fields: an option's own name
    where it is declared as its first declaration is, else ``METHOD_NAME`` (a method's options are its own)."""
    first: dict[str, OptionSpec] = {}
    for cls in METHODS.values():
        for spec in option_specs(cls):
            first.setdefault(spec.name, spec)
    return {name: {s.name if s == first[s.name] else f"{name}_{s.name}": s for s in option_specs(cls)}
            for name, cls in METHODS.items()}


def all_option_specs() -> dict[str, tuple[OptionSpec, list[str]]]:
    """Every field of :func:`option_fields`, with its option and the methods it applies to."""
    out: dict[str, tuple[OptionSpec, list[str]]] = {}
    for name, fields in option_fields().items():
        for field, spec in fields.items():
            out.setdefault(field, (spec, []))[1].append(name)
    return out


def option_values(method: Method) -> dict[str, Any]:
    """A method's option values by field (:func:`option_fields`): the flags that select it."""
    fields = {spec.name: field for field, spec in option_fields()[method.name].items()}
    return {fields[k]: v for k, v in method.options().items()}


__all__ = [
    "Discovery", "METHODS", "Lost", "LostResult", "Method", "OptionSpec", "TokenCut",
    "TokenCutResult", "all_option_specs", "build_method", "lost", "option_fields", "option_specs", "option_values",
    "tokencut",
]
