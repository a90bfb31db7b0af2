"""``lost-reg table``: the registers paper's LOST table for any backbones and datasets, reproducible in one command.

Writes to ``OUT``: ``table.md``, ``table.csv``, ``table.json`` (a list of cells, each with its setting, its
``lost-reg eval`` reproduce command and its provenance), ``summary.json`` (``--config`` repeats the run) and
``runs/`` (each backbone × dataset's predictions, resumed by the next run). See :mod:`lost_reg.table`.
"""

from __future__ import annotations

import time

from ..options import fields_in_order
from ..table import TableConfig, plan_table, run_table, summary, write_table
from ..table.config import PER_ROW
from .common import skipped_lines, write_json

CONFIG = TableConfig
SKIP = PER_ROW
"""Fields ``--backbones`` gives per row: no flags of their own."""


def run(config: TableConfig) -> int:
    """Check the whole table, run every cell (resuming what earlier runs finished), write the table."""
    start = time.perf_counter()
    plan = plan_table(config)
    for column in plan.columns:
        for line in skipped_lines(column.dataset.skipped):
            print(f"{column.spec.label}: {line}")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"{plan.cells} cells: {len(plan.backbones)} backbone(s) × {len(plan.columns)} dataset(s), protocol "
          f"{plan.protocol.name}")
    cells = run_table(plan, progress=not config.quiet)
    command = ["lost-reg", "table", *config.argv([name for name, _ in fields_in_order(CONFIG)])]
    markdown = write_table(plan, cells, command)
    write_json(config.out / "summary.json", summary(plan, cells, command, time.perf_counter() - start))
    print("\n" + markdown.split("\n## ")[0].strip())
    print(f"\n-> {config.out / 'table.md'}, table.csv, table.json")
    return 0
