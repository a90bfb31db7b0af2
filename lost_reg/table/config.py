"""``lost-reg table``'s configuration: backbones × datasets × a protocol, and the options every cell shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ..config import CacheOptions, ModelOptions, RunOptions, RuntimeOptions
from ..datasets import DataOptions
from ..options import Cli, Options

PROTOCOL_NAMES = ("recipe", "paper", "best")
ITSELF = "itself"
"""``--select-on itself``: choose each cell's setting on the cell's own dataset (optimistic; marked everywhere)."""
PER_ROW = ("backbone", "weights", "test_time_registers")
"""Fields of the shared sections that ``--backbones`` gives per row instead (no flags of their own)."""


class TableOptions(Options):
    """The rows, the columns and how each cell's setting is chosen."""

    group: ClassVar[str | None] = "table"
    backbones: Annotated[str, Cli(metavar="LIST")] = Field(
        description="rows, comma-separated: a name --backbone takes, a weights file or folder (the architecture from "
                    "the weights), NAME=WEIGHTS (local weights for that model; NAME=random: untrained), each with an "
                    "optional +ttr:NEURONS (a neurons.json or preset:NAME) for a test-time-registers row beside its "
                    "plain row")
    datasets: Annotated[str, Cli(metavar="LIST")] = Field(
        description="columns, comma-separated KIND:ROOT (KIND: voc07, voc12 or coco20k, read as eval reads them), "
                    "optionally LABEL=KIND:ROOT for a set that is not the full benchmark (a dev split)")
    protocol: Literal[PROTOCOL_NAMES] = Field(  # type: ignore[valid-type]
        "recipe", description="recipe: each family's recipe, as `lost-reg eval`; paper: LOST as the registers paper "
                              "states it (keys for DINO/DINOv2, values for others; raw gram, and a bias grid); best: "
                              "Jiang et al.'s search (k/q/v × last 4 layers × bias, L2-normalised features)")
    select_on: Annotated[str | None, Cli(metavar="DATASET")] = Field(
        None, description="where a grid's setting is chosen: a dataset of --datasets (by its label, e.g. voc07), "
                          "reported on the others; 'itself' chooses on each evaluation set (optimistic, marked as "
                          "such); needed by best and by paper's bias grid")
    biases: Annotated[str, Cli(metavar="LIST", negative=True)] = Field(
        "-1:0:0.1", description="the gram biases b of the grids (paper, best), comma list or range A:B:STEP; on "
                                "L2-normalised features, LOST's graph cos:T with T = -b")
    out: Path = Field(description="output folder: table.md, table.csv, table.json, summary.json, runs/ (each cell's "
                                  "predictions)")


class TableConfig(TableOptions, DataOptions, ModelOptions, RuntimeOptions, CacheOptions, RunOptions):
    """``lost-reg table``: backbones × datasets × a protocol → one CorLoc table with its provenance."""
