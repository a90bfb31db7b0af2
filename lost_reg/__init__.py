"""lost_reg: unsupervised object discovery with LOST on register-aware Vision Transformers."""

from .backbone import Backbone, Features
from .errors import BackboneError, DataError, LostRegError
from .lost import LostResult, lost
from .models import DEFAULT_BACKBONE, OFFLINE_BACKBONE, create_backbone
from .pipeline import Detection, Localizer, LostConfig

__version__ = "0.1.0"
__all__ = [
    "Backbone", "BackboneError", "DataError", "DEFAULT_BACKBONE", "Detection", "Features", "Localizer",
    "LostConfig", "LostRegError", "LostResult", "OFFLINE_BACKBONE", "create_backbone", "lost",
]
