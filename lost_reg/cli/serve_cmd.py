"""``lost-reg serve``: the HTTP object-localization service (``POST /v1/boxes``; see :mod:`service`).

Every option left unset comes from its ``LOST_REG_*`` environment variable, else the service's
default (:class:`service.settings.Settings`), so ``docker run -e LOST_REG_BACKBONE=…`` works with
the image's default command. The API key is read from the environment only, never from a flag.
The model loads (and downloads) before the port opens, so a bad backbone fails here, at once. The server
enforces a deadline for request headers (:mod:`service.protocol`) and, after SIGTERM, waits up to
``drain_timeout_s`` for the requests in flight.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from ..methods import all_option_specs
from ..models import DEFAULT_BACKBONE
from .common import add_backbone_arguments, add_method_arguments, model_kwargs

if TYPE_CHECKING:
    from service.settings import Settings

API_KEY_ENV = "LOST_REG_API_KEY"
LOCALHOSTS = ("127.0.0.1", "localhost", "::1")
SHARED = ("backbone", "weights", "pos_resample", "test_time_registers", "features", "layer", "device", "dtype", "method", "prep",
          "max_side",
          *all_option_specs())
"""Dests of the single-valued options from :mod:`.common` (``--model-arg`` given none is ``[]``)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_backbone_arguments(p)
    from service import MAX_SIDE

    add_method_arguments(p, max_side_default=f"{MAX_SIDE} in the service")
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="TCP port")
    unset = argparse.SUPPRESS  # flags backed by settings: unset ones leave the environment its say
    s.add_argument("--max-batch", type=int, default=unset,
                   help="images per backbone call, across concurrent requests [16]")
    s.add_argument("--max-wait-ms", type=float, default=unset,
                   help="how long a queued image waits for others to batch with [5]")
    s.add_argument("--max-file-mb", type=float, default=unset, help="largest file accepted, MB [20]")
    s.add_argument("--max-pixels", type=int, default=unset, help="largest image accepted, width × height [40000000]")
    s.add_argument("--max-files", type=int, default=unset, help="files per request [16]")
    s.add_argument("--timeout-s", type=float, default=unset, help="seconds a request may take before a 504 [30]")
    s.add_argument("--api-key-env", default=API_KEY_ENV, metavar="NAME",
                   help="environment variable holding the bearer token clients must send (unset: no auth)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(**{name: None for name in SHARED})  # None: not given (argparse cannot SUPPRESS these)
    p.epilog = ("Unset options come from LOST_REG_<OPTION> environment variables (e.g. LOST_REG_BACKBONE, "
                "LOST_REG_MODEL_ARGS='{\"depth\": 2}', LOST_REG_CORS_ORIGINS), else the defaults in brackets "
                f"or those of `lost-reg discover`, except --max-side: {MAX_SIDE} here.")


def settings(args: argparse.Namespace) -> Settings:
    """The service settings: the flags given, then the environment, then the defaults."""
    from service.settings import (
        Settings,  # not at import: every lost-reg command loads this module
    )

    given = {k: v for k, v in vars(args).items() if v is not None}
    pairs = given.pop("model_arg", [])
    if pairs:
        given["model_args"] = model_kwargs(pairs)
    if args.api_key_env != API_KEY_ENV:
        if args.api_key_env not in os.environ:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        given["api_key"] = os.environ[args.api_key_env]
    return Settings(**{k: v for k, v in given.items() if k in Settings.model_fields})


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.protocol import HeaderDeadlineProtocol
    from service.runtime import build_localizer

    config = settings(args)
    log = logging.getLogger("service")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    if config.api_key is None and args.host not in LOCALHOSTS:
        log.warning("listening on %s without an API key: set %s to require one", args.host, args.api_key_env)
    log.info("loading %s", config.backbone or config.weights or DEFAULT_BACKBONE)
    app = create_app(config, build_localizer(config))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, http=HeaderDeadlineProtocol,
                timeout_graceful_shutdown=config.drain_timeout_s)
    return 0
