"""Schemathesis, every check, against a live uvicorn server: the OpenAPI schema says what the server enforces.

Positive examples (schema-valid, with real images from tests/schemathesis_hooks.py) must be accepted and
answered as documented; negative ones (schema-violating) must be refused with a 4xx; nothing may give a
5xx or an undocumented status. A fixed seed keeps the run reproducible; 150 examples per operation
bound its time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, serving
from .test_service_server import TINY_ENV

pytest.importorskip("schemathesis")


@pytest.mark.parametrize("method", ["lost", "tokencut"])
def test_schemathesis_finds_nothing(tmp_path, method):
    with serving(tmp_path / "server.log", {**TINY_ENV, "LOST_REG_METHOD": method}, "--no-access-log") as base:
        st = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
              "run", f"{base}/openapi.json", "--checks", "all", "--max-examples", "150", "--seed", "20261121",
              "--workers", "1", "--no-color"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
        result = subprocess.run(st, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout, report
