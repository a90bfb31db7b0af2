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
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ..models import DEFAULT_BACKBONE
from ..options import Options
from .options import add_options, from_args

if TYPE_CHECKING:
    from service.settings import Settings

API_KEY_ENV = "LOST_REG_API_KEY"
LOCALHOSTS = ("127.0.0.1", "localhost", "::1")
SECRETS = ("api_key", "label_studio_api_key")
"""Settings read from the environment only, never from a flag (``--api-key-env`` names the variable)."""


class ServeOptions(Options):
    """The server process: where it listens, how it logs, which variable holds the API key."""

    group: ClassVar[str | None] = "server"
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    api_key_env: str = Field(API_KEY_ENV, description="environment variable holding the bearer token clients must "
                                                      "send (unset: no auth)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="server log level")


def add_arguments(p: argparse.ArgumentParser, saved: dict[str, Any] | None = None) -> None:
    from service import MAX_SIDE
    from service.settings import Settings

    add_options(p, Settings, unset=True, skip=SECRETS, saved=saved)
    add_options(p, ServeOptions, saved=saved)
    p.epilog = ("Unset options come from LOST_REG_<OPTION> environment variables (e.g. LOST_REG_BACKBONE, "
                "LOST_REG_MODEL_ARGS='{\"depth\": 2}', LOST_REG_CORS_ORIGINS), else the service's defaults "
                f"(README, the limits table), which are those of `lost-reg discover` except --max-side: {MAX_SIDE}.")


def settings(args: argparse.Namespace) -> Settings:
    """The service settings: the flags given, then the environment, then the defaults."""
    from service.settings import Settings

    given = {name: getattr(args, name) for name in Settings.model_fields
             if name not in SECRETS and getattr(args, name, None) not in (None, [])}
    if args.api_key_env != API_KEY_ENV:
        if args.api_key_env not in os.environ:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        given["api_key"] = os.environ[args.api_key_env]
    return from_args(Settings, argparse.Namespace(**given))


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.protocol import HeaderDeadlineProtocol
    from service.runtime import build_localizer

    config = settings(args)
    serve = from_args(ServeOptions, args)
    log = logging.getLogger("service")
    logging.basicConfig(level=serve.log_level.upper(), format="%(levelname)s:     %(message)s")
    if config.api_key is None and serve.host not in LOCALHOSTS:
        log.warning("listening on %s without an API key: set %s to require one", serve.host, serve.api_key_env)
    log.info("loading %s", config.backbone or config.weights or DEFAULT_BACKBONE)
    app = create_app(config, build_localizer(config))
    uvicorn.run(app, host=serve.host, port=serve.port, log_level=serve.log_level, http=HeaderDeadlineProtocol,
                timeout_graceful_shutdown=config.drain_timeout_s)
    return 0
