"""Backbone adapter: a timm ViT in, LOST's patch features out.

The features are taken with one forward hook on the chosen block's attention ``qkv`` projection
(or on the block itself for output tokens), registered once, so one forward pass yields them.
Prefix tokens ([CLS, registers…]) are split off by ``model.num_prefix_tokens``: LOST sees
patch tokens only, the prefix stays available for diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

FEATURES = ("k", "q", "v", "tokens")
FeatureKind = Literal["k", "q", "v", "tokens"]
Tap = tuple[str, int]
"""(features kind, layer): where features are read, e.g. ("k", -1) for the last block's keys."""


@dataclass
class Features:
    """One batch of features from one layer."""

    patches: torch.Tensor
    """[B, rows*cols, D] patch-token features (heads concatenated), row-major over the grid."""
    prefix: torch.Tensor
    """[B, P, D] the same features for the prefix tokens [CLS, registers…]."""
    grid: tuple[int, int]
    """(rows, cols) of the patch grid."""


class Backbone(nn.Module):
    """Wraps a timm VisionTransformer to return :class:`Features` of one layer."""

    def __init__(self, model: nn.Module, features: FeatureKind = "k", layer: int = -1, name: str = "",
                 family: str = "other", source: dict[str, Any] | None = None,
                 test_time_register_neurons: str | None = None) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
        blocks = getattr(model, "blocks", None)
        if blocks is None or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "qkv"):
            raise ValueError(f"{type(model).__name__} is not a timm ViT with a fused qkv projection")
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range for a {len(blocks)}-block model")
        self.model = model.eval()
        self.name = name or type(model).__name__
        self.family = family
        """The recipe family of the weights (:mod:`lost_reg.recipes`)."""
        self.source = source or {"name": self.name, "pos_resample": getattr(model, "pos_resample", "timm")}
        """Where the model and its weights came from (:meth:`lost_reg.models.Source.describe`)."""
        self.features = features
        self.layer = layer % len(blocks)
        self.num_heads = blocks[self.layer].attn.num_heads
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.test_time_registers = int(getattr(model, "num_test_time_registers", 0))
        """Registers added at test time (:mod:`lost_reg.registers`), counted in the prefix and in
        :attr:`num_registers` too."""
        self.test_time_register_neurons = test_time_register_neurons
        """Where the test-time register's neurons came from (a ``neurons.json`` or ``preset:NAME``), for summaries."""
        self.num_registers = self.num_prefix_tokens - int(model.has_class_token)
        """Prefix tokens after CLS: trained registers, then test-time ones."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        self._captured: torch.Tensor | None = None
        _tap_module(model, features, self.layer).register_forward_hook(self._capture)

    def compile_model(self) -> None:
        """``torch.compile`` (inductor) the model's forward up to the tapped block, once per model (backbones that
        share it share the compiled code): each new image shape compiles first, so it pays in long jobs only."""
        if not getattr(self.model, "lost_reg_compiled", False):
            self.model.forward_intermediates = torch.compile(self.model.forward_intermediates)
            self.model.lost_reg_compiled = True

    def _capture(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._captured = output

    def release(self) -> None:
        """Drop what this backbone's hook caught on a forward pass it did not read (another backbone of the same
        model, or another hook, ran it), so that it does not pin (device) memory until the next pass."""
        self._captured = None

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> Features:
        """Features of normalised images [B, 3, H, W] with H and W multiples of the patch size."""
        b, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        self.model.forward_intermediates(images, indices=[self.layer], stop_early=True, intermediates_only=True)
        out, self._captured = self._captured, None
        return self._features(out, self.features, (h // self.patch_size, w // self.patch_size))

    @torch.inference_mode()
    def taps(self, images: torch.Tensor, taps: Sequence[Tap]) -> dict[Tap, Features]:
        """Features of several (kind, layer) taps from ONE forward pass, up to the deepest layer asked.

        Layers are as given (negative from the end); the keys of the result are the taps as given.
        """
        b, _, h, w = images.shape
        depth = len(self.model.blocks)
        for kind, layer in taps:
            if kind not in FEATURES or not -depth <= layer < depth:
                raise ValueError(f"cannot tap {kind!r} of layer {layer} in a {depth}-block model")
        captured: dict[tuple[str, int], torch.Tensor] = {}
        wanted = {("tokens" if kind == "tokens" else "qkv", layer % depth) for kind, layer in taps}
        handles = [_tap_module(self.model, site, layer).register_forward_hook(
            lambda module, args, out, key=(site, layer): captured.__setitem__(key, out)) for site, layer in wanted]
        try:
            last = max(layer for _, layer in wanted)
            self.model.forward_intermediates(images, indices=[last], stop_early=True, intermediates_only=True)
        finally:
            for handle in handles:
                handle.remove()
            self.release()  # the backbone's own hook may have fired too
        grid = (h // self.patch_size, w // self.patch_size)
        return {(kind, layer): self._features(captured["tokens" if kind == "tokens" else "qkv", layer % depth],
                                              kind, grid) for kind, layer in taps}

    def _features(self, out: torch.Tensor, kind: str, grid: tuple[int, int]) -> Features:
        """Split a hooked output (qkv projection or block output) into patch and prefix features of ``kind``."""
        if kind != "tokens":
            b, n, d3 = out.shape
            out = out.reshape(b, n, 3, d3 // 3)[:, :, "qkv".index(kind)]  # heads stay concatenated, as in LOST
        p = self.num_prefix_tokens
        return Features(patches=out[:, p:], prefix=out[:, :p], grid=grid)


def _tap_module(model: nn.Module, kind: str, layer: int) -> nn.Module:
    """The module whose output holds ``kind`` features of block ``layer``: the block, or its qkv projection."""
    block = model.blocks[layer]
    return block if kind == "tokens" else block.attn.qkv


@torch.inference_mode()
def prefix_attention(backbone: Backbone, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Attention of every prefix token [CLS, registers…] to the patches in block ``layer``.

    Returns [B, P, heads, rows, cols]: softmax(q·kᵀ/√d) over all tokens, as the model computes
    it, restricted to the patch columns (the registers paper's Figure 9 shows these maps). One
    forward pass up to ``layer`` through a temporary hook on that block's qkv projection.
    """
    b, _, h, w = images.shape
    blocks = backbone.model.blocks
    index = layer % len(blocks)
    attn = blocks[index].attn
    captured: list[torch.Tensor] = []
    handle = attn.qkv.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        backbone.model.forward_intermediates(images, indices=[index], stop_early=True, intermediates_only=True)
    finally:
        handle.remove()
        backbone.release()  # the backbone's own hook may have fired too
    q, k, _ = captured[0].unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    p = backbone.num_prefix_tokens
    weights = ((q[:, :, :p].float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(-1)
    rows, cols = h // backbone.patch_size, w // backbone.patch_size
    return weights[..., p:].permute(0, 2, 1, 3).reshape(b, p, attn.num_heads, rows, cols)
