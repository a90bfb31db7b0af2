"""Many settings on one forward pass per image: the CorLoc of each, and the best one.

A setting is a preparation, a features kind, a layer and a method with its options
(:mod:`.grid`: the range grammar and the settings' product). The sweep (:mod:`.runner`) reads
each image once per preparation in :func:`~lost_reg.loop.inference_on_dataset`, takes every requested
(features, layer) tap in that one forward pass (:meth:`~lost_reg.pipeline.Localizer.forward_taps`), runs
every setting on those features batched through the localizer, and writes each setting's predictions exactly
as ``lost-reg eval`` would (same records, same batching), so any row can be reproduced with its ``eval``
command. With a
:class:`~lost_reg.cache.FeatureCache` the features are stored per image; images found there are
not decoded and, when all are found, the backbone is never loaded. :mod:`.rows` scores each setting
over its file (and its neighbours': robustness); :mod:`.reports` writes the tables and the chart.
"""

from .grid import SweepSetting, expand, expand_settings
from .reports import write_reports
from .rows import Row
from .runner import Sweep, SweepStats, feature_cache

__all__ = ["Row", "Sweep", "SweepSetting", "SweepStats", "expand", "expand_settings", "feature_cache", "write_reports"]
