"""``lost-reg``: one console script, one sub-command per job.

Each sub-command module provides ``add_arguments(parser)`` and ``main(args) -> int``;
argument parsing stays here, the work stays in ``main`` (callable from Python too).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import LostRegError

COMMANDS = {
    "eval": "CorLoc of LOST or TokenCut on VOC07, VOC12 or COCO20k, with every prediction written out",
    "discover": "boxes for unlabeled images, as COCO, JSON lines, YOLO, VOC or Label Studio pre-annotations",
    "sweep": "CorLoc of many settings (methods, options, features, layers) from one forward pass per image",
    "registers": "test-time registers: find a ViT's register neurons (for --test-time-registers)",
    "artifacts": "the registers paper's high-norm token analysis (norm histograms, outliers, CLS and register norms)",
    "serve": "HTTP service: POST images to /v1/boxes, get one object box per image (micro-batched)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lost-reg", description="Unsupervised object discovery (LOST, TokenCut) on register-aware ViTs."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f".{name}_cmd", __name__)
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_DefaultsFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (tests and tqdm replace it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging() -> None:
    """The library's INFO lines (what was loaded, from which layout, resampled how) on stderr, once."""
    logger = logging.getLogger("lost_reg")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return args.func(args)
    except LostRegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad option values caught by the library's own checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished images are saved; rerun with --resume to go on", file=sys.stderr)
        return 130
