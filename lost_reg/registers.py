"""Test-time registers (Jiang et al., "Vision Transformers Don't Need Trained Registers", NeurIPS 2025).

Large ViTs trained without registers write high-norm "artifact" tokens into background patches.
The paper traces them to a few MLP hidden units, *register neurons*, that fire where the outliers
appear. Moving those activations onto one extra token removes the outliers from the patches: the
extra token plays the register a model trained with registers has.

:func:`find_register_neurons` finds them on calibration images: outlier patches by their output norm
at one block (the robust cutoff of :mod:`lost_reg.artifacts`), then, for every block up to that one
and every hidden unit, the mean |activation| at the outlier positions; the top-k units are the
register neurons (k grown until the outliers are gone, unless given).

:func:`attach` adds the test-time register to a timm ViT: one token of zeros, no position embedding,
right after the prefix [CLS, registers…] (so it joins the prefix that the methods never see); in
each block holding register neurons, that token's activation of every register neuron is set to the
neuron's max over the image's tokens, and the patch tokens' to zero (CLS and trained registers
untouched). Per-neuron max as the paper states it (the authors' code takes one max over all the
layer's register neurons); batched, every image of a batch on its own. The hidden activation is read
where it enters the MLP's output projection (``mlp.fc2``), which is ``act(fc1(x))`` for timm's Mlp
and the gated product for SwiGLU/GLU MLPs alike.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import analyse, collect
from .errors import BackboneError
from .posembed import embedding_step, set_embedding_step
from .files import write_text

PRESETS = {"dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m"}
"""Published register neurons shipped as data (``preset:NAME``): ``lost_reg/presets/NAME.json``."""


@dataclass
class RegisterNeurons:
    """A model's register neurons and how they were found; what ``--test-time-registers`` reads."""

    backbone: str
    weights: str
    """What the weights were (:func:`lost_reg.models.weights_identity`): neurons fit those weights only."""
    layers: dict[int, list[int]]
    """Block index (from 0) → hidden-unit indices of its MLP."""
    outlier_layer: int
    """The block whose output norms defined the outliers."""
    cutoff: float | None
    """Output norm above which a patch counted as an outlier there."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Images, outlier share before and after, the chosen neurons' scores…"""
    source: str = "lost-reg registers find"

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.layers.values())

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["layers"] = {str(k): v for k, v in sorted(self.layers.items())}
        write_text(path, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, source: str | Path) -> RegisterNeurons:
        """From a ``neurons.json`` file, or ``preset:NAME`` (:data:`PRESETS`)."""
        text_source = str(source)
        preset = text_source.split(":", 1)[1] if text_source.startswith("preset:") else None
        if preset is not None and preset not in PRESETS:
            raise BackboneError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        try:
            data = json.loads(Path(source).read_text() if preset is None
                              else resources.files("lost_reg").joinpath("presets", f"{preset}.json").read_text())
            data["layers"] = {int(k): [int(n) for n in v] for k, v in data["layers"].items()}
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackboneError(f"cannot read register neurons from {source}: {e}") from e

    def check(self, backbone: str, weights: str) -> None:
        """BackboneError unless these neurons were found for ``backbone`` with these ``weights``."""
        if self.backbone != backbone:
            raise BackboneError(f"these register neurons were found for {self.backbone}, not {backbone}")
        if self.weights != weights:
            raise BackboneError(f"these register neurons were found for {self.backbone} with other weights "
                                f"({self.weights}; here: {weights}); run `lost-reg registers find` for these")


def _hidden_site(model: nn.Module, layer: int) -> nn.Module:
    """The module whose input is block ``layer``'s MLP hidden activation."""
    fc2 = getattr(getattr(model.blocks[layer], "mlp", None), "fc2", None)
    if fc2 is None:
        raise BackboneError(f"block {layer} has no MLP with an output projection (mlp.fc2) to hook")
    return fc2


