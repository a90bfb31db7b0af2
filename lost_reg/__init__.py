"""lost_reg: unsupervised object discovery (LOST, TokenCut) on register-aware Vision Transformers.

The names below load on first use (PEP 562): importing one light module of the package (e.g. the image
decoders' worker processes, :mod:`lost_reg.decoding`) does not import torch and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "Backbone": "backbone", "Features": "backbone",
    "BackboneError": "errors", "DataError": "errors", "LostRegError": "errors",
    "METHODS": "methods", "Discovery": "methods", "Lost": "methods", "LostResult": "methods", "Method": "methods",
    "TokenCut": "methods", "TokenCutResult": "methods", "build_method": "methods", "lost": "methods",
    "tokencut": "methods",
    "DEFAULT_BACKBONE": "models", "OFFLINE_BACKBONE": "models", "create_backbone": "models",
    "Detection": "pipeline", "Localizer": "pipeline",
    "__version__": "version",
}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from .backbone import Backbone, Features
    from .errors import BackboneError, DataError, LostRegError
    from .methods import (METHODS, Discovery, Lost, LostResult, Method, TokenCut, TokenCutResult, build_method,
                          lost, tokencut)
    from .models import DEFAULT_BACKBONE, OFFLINE_BACKBONE, create_backbone
    from .pipeline import Detection, Localizer
    from .version import __version__


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lost_reg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
