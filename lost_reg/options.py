"""The base of the typed run configuration (:mod:`lost_reg.config`): sections of options as pydantic models.

A section is an :class:`Options` model whose ``group`` names its argument group; a job's configuration
is a flat model made of sections. :class:`Cli` says how a field is spelled on the command line where its
name and type do not (:mod:`lost_reg.cli.options` generates the flags).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Cli:
    """How a field is spelled on the command line where its name and type do not say it."""

    flag: str | None = None
    """The flag, where it is not ``--field-name``."""
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    """The values the command line offers, where they are fewer than the type takes."""
    positional: bool = False
    """Given as ``PATH [PATH ...]`` rather than as a flag."""
    pairs: bool = False
    """A dict given as repeated ``--flag KEY=VALUE`` (values read as Python literals)."""
    parse: Any = None
    """A function from the flag's text to the value (argparse's ``type``)."""
    default_text: str | None = None
    """What ``--help`` says the default is, where the field's own default says nothing."""
    negative: bool = False
    """Values may start with ``-`` (``--layers -4:-1:1``)."""


class Options(BaseModel):
    """Base of every section and job configuration: frozen, no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    group: ClassVar[str | None] = None
    """The section's argument group; None for a job's own fields (they join the first section's group)."""

    def record(self) -> dict[str, Any]:
        """The configuration as JSON values (``summary.json``'s ``config``; ``--config`` reads it back)."""
        return self.model_dump(mode="json")

    def argv(self, fields: typing.Iterable[str] | None = None) -> list[str]:
        """Command-line flags that give this configuration's non-default values (of ``fields``, else all)."""
        out: list[str] = []
        for name in fields if fields is not None else type(self).model_fields:
            info = type(self).model_fields[name]
            value, cli = getattr(self, name), cli_of(info)
            if value == info.get_default(call_default_factory=True):
                continue
            flag = flag_of(name, info)
            if cli.positional:
                out += [str(v) for v in value]
            elif cli.pairs:
                out += [a for pair in pairs_text(value) for a in (flag, pair)]
            elif value is True:
                out.append(flag)
            else:
                out += [flag, str(value)]
        return out


def pairs_text(value: dict[str, Any]) -> list[str]:
    """A dict as ``KEY=VALUE`` texts that read back as the same values (strings quoted as Python literals)."""
    return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in value.items()]


def cli_of(info: Any) -> Cli:
    """A field's :class:`Cli` metadata (defaults when it has none)."""
    return next((m for m in info.metadata if isinstance(m, Cli)), Cli())


def flag_of(name: str, info: Any) -> str:
    """A field's command-line flag: ``--field-name`` unless its :class:`Cli` names another."""
    return cli_of(info).flag or "--" + name.replace("_", "-")


def fields_in_order(model: type[Options]) -> list[tuple[str, str | None]]:
    """(field, argument group) of ``model`` in declaration order: a class's bases (as listed) before its own
    fields; a field keeps its first declaration's place and group, a job's own fields take the job's group,
    else the last group before them."""
    out: dict[str, str | None] = {}

    def walk(cls: type) -> None:
        for base in cls.__bases__:
            if issubclass(base, Options) and base is not Options:
                walk(base)
        for name in cls.__dict__.get("__annotations__", {}):
            if name in model.model_fields and name not in out:
                out[name] = cls.group if "group" in cls.__dict__ else None

    walk(model)
    last = None
    for name, group in out.items():
        out[name] = last = group or last
    return list(out.items())
