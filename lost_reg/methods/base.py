"""What every discovery method shares: the result type, the interface, and option metadata.

A method is a frozen dataclass whose fields are its options (each with a one-line ``help`` in
its metadata, which the CLI, the service and the sweep read), called on a batch of patch
features of one grid shape. It returns one :class:`Discovery` per image.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass
class Discovery:
    """One object found in one image, on the patch grid; methods add their own evidence."""

    seed: tuple[int, int]
    """(row, col) of the patch the object grew from."""
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) in patch units, max exclusive."""
    mask: np.ndarray
    """bool [rows, cols]: the object's patches (4-connected, holding the seed)."""

    HEAT: ClassVar[str] = "evidence"
    """Title of the :attr:`heat` map in pictures."""

    @property
    def heat(self) -> np.ndarray:
        """float [rows, cols]: the method's per-patch evidence, higher = more object-like (pictures)."""
        raise NotImplementedError

    @property
    def marks(self) -> np.ndarray | None:
        """bool [rows, cols] patches worth marking in pictures, or None."""
        return None

    def box_pixels(self, patch_size: int, width: int, height: int) -> tuple[int, int, int, int]:
        """Box in pixels of the (padded) network input, clipped to a ``width`` × ``height`` image."""
        x0, y0, x1, y1 = (v * patch_size for v in self.box)
        return x0, y0, min(x1, width), min(y1, height)


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, **bounds: Any) -> Any:
    """A method option: a dataclass field whose help, choices and ``bounds`` (JSON-schema keywords:
    ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``pattern``) the CLI and the
    service show; the method's own checks enforce the same bounds."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


@dataclass(frozen=True)
class Method:
    """Base of the discovery methods (:data:`lost_reg.methods.METHODS`)."""

    name: ClassVar[str]

    def __call__(self, features: torch.Tensor, grid: tuple[int, int],
                 exclude: torch.Tensor | None = None) -> list[Discovery]:
        """One object per image of a batch of patch features [B, rows*cols, D] sharing ``grid``.

        ``exclude`` (bool [B, N]) takes patches out of the graph (never part of an object); every
        image must keep at least one patch. It lets callers find further objects after the first.
        """
        raise NotImplementedError

    def cut_graph(self, features: torch.Tensor) -> torch.Tensor:
        """Non-negative edge weights [n, n] of one image's patches [n, D] that the ``ncut`` score cuts."""
        raise NotImplementedError

    def reference_graph(self) -> bool:
        """Whether this is the paper's own graph, whose reference code zero-pads images (then so do we)."""
        return False

    def options(self) -> dict[str, Any]:
        """The option values, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        """Name and options, e.g. ``tokencut(tau=0.2, eps=1e-05)``: for model versions and logs."""
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options().items())})"


@dataclass(frozen=True)
class OptionSpec:
    """What callers need to offer a method option: its type, help, choices and default."""

    name: str
    type: type
    help: str
    choices: tuple[str, ...] | None
    default: Any
    bounds: dict[str, Any]
    """JSON-schema keywords every accepted value satisfies (``minimum``, ``pattern``…)."""


def option_specs(method: type[Method]) -> list[OptionSpec]:
    """The options of a method class, in declaration order."""
    hints = typing.get_type_hints(method)
    return [OptionSpec(f.name, hints[f.name], f.metadata.get("help", ""), f.metadata.get("choices"), f.default,
                       f.metadata.get("bounds", {})) for f in dataclasses.fields(method)]
