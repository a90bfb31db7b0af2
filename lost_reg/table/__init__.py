"""``lost-reg table``: backbones × datasets × a protocol → one CorLoc table with its provenance.

:mod:`.specs` parses the rows (``--backbones``) and columns (``--datasets``); :mod:`.protocols` says which
settings each row's cells choose among (``recipe``, ``paper``, ``best``); :mod:`.runner` checks the whole plan
before any forward pass, then runs one :class:`~lost_reg.sweep.Sweep` per backbone × dataset (resumable, one
forward per image for every setting) and makes a :class:`Cell` of each row × dataset, with the ``lost-reg eval``
command that reproduces it; :mod:`.published` puts the papers' figures beside ours; :mod:`.reports` writes
``table.md``, ``table.csv`` and ``table.json``.
"""

from .config import TableConfig
from .protocols import PROTOCOLS
from .reports import pct, summary, write_table
from .runner import Cell, Plan, plan_table, run_table, wilson

__all__ = ["PROTOCOLS", "Cell", "Plan", "TableConfig", "pct", "plan_table", "run_table", "summary", "wilson",
           "write_table"]
