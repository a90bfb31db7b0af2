"""Every choice that depends on the device, made in one place so tests can take a GPU's choices on the CPU.

:class:`DevicePlan` holds what differs between the CPU and a GPU (images per backbone call, pinned
memory, synchronising before the clock is read, decoding workers, solving a batch of graphs at once);
``Localizer(..., device="cpu", plan=DevicePlan.of("cuda"))`` runs a GPU's branches on the CPU, the
methods' included (:func:`using`).
:class:`BatchLimit` halves a batch when the device runs out of memory and goes on. :func:`graph_code`
gives the methods' graph code the plan's own small thread count, so another busy process on the same cores
does not stall its many small operations (README, CPU contention).
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The backbone's autocast precisions by name (the methods' graphs are always float32)."""

AUTO = "auto"
"""Every option's "decide for me" (the one value :func:`lost_reg.pipeline.plan_run` resolves, once per job)."""

NATIVE_BF16_ENV = "LOST_REG_NATIVE_BF16"
"""``1`` or ``0`` overrides the bfloat16 probe (:func:`bf16_hardware`): a CPU it misjudges, or tests."""

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 instruction sets that multiply bfloat16 natively; without them torch's CPU autocast emulates it."""

CPU_CHUNK = 4
"""Images per backbone call on the CPU. A ViT forward there is compute-bound: larger calls gain
nothing and lose cache (bench/bench_pipeline.py, ViT-S/14 on 378x504: ~14 % slower per image at 16
than at 4 on 2 cores); the features are the same either way."""

GRAPH_THREADS = int(os.environ.get("LOST_REG_GRAPH_THREADS", "1"))
"""Read once, never changed: torch intra-op threads of the methods' graph code in every plan (0: torch's own count;
a plan of one's own changes it for a block: ``using(replace(plan, graph_threads=0))``). Its operations are small
(N x N graphs, Lanczos vectors): with several threads each one waits at a barrier for the slowest, and
when another process holds a core that is a whole time slice (README, CPU contention)."""


@dataclass(frozen=True)
class DevicePlan:
    """How work runs on one kind of device: each field is a choice that differs between the CPU and a GPU."""

    backbone_chunk: int | None
    """Images per backbone call: :data:`CPU_CHUNK` on the CPU, the whole batch (None) on a GPU."""
    pin_memory: bool
    """Decoded images go to page-locked memory so host-to-device copies run asynchronously (CUDA);
    only where :func:`can_pin` says it works, elsewhere it is skipped."""
    synchronize: bool
    """Wait for the device's queued work before the clock is read (asynchronous devices)."""
    workers: int
    """Decoding worker processes when none are asked for: 0 on the CPU, where the forward already keeps
    every core busy and a worker only interrupts it (bench/bench_pipeline.py, 2 cores: ~15 % slower with
    one worker in bf16), else min(8, cores - 1) to keep the GPU fed."""
    batched_graphs: bool
    """TokenCut solves a batch's graphs at once (a GPU), or one image at a time (the CPU, where one N x N
    graph stays in cache: 11.0 vs 15.7 ms per image for a batch of 16)."""
    graph_threads: int = GRAPH_THREADS
    """torch threads of the methods' graph code (:func:`graph_code`; 0: torch's own count)."""

    @classmethod
    def of(cls, device: torch.device | str) -> DevicePlan:
        """The plan for a kind of device (``cpu``, ``cuda``…), whether or not one is present."""
        if torch.device(device).type == "cpu":
            return cls(backbone_chunk=CPU_CHUNK, pin_memory=False, synchronize=False, workers=0, batched_graphs=False)
        return cls(backbone_chunk=None, pin_memory=torch.device(device).type == "cuda", synchronize=True,
                   workers=min(8, max(1, (os.cpu_count() or 2) - 1)), batched_graphs=True)


_IN_FORCE: ContextVar[DevicePlan | None] = ContextVar("device_plan", default=None)


def plan_for(device: torch.device) -> DevicePlan:
    """The plan in force (a Localizer's, around its method calls: see :func:`using`), else ``device``'s own."""
    return _IN_FORCE.get() or DevicePlan.of(device)


@contextmanager
def using(plan: DevicePlan) -> Iterator[None]:
    """``plan`` in force inside the block, for code that gets only tensors (the methods)."""
    token = _IN_FORCE.set(plan)
    try:
        yield
    finally:
        _IN_FORCE.reset(token)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def autocast(device: torch.device, dtype: str) -> torch.autocast:
    """Autocast on ``device`` to ``dtype`` (a name of :data:`DTYPES`; ``float32``: off)."""
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "float32")


