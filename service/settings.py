"""Service configuration: environment variables ``LOST_REG_*`` (or ``lost-reg serve`` flags).

The backbone and method options are the CLI's own declarations (:class:`lost_reg.config.LocalizerOptions`:
``LOST_REG_BACKBONE``, ``LOST_REG_WEIGHTS``, ``LOST_REG_MODEL_ARGS`` as a JSON object, ``LOST_REG_TAU``…),
and ``lost-reg serve``'s flags are generated from these settings (:mod:`lost_reg.cli.serve_cmd`); adding
a setting is one field here. Unlike the CLI, ``max_side`` has a finite default: the graphs are
quadratic in the number of patches, so a server must bound the network input.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lost_reg.config import LocalizerOptions, MaskOptions
from lost_reg.options import Cli
from lost_reg.recipes import RECIPES, resolve_method

from . import MAX_SIDE

MB = 1024 * 1024


class Settings(BaseSettings, LocalizerOptions, MaskOptions):
    """Everything the service needs: which model and method (:class:`~lost_reg.config.LocalizerOptions`), how
    masks are refined (:class:`~lost_reg.config.MaskOptions`), batching and request limits."""

    model_config = SettingsConfigDict(env_prefix="LOST_REG_", frozen=True, extra="forbid")
    group: ClassVar[str | None] = "server"

    max_side: Annotated[int, Cli(default_text=f"{MAX_SIDE} in the service")] = Field(
        MAX_SIDE, ge=1, description="longer side of the network input; requests may only lower it")
    max_objects: int = Field(1, ge=1, description="objects per image when a request (or Label Studio) sets none "
                                                   "(at most max_objects_limit)")
    max_objects_limit: int = Field(10, ge=1, description="most objects per image a request may ask for (each is "
                                                         "another round of the method: 422 past it)")
    max_batch: int = Field(16, ge=1, description="images per backbone call")
    max_batch_patches: int = Field(16 * 24 * 24, ge=1, description="patches per backbone call (a larger image goes "
                                                                   "alone): large images batched together would "
                                                                   "hold up every image queued behind them")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first queued image waits for others")
    max_queue: int = Field(256, ge=1, description="images in flight (from their first byte, or a Label Studio "
                                                  "download, until their answer is sent) before requests get 503")
    decode_workers: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1) + 1, ge=1,
                                description="decoding processes; one request holds at most all but one of them")
    decode_timeout_s: float = Field(10.0, gt=0, description="seconds one image's header reading or decoding may "
                                                            "take before its process is killed (422 decode_timeout)")

    max_file_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(40_000_000, ge=1, description="width × height of one image, read from its header")
    max_request_pixels: int = Field(200_000_000, ge=1, description="width × height of all images of one /v1/boxes "
                                                                   "request, read from their headers (413 past it)")
    max_files: int = Field(16, ge=1)
    timeout_s: float = Field(30.0, gt=0, description="from a request's complete body to its answer (504 past it)")
    min_upload_kb_s: float = Field(8.0, ge=0, description="average KB/s a request body must keep up after "
                                                          "upload_grace_s (408 past it; 0: no minimum)")
    upload_grace_s: float = Field(10.0, gt=0, description="seconds a body may take before min_upload_kb_s applies")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds a connection has to send a request's headers "
                                                            "(408, then closed; lost-reg serve's HTTP protocol)")
    drain_timeout_s: float = Field(60.0, gt=0, description="after SIGTERM, seconds lost-reg serve waits for requests "
                                                           "in flight before cancelling them")

    api_key: SecretStr | None = Field(None, description="bearer token required on /v1, /labelstudio and /metrics when set")
    label_studio_url: str | None = Field(None, description="Label Studio's base URL: the only origin task images "
                                                           "are fetched from (/labelstudio)")
    label_studio_api_key: SecretStr | None = Field(None, description="Label Studio API token, to fetch task images")
    label_studio_max_body_mb: float = Field(8.0, gt=0, description="largest /labelstudio request body (413 past it)")
    label_studio_max_tasks: int = Field(1000, ge=1, description="tasks in one /labelstudio/predict request (413 past "
                                                                "it)")
    label_studio_downloads: int = Field(4, ge=1, description="task images downloaded at once, over all requests; "
                                                             "also the images one /labelstudio/predict holds in flight")
    label_studio_fetch_timeout_s: float = Field(10.0, gt=0, description="whole download of one task image (past it: "
                                                                        "that task's prediction is empty)")
    label_studio_timeout_s: float = Field(90.0, gt=0, description="from a /labelstudio/predict body to its answer "
                                                                  "(504 past it); below Label Studio's own 100 s")
    cors_origins: Annotated[list[str], NoDecode, Cli(parse=str, metavar="A,B")] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (off when empty)"
    )
    allowed_hosts: Annotated[list[str], NoDecode, Cli(parse=str, metavar="A,B")] = Field(
        default_factory=list, description="comma-separated Host names the service answers (400 for others; "
                                          "'*.example.com' patterns; every host when empty)"
    )

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """A ValueError (so a ValidationError) for max_objects past its limit, or for options no family's recipe
        takes (the weights' family is only known once they are resolved, at start-up)."""
        if self.max_objects > self.max_objects_limit:
            raise ValueError(f"max_objects ({self.max_objects}) exceeds max_objects_limit ({self.max_objects_limit})")
        problems = []
        for family in RECIPES:
            try:
                resolve_method(family, self.method, self.method_options())
                return self
            except ValueError as e:
                problems.append(e)
        raise problems[0]

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * MB)

    @property
    def label_studio_max_body_bytes(self) -> int:
        return int(self.label_studio_max_body_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        """Largest acceptable body: every file at its limit plus 1 MB of multipart framing and options."""
        return self.max_files * self.max_file_bytes + MB
