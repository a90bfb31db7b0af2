"""ViT checkpoints as users hold them, read safely, recognised, and brought to timm's layout.

What is recognised (:func:`read_checkpoint`):
- **timm / DINO** state dicts (``patch_embed.proj.weight``, ``blocks.N.attn.qkv…``), bare or inside a
  training checkpoint: DINO's (``teacher`` and ``student``, ``args``; the teacher is taken), timm's
  or others' (``model``, ``state_dict``); ``module.`` prefixes and ``backbone.`` prefixes mixed with
  head keys (``head.``, ``dino_head.``, ``ibot_head.``: dropped).
- **Meta's DINOv2** (``mask_token``, ``register_tokens``, ``blocks.N.ls1.gamma``), also with
  ``block_chunks`` (``blocks.C.N.…``) and as a training checkpoint (``teacher`` or fvcore's
  ``model`` holding ``teacher.backbone.…``); timm's own filter converts it.
- **Hugging Face transformers** ``Dinov2Model``, ``Dinov2WithRegistersModel`` and ``ViTModel``
  folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) or their weights file
  alone; keys mapped here, so transformers is not needed.

Pickled files are read with ``torch.load(weights_only=True)`` and an allow-list of what training
checkpoints hold besides tensors (:data:`SAFE_GLOBALS`): never a blanket unpickle. The
architecture (patch size, width, depth, registers, LayerScale, MLP kind, trained grid) is read
from the weights or the config, so no timm name has to be guessed; the number of heads, which
weights do not hold, comes from the config or is width / 64 (every DINO, DINOv2 and ViT size).
The code the weights were published with (:class:`Publisher`) decides how the position table is
resampled (:mod:`lost_reg.posembed`) and which recipe applies (:mod:`lost_reg.recipes`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import BackboneError

log = logging.getLogger(__name__)

SAFE_GLOBALS = (argparse.Namespace,)
"""Non-tensor objects training checkpoints hold (DINO's ``args``), allowed when unpickling."""
HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.", "dino_head.", "ibot_head.", "pooler.", "classifier.")
"""Parts of a checkpoint that are not the ViT backbone: classifier and self-supervision heads."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A Hugging Face folder's weights, in order of preference."""
HEAD_DIM = 64
"""Width per attention head of every DINO, DINOv2 and ViT size: heads = width / 64 without a config."""


@dataclass(frozen=True)
class Publisher:
    """The code a set of weights was published with: how it resamples positions, and the recipe family."""

    name: str
    pos_resample: str
    """:data:`lost_reg.posembed.POS_RESAMPLES`."""
    family: str
    """:data:`lost_reg.recipes.RECIPES` key."""


PUBLISHERS: dict[str, Publisher] = {
    "timm": Publisher("timm", "timm", "other"),
    "dino": Publisher("DINO (facebookresearch/dino)", "dino", "dino"),
    "dinov2": Publisher("DINOv2 without registers (facebookresearch/dinov2 hub)", "dino", "other"),
    "dinov2-reg": Publisher("DINOv2 with registers (facebookresearch/dinov2 hub)", "timm", "other"),
    "hf-dinov2": Publisher("transformers Dinov2Model", "hf", "other"),
    "hf-dinov2-reg": Publisher("transformers Dinov2WithRegistersModel", "timm", "other"),
    "hf-vit": Publisher("transformers ViTModel", "hf", "other"),
    "hf-vit-dino": Publisher("transformers ViTModel with DINO weights", "hf", "dino"),
}


@dataclass
class Checkpoint:
    """A ViT backbone's weights in timm's layout, what they were recognised as, and their architecture."""

    state: dict[str, torch.Tensor]
    """timm ``VisionTransformer`` keys (Meta's DINOv2 keys are left to timm's filter, which knows them)."""
    layout: str
    """What was recognised, for messages and ``summary.json``."""
    arch: dict[str, Any]
    """``timm.create_model`` keywords of the architecture the weights hold."""
    base: str
    """The timm model whose defaults fill the rest (MLP kind, mean and std)."""
    publisher: str | None
    """:data:`PUBLISHERS` key when the layout says who published it; None when it does not."""
    weak_publisher: str | None = None
    """A guess used only when neither the layout nor the backbone's name says (a DINO-like bare state dict)."""
    overlay: dict[str, Any] = field(default_factory=dict)
    """``pretrained_cfg_overlay`` from the checkpoint (a Hugging Face folder's mean and std)."""


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The ViT backbone in a weights file or Hugging Face folder; BackboneError saying what was found otherwise."""
    path = Path(path)
    config: dict[str, Any] = {}
    if path.is_dir():
        files = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not files:
            raise BackboneError(f"no weights in folder {path}: expected a Hugging Face folder "
                                f"({' or '.join(WEIGHT_FILES)}, with config.json) or pass the weights file")
        config, weights = _json(path / "config.json"), files[0]
    elif path.is_file():
        weights = path
        if (path.parent / "config.json").is_file() and path.name in WEIGHT_FILES:
            config = _json(path.parent / "config.json")
    else:
        raise BackboneError(f"weights file not found: {path}")
    obj = _load(weights)
    state, notes = _unwrap(obj, weights)
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state):
        return _from_hf(state, config, path, notes)
    if "patch_embed.proj.weight" not in state:
        keys = list(state)
        raise BackboneError(
            f"{weights}: not a ViT checkpoint lost-reg knows ({len(keys)} keys, e.g. {keys[:4]}); expected a "
            f"timm or DINO state dict (patch_embed.proj.weight, blocks.N.…), Meta's DINOv2 (mask_token, …), or "
            f"a Hugging Face Dinov2Model/ViTModel (embeddings.patch_embeddings.…), possibly inside a training "
            f"checkpoint (teacher, model, state_dict); pass --backbone NAME --weights FILE with a file of those")
    if "mask_token" in state:
        registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
        notes.insert(0, f"Meta DINOv2 {'with %d registers' % registers if registers else 'without registers'}")
        return Checkpoint(state, ", ".join(notes), _arch(state, registers), _dinov2_base(state, registers),
                          "dinov2-reg" if registers else "dinov2")
    return _from_timm(state, notes, training="args" in obj)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot read {path}: {e}") from e


def _load(path: Path) -> Any:
    """The file's content: safetensors as it is, pickles with ``weights_only`` and :data:`SAFE_GLOBALS` only."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            raise BackboneError(
                f"cannot read weights {path} safely: it holds a {unsafe.group(1)} object, and lost-reg unpickles only "
                f"tensors, containers and {', '.join(g.__module__ + '.' + g.__name__ for g in SAFE_GLOBALS)}; "
                f"if you trust the file, save its state dict alone (torch.save(state_dict, 'backbone.pth'))") from e
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        raise BackboneError(f"cannot read weights {path}: {first}") from e


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone's tensors inside a training checkpoint (block chunks unrolled), and notes on what was taken."""
    notes: list[str] = []
    if not isinstance(obj, dict):
        raise BackboneError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("teacher"), dict):
        notes.append("training checkpoint: the teacher" + (" (a student too)" if "student" in obj else ""))
        obj = obj["teacher"]
    elif isinstance(obj.get("student"), dict):
        notes.append("training checkpoint: the student (no teacher in it)")
        obj = obj["student"]
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            notes.append(f"its {key!r}")
            obj = obj[key]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise BackboneError(f"{path} holds no tensors (keys: {list(obj)[:5]})")
    if any(k.startswith("teacher.") for k in state):  # DINOv2's fvcore checkpoint: the whole SSL model
        notes.append("the teacher" + (" (a student too)" if any(k.startswith("student.") for k in state) else ""))
        state = {k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        dropped = sorted({k.split(".")[0] for k in state if not k.startswith("backbone.")})
        notes.append("its backbone.* keys" + (f" (dropped {', '.join(dropped)})" if dropped else ""))
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    for prefix in ("dinov2.", "vit."):  # transformers' *ForImageClassification around the base model
        if any(k.startswith(prefix + "embeddings.") for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return _unchunk(state, notes), notes


def _unchunk(state: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """DINOv2's ``block_chunks``: ``blocks.C.N.…`` (block N inside chunk C) → ``blocks.N.…``."""
    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.")
    if not any(chunked.match(k) for k in state):
        return state
    notes.append("block_chunks unrolled")
    return {chunked.sub(r"blocks.\1.", k): v for k, v in state.items()}


def _depth(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))


def _arch(state: dict[str, torch.Tensor], registers: int, heads: int | None = None,
          no_embed_class: bool | None = None) -> dict[str, Any]:
    """timm keywords of a timm-, DINO- or Meta-layout ViT, read from its tensors."""
    width, _, patch, _ = state["patch_embed.proj.weight"].shape
    table = state["pos_embed"].shape[1]
    side = math.isqrt(table)
    grid = side if side * side == table else math.isqrt(table - 1)  # without or with a CLS row
    fc1 = state.get("blocks.0.mlp.fc1.weight", state.get("blocks.0.mlp.w12.weight"))
    if heads is None:
        heads = max(1, width // HEAD_DIM)
        log.info("%d attention heads (width %d / %d: the weights do not say; --model-arg num_heads=N to change)",
                 heads, width, HEAD_DIM)
    arch = {"patch_size": patch, "embed_dim": width, "depth": _depth(state),
            "num_heads": heads, "img_size": grid * patch,
            "mlp_ratio": (fc1.shape[0] + 0.5) / width,  # timm takes int(width * ratio) hidden units
            "qkv_bias": "blocks.0.attn.qkv.bias" in state, "reg_tokens": registers,
            "init_values": 1.0 if "blocks.0.ls1.gamma" in state else None}
    if no_embed_class is not None:
        arch["no_embed_class"] = no_embed_class
    return arch


def _dinov2_base(state: dict[str, torch.Tensor], registers: int) -> str:
    """timm's DINOv2 model with the MLP the weights hold (SwiGLU: ViT-g) and the matching prefix layout."""
    swiglu = "blocks.0.mlp.w12.weight" in state
    return f"vit_{'giant' if swiglu else 'small'}_patch14_{'reg4_' if registers else ''}dinov2"


def _from_timm(state: dict[str, torch.Tensor], notes: list[str], training: bool) -> Checkpoint:
    """A timm- or DINO-layout state dict. DINO's training checkpoints say who made them; a bare state dict
    without classifier, LayerScale or registers is what DINO publishes, and is taken for DINO's unless the
    backbone's name says otherwise."""
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    patches = state["pos_embed"].shape[1]
    no_embed_class = math.isqrt(patches) ** 2 == patches
    arch = _arch(state, registers, no_embed_class=no_embed_class)
    plain = not registers and arch["init_values"] is None and not any(k.startswith(HEAD_PREFIXES) for k in state)
    dino_training = training and notes and notes[0].startswith("training checkpoint")
    notes.insert(0, "DINO" if dino_training else "timm/DINO ViT state dict")
    base = "vit_base_patch16_224.dino" if plain else "vit_small_patch14_dinov2"
    return Checkpoint(state, ", ".join(notes), arch, base, "dino" if dino_training else None,
                      weak_publisher="dino" if plain else None)


def _from_hf(hf: dict[str, torch.Tensor], config: dict[str, Any], path: Path, notes: list[str]) -> Checkpoint:
    """A transformers ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``ViTModel``, mapped to Meta's and
    timm's keys (q, k, v stacked into ``qkv``)."""
    kind = config.get("model_type") or ("dinov2_with_registers" if "embeddings.register_tokens" in hf
                                        else "dinov2" if "embeddings.mask_token" in hf else "vit")
    if kind not in ("dinov2", "dinov2_with_registers", "vit"):
        raise BackboneError(f"{path}: a transformers {kind!r} model; lost-reg reads dinov2, "
                            "dinov2_with_registers and vit (Dinov2Model, Dinov2WithRegistersModel, ViTModel)")
    vit = kind == "vit"
    state = hf_to_timm_keys(hf, vit=vit)
    heads = config.get("num_attention_heads")
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    notes.insert(0, f"transformers {kind}" + (f" with {registers} registers" if registers else ""))
    overlay = {}
    pre = _json(path / "preprocessor_config.json") if path.is_dir() else {}
    if pre.get("image_mean") and pre.get("image_std"):
        overlay = {"mean": tuple(pre["image_mean"]), "std": tuple(pre["image_std"])}
    arch = _arch(state, 0, heads, no_embed_class=False) if vit else _arch(state, registers, heads)
    eps = config.get("layer_norm_eps", 1e-12 if vit else 1e-6)
    if eps != 1e-6:
        arch["norm_eps"] = eps
    if vit:
        dino = bool(re.search(r"dino", f"{config.get('_name_or_path', '')} {path}", re.IGNORECASE))
        return Checkpoint(state, ", ".join(notes), arch, "vit_base_patch16_224.dino",
                          "hf-vit-dino" if dino else "hf-vit", overlay=overlay)
    state["mask_token"] = state.get("mask_token", torch.zeros(1, state["cls_token"].shape[-1]))  # timm's DINOv2 marker
    return Checkpoint(state, ", ".join(notes), arch, _dinov2_base(state, registers),
                      "hf-dinov2-reg" if registers else "hf-dinov2", overlay=overlay)


_HF_BLOCK = {  # transformers' per-layer names → Meta's / timm's
    "norm1": "norm1", "norm2": "norm2", "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
    "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3",
}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
           "embeddings.position_embeddings": "pos_embed", "embeddings.register_tokens": "register_tokens",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


def hf_to_timm_keys(hf: dict[str, torch.Tensor], vit: bool = False) -> dict[str, torch.Tensor]:
    """transformers' saved keys (``encoder.layer.N.attention.attention.query…``) → Meta's / timm's.

    ``ViTModel``'s mask token (a [1, 1, D] parameter unused at inference) is dropped: a ``mask_token``
    key is how timm recognises Meta's DINOv2 layout."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if key in _HF_TOP:
            if not (vit and key == "embeddings.mask_token"):
                out[_HF_TOP[key]] = value
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        if m is None:
            continue  # the pooler and other heads
        i, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module.startswith("attention.attention."):
            qkv.setdefault((i, kind), {})[module.rsplit(".", 1)[1]] = value
        elif kind == "lambda1":
            out[f"blocks.{i}.{_HF_BLOCK[module + '.lambda1']}"] = value
        elif module in _HF_BLOCK:
            out[f"blocks.{i}.{_HF_BLOCK[module]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out
