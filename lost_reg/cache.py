"""Patch features on disk, so a second sweep of new settings needs no backbone at all.

One folder per *fingerprint*: a hash of everything the features depend on (backbone name, its
weights, timm keywords, features kind, layer, preparation, max side, dtype, this package's
version); one safetensors file per image in it, holding the patch features [N, D] and, as
metadata, the grid and where the image sat on it. A fingerprint is computed without loading the
model (weights files are hashed by content), so a stale cache is never read: change any input
and the features land in a new folder. ``fingerprint.json`` in each folder says what it holds.
Files that could not be decoded are remembered (:func:`remember_unreadable`, the sweep's ``unreadable/``) with
their size and modification time, so a later sweep reports them without decoding them (or loading a model)
until the file changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .version import __version__
from .backbone import Tap
from .files import atomic_write

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class Cached:
    """One image's features of one tap, and the geometry that maps boxes back to the image."""

    patches: torch.Tensor
    """[N, D] patch features (the cache's dtype)."""
    grid: tuple[int, int]
    valid: tuple[int, int]
    size: tuple[int, int]
    patch_size: int


class FeatureCache:
    """Cached features of one backbone (with its weights and pre-processing), for any tap."""

    def __init__(self, root: Path, description: dict[str, Any], dtype: str = "float32") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}")
        self.root, self.description, self.dtype = Path(root), description, dtype
        self._folders: dict[tuple[str, Tap], Path] = {}

    def folder(self, prep: str, tap: Tap) -> Path:
        """The fingerprint folder of ``tap`` under preparation ``prep`` (created, with its
        ``fingerprint.json``, on first use; remembered, as it is asked for every image)."""
        if (prep, tap) in self._folders:
            return self._folders[prep, tap]
        kind, layer = tap
        what = {**self.description, "prep": prep, "features": kind, "layer": layer, "cache_dtype": self.dtype,
                "lost_reg": __version__}
        folder = self.root / hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
        if not (folder / "fingerprint.json").exists():
            atomic_write(folder / "fingerprint.json", lambda tmp: tmp.write_text(json.dumps(what, indent=2) + "\n"))
        self._folders[prep, tap] = folder
        return folder

    def path(self, prep: str, tap: Tap, image_id: str) -> Path:
        return self.folder(prep, tap) / f"{quote(image_id, safe='')}.safetensors"

    def load(self, prep: str, tap: Tap, image_id: str) -> Cached | None:
        """The cached features, or None when absent or unreadable (then they are computed again)."""
        try:  # an absent file raises FileNotFoundError, an OSError
            with safe_open(str(self.path(prep, tap, image_id)), "pt") as f:
                meta = json.loads(f.metadata()["geometry"])
                patches = f.get_tensor("patches")
        except (SafetensorError, OSError, KeyError, ValueError):
            return None
        return Cached(patches, tuple(meta["grid"]), tuple(meta["valid"]), tuple(meta["size"]), meta["patch_size"])

    def save(self, prep: str, tap: Tap, image_id: str, entry: Cached) -> None:
        """Store one image's features of ``tap``, atomically."""
        meta = {"grid": entry.grid, "valid": entry.valid, "size": entry.size, "patch_size": entry.patch_size}
        tensor = entry.patches.detach().to("cpu", CACHE_DTYPES[self.dtype]).contiguous()
        atomic_write(self.path(prep, tap, image_id),
                     lambda tmp: save_file({"patches": tensor}, str(tmp), metadata={"geometry": json.dumps(meta)}))


def known_unreadable(folder: Path, image_id: str, path: Path) -> str | None:
    """Why ``path`` could not be decoded when :func:`remember_unreadable` recorded it in ``folder``, if the file has
    not changed since (size, modification time); else None."""
    record = Path(folder) / f"{quote(image_id, safe='')}.json"
    try:
        known = json.loads(record.read_text())
        return known["error"] if known["stat"] == _stat(path) else None
    except (OSError, ValueError, KeyError):
        return None


def remember_unreadable(folder: Path, image_id: str, path: Path, error: str) -> None:
    """Record in ``folder`` that ``path`` (as it is now) cannot be decoded, so a later run reports it undecoded."""
    record = Path(folder) / f"{quote(image_id, safe='')}.json"
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps({"stat": _stat(path), "error": error})))


def _stat(path: Path) -> list[int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]