def can_pin() -> bool:
    """Whether page-locked host memory exists here (it needs a CUDA driver; pinning without one raises)."""
    return torch.cuda.is_available()


def pin(tensor: torch.Tensor, plan: DevicePlan) -> torch.Tensor:
    """``tensor`` in page-locked memory when ``plan`` asks for it and :func:`can_pin`, else as it is."""
    return tensor.pin_memory() if plan.pin_memory and can_pin() else tensor


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued on it (a no-op on the CPU)."""
    getattr(torch, device.type).synchronize(device)


def autocast_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether autocast on ``device`` runs matrix products in ``dtype`` (probed on a 2x2 product: torch
    silently falls back to float32, or raises, where it cannot)."""
    if dtype == torch.float32:
        return True
    a = torch.ones(2, 2, device=device)
    try:
        with warnings.catch_warnings(action="ignore"), torch.autocast(device.type, dtype=dtype):
            return (a @ a).dtype == dtype
    except RuntimeError:
        return False


def half_dtype(device: torch.device, native_bf16: bool | None = None) -> str:
    """The 16-bit autocast dtype for ``device``: ``bfloat16`` where the hardware has it, else ``float16``
    (T4, V100). ``native_bf16`` overrides the probe (None: ask the device)."""
    if native_bf16 is None:
        native_bf16 = (bf16_hardware(device) is not None if device.type == "cuda"
                       else autocast_supported(device, torch.bfloat16))
    return "bfloat16" if native_bf16 else "float16"


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has (probed once): torch's own CPU capability probe
    (``torch.cpu.get_capabilities``, where torch has it), else the kernel's flags in ``/proc/cpuinfo``."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        return tuple(f for f in CPU_BF16_FLAGS if caps.get(f))
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in CPU_BF16_FLAGS if f in flags)


def bf16_hardware(device: torch.device, native: bool | None = None) -> str | None:
    """What runs bfloat16 natively on ``device`` (``avx512_bf16``, ``amx_bf16``, ``cuda sm 8.0``…), or None
    where it would be emulated (slower than float32). ``native``, else :data:`NATIVE_BF16_ENV`, overrides
    the probe."""
    if native is None and os.environ.get(NATIVE_BF16_ENV, "") in ("0", "1"):
        native = os.environ[NATIVE_BF16_ENV] == "1"
    if native is not None:
        return f"forced ({NATIVE_BF16_ENV})" if native else None
    if device.type == "cuda":  # bfloat16 arithmetic from Ampere (sm 8.0) on; older GPUs only emulate it
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm {major}.{minor}" if major >= 8 else None
    if device.type == "cpu":
        return "+".join(cpu_bf16_flags()) or None
    return None


def resolve_dtype(device: torch.device, dtype: str = AUTO, native: bool | None = None) -> str:
    """``auto`` → ``bfloat16`` where :func:`bf16_hardware` finds native support on ``device``, else ``float32``;
    any other name of :data:`DTYPES` as it is. Resolved once, where the device is."""
    if dtype == AUTO:
        return "bfloat16" if bf16_hardware(device, native) is not None else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


@dataclass
class BatchLimit:
    """At most ``size`` items per call (None: no limit). When the device runs out of memory the part that
    failed is halved, the limit stays there for later calls, and the run goes on."""

    size: int | None = None
    what: str = "batch"
    halvings: int = 0

    def run(self, n: int, call: Callable[[slice], T]) -> list[T]:
        """``call`` over consecutive slices covering ``range(n)``, each at most :attr:`size` long, in order."""
        out: list[T] = []
        start = 0
        while start < n:
            stop = n if self.size is None else min(n, start + self.size)
            try:
                out.append(call(slice(start, stop)))
                start = stop
                continue
            except torch.cuda.OutOfMemoryError:
                if stop - start == 1:
                    raise
            # out of the except block: the failed call's tensors are released before the cache is emptied
            self.size = (stop - start + 1) // 2
            self.halvings += 1
            torch.cuda.empty_cache()  # a no-op without CUDA
            log.warning("out of device memory on a %s of %d: going on with %d", self.what, stop - start, self.size)
        return out


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count at ``n`` inside the block (0: unchanged), restored after."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def graph_code(fn: Callable[..., T]) -> Callable[..., T]:
    """Runs a method's graph code (its first argument: the features) at the plan's graph threads."""

    @functools.wraps(fn)
    def run(features: torch.Tensor, *args, **kwargs) -> T:
        with torch_threads(plan_for(features.device).graph_threads):
            return fn(features, *args, **kwargs)

    return run
