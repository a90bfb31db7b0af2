"""The device check (bench/device_check.py) end to end on the CPU with --quick: CI's smoke test of the
command a lent GPU runs, every section included."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import torch

from lost_reg.devices import bf16_hardware, resolve_dtype

from .conftest import ROOT

SECTIONS = ("environment", "equality", "throughput", "tokencut", "service", "memory", "targets")


def test_the_quick_device_check_runs_every_section_and_writes_its_report(tmp_path):
    out = tmp_path / "check"
    # a generous budget: this checks that every section works, not how fast (README: the timed run)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out), "--budget-s", "1200"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    assert tuple(sections) == SECTIONS
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(SECTIONS, "ok"), \
        {name: s["reason"] for name, s in sections.items()}
    for s in sections.values():  # each section says where and when it ran, and what --dtype auto runs there
        assert s["env"]["device"] == "cpu" and s["env"]["torch"] and s["env"]["date"].startswith("20")
        assert s["env"]["auto_dtype"] == {"device": resolve_dtype(torch.device("cpu")), "dino": "float32",
                                          "other": "float32"}
    assert report["env"]["native_bf16"] == bf16_hardware(torch.device("cpu"))
    assert (f"--dtype auto: {resolve_dtype(torch.device('cpu'))} where a recipe allows bfloat16, per recipe dino "
            "float32, other float32") in (out / "report.md").read_text()
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["bench"] for r in lines] == [f"device_check/{name}" for name in SECTIONS]
    text = (out / "report.md").read_text()
    assert text in proc.stdout and all(f"### {s['title']}" in text for s in sections.values())

    thr = sections["throughput"]["figures"]
    assert set(thr) == {"ViT-S/14", "ViT-B/14", "ViT-L/14"}
    for r in thr.values():
        assert r["bare"]["img_s"] > 0 and r["pipeline"]["images"] >= 8 and r["pipeline"]["failed"] == 0
        assert r["pipeline"]["workers"] >= 1 and 0 < r["pipeline"]["method_share"] < 1  # a GPU's plan: workers
    eq = sections["equality"]["figures"]
    assert set(eq) == {"lost/v", "tokencut/v", "lost/k", "tokencut/k"}
    for name in ("lost/v", "lost/k"):  # a GPU's plan on the CPU: LOST is batched on both, the same boxes
        assert eq[name]["identical_fp32"] == eq[name]["judged"] == 10, eq[name]
    tc = sections["tokencut"]["figures"]
    assert tc["images"] >= 2 and tc["speedup"] > 0 and set(tc["reference_runs"]) == {"BLAS threads: all",
                                                                                     "BLAS threads: 1"}
    clear = [e for e, gap in zip(tc["equal"], tc["gaps"]) if gap >= 1e-3]
    assert clear and all(clear)  # batched TokenCut = the reference wherever the cut is clear
    service = sections["service"]["figures"]
    assert {"1 clients", "16 clients", "64 clients"} <= set(service)
    assert all(service[k]["req_s"] > 0 for k in ("1 clients", "16 clients", "64 clients"))
    assert set(sections["targets"]["figures"]["met"].values()) == {None}  # GPU targets are not judged on a CPU
    assert not any(p.suffix == ".jpg" for p in out.rglob("*"))  # the generated images stay out of DIR


def test_a_section_whose_package_is_missing_says_so_and_a_failing_one_says_why(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    env = {k: "x" for k in ("date", "device", "device_name", "torch", "timm", "python", "half_dtype", "auto_dtype",
                            "quick", "commit")}
    ctx = device_check.Context(None, device_check.QUICK, None, None, "bfloat16", env, [], deadline=float("inf"))

    def needs_a_package(ctx):
        importlib.import_module("a_package_lost_reg_never_installs")

    def fails(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    missing = device_check.run_section(needs_a_package, "service", ctx)
    failed = device_check.run_section(fails, "throughput", ctx)
    assert (missing.status, missing.reason) == ("skipped", "package 'a_package_lost_reg_never_installs' is not "
                                                          "installed here")
    assert failed.status == "failed" and "illegal memory access" in failed.reason and failed.env["device"] == "x"
    ctx.deadline = 0.0
    assert device_check.run_section(fails, "service", ctx).reason == "out of time (--budget-s)"
