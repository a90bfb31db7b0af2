"""``lost-reg``: one console script, one sub-command per job.

Each sub-command module provides ``CONFIG`` (its typed configuration, :mod:`lost_reg.config`, whose fields
but ``SKIP`` become its flags) and ``run(config) -> int`` (the work, callable from Python too); one without
a single configuration (``registers``, ``serve``) provides ``add_arguments(parser, saved)`` and ``main(args)``.
Every command takes ``--config SUMMARY``: the configuration a run recorded in its ``summary.json``,
with the flags given overriding it.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..version import __version__
from ..errors import LostRegError
from .options import add_options, from_args, join_negative_values, saved_config

COMMANDS = {
    "eval": "CorLoc of LOST or TokenCut on VOC07, VOC12 or COCO20k, with every prediction written out",
    "discover": "boxes for unlabeled images, as COCO, JSON lines, YOLO, VOC or Label Studio pre-annotations",
    "sweep": "CorLoc of many settings (methods, options, features, layers) from one forward pass per image",
    "table": "the registers paper's LOST table: backbones x datasets x a protocol, with provenance, resumable",
    "registers": "test-time registers: find a ViT's register neurons (for --test-time-registers)",
    "artifacts": "the registers paper's high-norm token analysis (norm histograms, outliers, CLS and register norms)",
    "serve": "HTTP service: POST images to /v1/boxes, get one object box per image (micro-batched)",
}


def build_parser(saved: dict[str, Any] | None = None, command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; ``saved`` (a ``--config`` file's configuration) gives ``command``'s defaults."""
    parser = argparse.ArgumentParser(
        prog="lost-reg", description="Unsupervised object discovery (LOST, TokenCut) on register-aware ViTs."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_DefaultsFormatter)
        p.add_argument("--config", type=Path, metavar="SUMMARY",
                       help="repeat a run: the configuration in its summary.json gives every default")
        module, own = _module(name), saved if name == command else None
        if hasattr(module, "CONFIG"):
            add_options(p, module.CONFIG, skip=getattr(module, "SKIP", ()), saved=own)
            p.set_defaults(func=functools.partial(_run, module))
        else:
            module.add_arguments(p, own)
            p.set_defaults(func=module.main)
    return parser


def _run(module: ModuleType, args: argparse.Namespace) -> int:
    """A configured command: its configuration from the parsed flags, then its work."""
    return module.run(from_args(module.CONFIG, args))


def _module(name: str) -> ModuleType:
    return importlib.import_module(f".{name}_cmd", __name__)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing.

    The one place that overrides an argparse private (``_get_help_string``): it is the hook argparse's own
    ``ArgumentDefaultsHelpFormatter`` uses, and argparse offers no public one for per-flag default text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


class _Console(logging.Handler):
    """The library's messages where the commands print theirs: status lines (INFO) on whatever ``sys.stdout`` is
    at the time, warnings and errors on ``sys.stderr`` (tests and tqdm replace both)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        stream.write(self.format(record) + "\n")
        stream.flush()


def configure_logging() -> None:
    """The library's logging (silent unless configured) shown on the console, once."""
    logger = logging.getLogger("lost_reg")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    try:
        saved = saved_config(argv)
        if command is not None:
            argv = join_negative_values(argv, getattr(_module(command), "CONFIG", None))
        args = build_parser(saved, command).parse_args(argv)
        configure_logging()
        return args.func(args)
    except (LostRegError, ValueError) as e:  # ValueError: bad option values caught by the library's own checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "the same command" if command == "table" else "--resume"
        print(f"interrupted: finished images are saved; rerun with {resume} to go on", file=sys.stderr)
        return 130