def attach(model: nn.Module, neurons: RegisterNeurons) -> Callable[[], None]:
    """Give ``model`` one test-time register driven by ``neurons``; returns a function that removes it.

    The token is inserted where timm adds position embeddings (:func:`~lost_reg.posembed.embedding_step`,
    wrapped on the instance), so every forward of the model has it; ``model.num_prefix_tokens`` counts it."""
    depth = len(model.blocks)
    bad = [layer for layer in neurons.layers if not 0 <= layer < depth]
    if bad:
        raise BackboneError(f"register neurons name blocks {bad}, but the model has {depth}")
    p = int(model.num_prefix_tokens)  # the test-time register goes right after the prefix, at index p
    add_positions = embedding_step(model)

    def insert(x: torch.Tensor) -> torch.Tensor:
        """timm's position embedding (its table split at the trained prefix), then the register: zeros."""
        model.num_prefix_tokens = p
        try:
            x = add_positions(x)
        finally:
            model.num_prefix_tokens = p + 1  # what timm's own output slicing must skip
        return torch.cat([x[:, :p], x.new_zeros(x.shape[0], 1, x.shape[2]), x[:, p:]], dim=1)

    def move(indices: torch.Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            h = args[0].clone()
            idx = indices.to(h.device)
            h[:, p, idx] = h[..., idx].amax(dim=1)  # each neuron's max over the image's tokens
            h[:, p + 1:, idx] = 0  # and none on the patches
            return (h, *args[1:])
        return hook

    handles = []
    for layer, units in neurons.layers.items():
        hidden = _hidden_site(model, layer)
        width = hidden.in_features
        if units and max(units) >= width:
            raise BackboneError(f"register neuron {max(units)} of block {layer} is past its {width} hidden units")
        handles.append(hidden.register_forward_pre_hook(move(torch.tensor(units, dtype=torch.long))))
    set_embedding_step(model, insert)  # on the instance: shadows the class's method
    model.num_prefix_tokens = p + 1
    model.num_test_time_registers = getattr(model, "num_test_time_registers", 0) + 1

    def detach() -> None:
        for handle in handles:
            handle.remove()
        set_embedding_step(model, add_positions)
        model.num_prefix_tokens = p
        model.num_test_time_registers -= 1

    return detach


@torch.inference_mode()
def find_register_neurons(
    model: nn.Module,
    images: Callable[[], Iterable[torch.Tensor]],
    *,
    backbone: str,
    weights: str,
    layer: int | None = None,
    top_k: int | None = None,
    max_k: int = 256,
    trial_images: int = 16,
) -> RegisterNeurons:
    """Register neurons of ``model`` from calibration ``images`` (a callable giving normalised [1, 3, H, W]
    tensors, called once per pass).

    ``layer``: the block whose high-norm patches are the outliers (default: the block with the largest
    outlier share). ``top_k``: how many neurons (default: 1, 2, 4… until the outlier share at ``layer``
    drops to a tenth of its value on the first ``trial_images`` images, at most ``max_k``).
    """
    stats = collect(model, images())
    if not stats.neighbour_cos:
        raise BackboneError("no calibration image could be read")
    registers = int(model.num_prefix_tokens) - int(getattr(model, "has_class_token", True))
    report = analyse(stats, registers)
    layers = report["layers"]
    if layer is None:
        layer = max(layers, key=lambda r: r["outlier_share"])["layer"]
    layer = layer % len(model.blocks)
    cutoff = layers[layer]["cutoff"]
    share = layers[layer]["outlier_share"]
    if cutoff is None or share == 0:
        best = max(layers, key=lambda r: r["outlier_share"])
        where = (f"at block {layer} (the most in any block: {100 * best['outlier_share']:.2f} % at block "
                 f"{best['layer']})" if best["outlier_share"] else f"in any of the {len(layers)} blocks (one mode of "
                 f"token norms in each, over {report['images']} images)")
        raise BackboneError(f"no high-norm outlier patches {where}: there is nothing for test-time registers to move "
                            "(the registers paper saw them in large models: ViT-L, ViT-g)")

    scores = _neuron_scores(model, images(), layer, cutoff)
    order = np.argsort(-scores, axis=None, kind="stable")
    width = scores.shape[1]

    def pick(k: int) -> dict[int, list[int]]:
        chosen: dict[int, list[int]] = {}
        for flat in order[:k]:
            chosen.setdefault(int(flat // width), []).append(int(flat % width))
        return chosen

    def trial(k: int) -> float:
        """The outlier share on the trial images with a test-time register driven by the top ``k`` neurons."""
        return _outlier_share(model, images(), RegisterNeurons(backbone, weights, pick(k), layer, cutoff), trial_images)

    trials: dict[int, float] = {}
    if top_k is None:
        top_k = 1
        while True:
            trials[top_k] = trial(top_k)
            if trials[top_k] <= share / 10 or top_k >= max_k:
                break
            top_k *= 2
    after = trials[top_k] if top_k in trials else trial(top_k)
    return RegisterNeurons(
        backbone, weights, dict(sorted(pick(top_k).items())), layer, cutoff,
        stats={"images": report["images"], "outlier_share_before": share,
               "outlier_share_after_on_trial_images": after, "trial_images": trial_images, "top_k": top_k,
               "k_trials": {str(k): v for k, v in trials.items()},
               "scores": {f"{int(f // width)}:{int(f % width)}": float(scores.flat[f]) for f in order[:top_k]}})


def _neuron_scores(model: nn.Module, images: Iterable[torch.Tensor], layer: int, cutoff: float) -> np.ndarray:
    """[layer + 1, hidden] mean over images (those with outliers) of the mean |activation| at outlier patches."""
    p = int(model.num_prefix_tokens)
    taken: dict[int, torch.Tensor] = {}
    handles = [_hidden_site(model, i).register_forward_pre_hook(
        lambda module, args, i=i: taken.__setitem__(i, args[0][0].float().abs())) for i in range(layer + 1)]
    total, n = None, 0
    try:
        for x in images:
            (patches,) = model.forward_intermediates(x, indices=[layer], stop_early=True, intermediates_only=True,
                                                     output_fmt="NLC")  # the block output, patch tokens only
            norms = patches[0].float().norm(dim=-1)
            where = torch.nonzero(norms > cutoff)[:, 0] + p
            if where.numel() == 0:
                continue
            score = torch.stack([taken[i][where].mean(0) for i in range(layer + 1)])
            total = score if total is None else total + score
            n += 1
    finally:
        for h in handles:
            h.remove()
    return (total / n).cpu().numpy()


def _outlier_share(model: nn.Module, images: Iterable[torch.Tensor], neurons: RegisterNeurons, limit: int) -> float:
    """Share of patches above the neurons' cutoff at their outlier layer with a test-time register driven by them."""
    detach = attach(model, neurons)
    over = count = 0
    try:
        for x in itertools.islice(images, limit):
            (patches,) = model.forward_intermediates(x, indices=[neurons.outlier_layer], stop_early=True,
                                                     intermediates_only=True, output_fmt="NLC")
            norms = patches[0].float().norm(dim=-1)  # timm drops the prefix, test-time register too
            over += int((norms > neurons.cutoff).sum())
            count += norms.numel()
    finally:
        detach()
    return over / max(count, 1)
