"""A server in a process of its own, started, waited for and stopped: what the tests and the benches share."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx


class NotReady(RuntimeError):
    """The process ended, or did not answer in time; its log says why."""


def free_port() -> int:
    """A local TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def launched(command: Sequence[str], ready: Sequence[str], log: IO[str], env: dict[str, str] | None = None,
             cwd: str | Path | None = None, timeout_s: float = 60, stop_s: float = 30) -> Iterator[subprocess.Popen]:
    """``command`` started (without the caller's ``LOST_REG_*`` variables, then ``env``), its output in ``log``; yields
    the process once every URL in ``ready`` answers 200 (:class:`NotReady` if it ends or ``timeout_s`` passes), then
    SIGTERM, and SIGKILL after ``stop_s``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOST_REG_")}
    proc = subprocess.Popen(list(command), cwd=cwd, env={**clean, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answer(ready):
            if proc.poll() is not None:
                raise NotReady(f"{command[0]} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise NotReady(f"{command[0]} not ready within {timeout_s:g} s")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answer(urls: Sequence[str]) -> bool:
    try:
        return all(httpx.get(url, timeout=2).status_code == 200 for url in urls)
    except httpx.TransportError:
        return False
