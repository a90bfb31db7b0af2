"""The layering contract (pyproject.toml, [tool.importlinter]): algorithms <- backbone and data <- pipeline and
loop <- engines <- CLI and service, every module in a layer, no import cycles. Checked by import-linter on the
real import graph (TYPE_CHECKING imports aside)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT


def test_the_layering_contract_holds():
    pytest.importorskip("importlinter", reason="the layering contract needs import-linter (pip install import-linter)")
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports())"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout
