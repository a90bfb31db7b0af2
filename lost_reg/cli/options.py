"""Command-line flags generated from the typed configuration (:mod:`lost_reg.config`), and back.

:func:`add_options` adds one flag per field (in the field's argument group, with its help, type,
choices and default); :func:`from_args` validates what argparse parsed into the configuration; a
validation error is one line naming the flag. ``--config FILE`` (a ``summary.json``, or its
``config``) gives the defaults of every flag, so a run repeats with the flags given overriding them
(:func:`saved_config`).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ..options import Options, cli_of, fields_in_order, flag_of, pairs_text
from ..errors import LostRegError, OptionError


def add_options(parser: argparse.ArgumentParser, model: type[Options], unset: bool = False,
                skip: Sequence[str] = (), saved: dict[str, Any] | None = None) -> None:
    """One flag per field of ``model`` (but ``skip``); with ``unset`` their defaults are None, so that only
    the flags given reach the configuration (the service's environment fills the rest); ``saved`` (a
    configuration read by :func:`saved_config`) gives defaults, and what it gives is no longer required."""
    saved = _as_flags(model, saved or {})
    groups: dict[str | None, Any] = {}
    for name, group in fields_in_order(model):
        if name in skip:
            continue
        info, target = model.model_fields[name], groups.get(group)
        if target is None:
            target = groups[group] = parser if group is None else parser.add_argument_group(group)
        cli = cli_of(info)
        kind = _plain(info.annotation)
        kwargs: dict[str, Any] = {"help": info.description or "", "metavar": cli.metavar}
        own = None if info.is_required() else info.get_default(call_default_factory=True)
        default = saved.get(name, None if unset else own)
        required = info.is_required() and not unset and name not in saved
        if cli.default_text:
            kwargs["help"] += f" (default: {cli.default_text})"
        elif unset and own not in (None, [], {}):  # the flag's default stays unset; say what the setting's is
            kwargs["help"] += f" [{own}]"
        if cli.positional:
            parser.add_argument(name, nargs="+" if required else "*", default=default, **kwargs)
            continue
        if cli.pairs:
            kwargs.update(action="append", default=None if unset else saved.get(name, []))
        elif kind is bool:
            kwargs.update(action="store_true", default=None if unset else default)
            kwargs.pop("metavar")
        else:
            choices = cli.choices or (typing.get_args(kind) if typing.get_origin(kind) is Literal else None)
            parse = _usage_errors(cli.parse) if cli.parse else (type(choices[0]) if choices else kind)
            kwargs.update(type=parse, default=default, required=required)
            if choices:
                kwargs["choices"] = list(choices)
        target.add_argument(flag_of(name, info), dest=name, **kwargs)


def _usage_errors(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as argparse's ``type``: the library's :class:`OptionError` becomes a usage error, message kept."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except OptionError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse_flag


def _plain(annotation: Any) -> Any:
    """The type without ``| None`` or ``Annotated``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return annotation


def from_args(model: type[Options], args: argparse.Namespace) -> Any:
    """The configuration ``model`` from parsed flags (those not given, None, are left to the defaults)."""
    given = {name: getattr(args, name, None) for name in model.model_fields}
    return validate(model, {name: pairs(value) if cli_of(model.model_fields[name]).pairs and isinstance(value, list)
                            else value for name, value in given.items() if value is not None})


def validate(model: type[Options], values: dict[str, Any]) -> Any:
    """``model(**values)``, or a one-line error naming the flags whose values do not fit."""
    try:
        return model(**values)  # not model_validate: settings read their environment in __init__
    except ValidationError as e:
        problems = "; ".join(f"{_flag(model, err['loc'])}: {err['msg']}" for err in e.errors())
        raise LostRegError(problems) from None


def _flag(model: type[Options], loc: tuple) -> str:
    name = str(loc[0]) if loc else ""
    info = model.model_fields.get(name)
    return flag_of(name, info) if info is not None else name


def pairs(items: Sequence[str]) -> dict[str, Any]:
    """``["depth=2", "embed_dim=64"]`` → ``{"depth": 2, "embed_dim": 64}`` (values as Python literals)."""
    out: dict[str, Any] = {}
    for pair in items:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LostRegError(f"--model-arg wants KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def saved_config(argv: Sequence[str]) -> dict[str, Any] | None:
    """The configuration ``--config FILE`` in ``argv`` names (a ``summary.json``, or its ``config``), or None."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    path = pre.parse_known_args(list(argv))[0].config
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LostRegError(f"--config {path}: cannot read it ({e})") from None
    data = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise LostRegError(f"--config {path}: not a configuration (a JSON object, or a summary.json)")
    return data


def _as_flags(model: type[Options], saved: dict[str, Any]) -> dict[str, Any]:
    """A saved configuration's values of ``model``'s fields, validated, as argparse holds them."""
    return {name: pairs_text(dict(value)) if cli_of(model.model_fields[name]).pairs else value
            for name, value in saved.items() if name in model.model_fields}


NEGATIVE = re.compile(r"^-\d*\.?\d+(?:e-?\d+)?(?:[,:]-?[\d.]+(?:e-?\d+)?)*$")
"""Values such as ``-1,-2`` or ``-4:-1:1``, which argparse would take for options."""


def join_negative_values(argv: Sequence[str], model: type[Options] | None) -> list[str]:
    """``--layers -4:-1:1`` → ``--layers=-4:-1:1`` for ``model``'s fields marked ``Cli(negative=True)``, so
    argparse reads such values as values (its public way: ``--flag=VALUE``)."""
    if model is None:
        return list(argv)
    flags = {flag_of(n, i) for n, i in model.model_fields.items() if cli_of(i).negative}
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in flags and NEGATIVE.match(arg):
            out[-1] += f"={arg}"
        else:
            out.append(arg)
    return out
