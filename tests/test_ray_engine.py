"""`lost-reg discover --engine ray` on a local Ray: the local engine's boxes, error rows, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lost_reg.cli import main

from .conftest import ROOT
from .test_discover import TINY_ARGS, photos  # noqa: F401  (the fixture)

pytest.importorskip("ray")

CLI = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main(sys.argv[1:]))"]
ARGS = [*TINY_ARGS, "--max-objects", "2", "--format", "jsonl"]


def rows(path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {r["image_id"]: r for r in lines}
    assert len(by_id) == len(lines), "an image appears twice"
    return by_id


def test_ray_gives_the_local_engines_boxes_and_error_report(photos, tmp_path):  # noqa: F811
    local, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["discover", str(photos), "--out", str(local), *ARGS]) == 0
    result = subprocess.run([*CLI, "discover", str(photos), "--out", str(ray_out), "--engine", "ray",
                             "--chunk-size", "2", *ARGS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert rows(ray_out) == rows(local) and len(rows(local)) == 4
    errors = json.loads((tmp_path / "ray.jsonl.errors.json").read_text())
    assert errors == json.loads((tmp_path / "local.jsonl.errors.json").read_text())  # the same error report
    assert [e["image_id"] for e in errors["errors"]] == ["broken.jpg"]
    assert "ray engine, 1 actor(s) with 0 GPU(s) each" in result.stdout
    chunks = sorted(p.name for p in (tmp_path / "ray.jsonl.ray").iterdir())
    assert chunks == ["chunk-000000", "chunk-000001", "chunk-000002", "plan.json"]  # 5 files in chunks of 2


def test_a_killed_ray_job_resumes_with_no_image_lost_and_none_twice(photos, tmp_path):  # noqa: F811
    local, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["discover", str(photos), "--out", str(local), *ARGS]) == 0
    command = [*CLI, "discover", str(photos), "--out", str(out), "--engine", "ray", "--chunk-size", "1", *ARGS]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = tmp_path / "ray.jsonl.ray"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(state.glob("chunk-*/_DONE"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the Ray processes it started
            break
        time.sleep(0.05)
    proc.wait()
    done = len(list(state.glob("chunk-*/_DONE")))
    assert proc.returncode == -signal.SIGKILL and 2 <= done < 5, "the job ended before it could be killed"
    result = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming: {done} of 5 chunks already done" in result.stdout
    assert rows(out) == rows(local)
    changed = subprocess.run([*CLI, "discover", str(photos), "--out", str(out), "--engine", "ray", "--chunk-size", "2",
                              "--resume", *ARGS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "--chunk-size changed" in changed.stderr


def test_without_ray_installed_the_error_says_what_to_install(photos, tmp_path):  # noqa: F811
    code = ("import sys; sys.modules['ray'] = None; from lost_reg.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "discover", str(photos), "--out", str(tmp_path / "o.json"),
                             "--engine", "ray", *ARGS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --engine ray needs Ray, which lost-reg does not install by default: ' \
                                    'pip install "lost-reg[ray]"'
