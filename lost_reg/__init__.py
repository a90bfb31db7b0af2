"""lost_reg: unsupervised object discovery (LOST, TokenCut) on register-aware Vision Transformers."""

from .backbone import Backbone, Features
from .errors import BackboneError, DataError, LostRegError
from .methods import (
    METHODS,
    Discovery,
    Lost,
    LostResult,
    Method,
    TokenCut,
    TokenCutResult,
    build_method,
    lost,
    tokencut,
)
from .models import DEFAULT_BACKBONE, OFFLINE_BACKBONE, create_backbone
from .pipeline import Detection, Localizer
from .version import __version__

__all__ = [
    "__version__", "Backbone", "BackboneError", "DataError", "DEFAULT_BACKBONE", "Detection", "Discovery", "Features",
    "Localizer", "Lost", "LostRegError", "LostResult", "METHODS", "Method", "OFFLINE_BACKBONE", "TokenCut",
    "TokenCutResult", "build_method", "create_backbone", "lost", "tokencut",
]
