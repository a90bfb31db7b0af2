"""Decoding processes: untrusted images decoded where a runaway decode can be stopped.

A decoder fed a hostile file can run for minutes (a progressive JPEG whose last scan is repeated 20,000 times)
or allocate gigabytes (a TIFF whose header says 64×64 holding one 24000×24000 tile), and a decode running in
a thread cannot be interrupted. :class:`DecodePool` runs decoding in long-lived worker processes (pebble's
``ProcessPool``, forked from a fork server that loaded only :mod:`lost_reg.decoding`: no torch, ~50 MB
each) with, per image, a wall-clock deadline and a CPU-time budget (``RLIMIT_CPU``), and per process an
address-space limit (``RLIMIT_AS``). A job past its deadline, or cancelled, has its process killed and
replaced; the image gets :class:`~lost_reg.errors.DecodeTimeout` (past the deadline),
:class:`~lost_reg.errors.TooManyPixels` (past the memory limit) or a DataError (the decoder crashed). Only
the image fitted onto the patch grid (at most ``max_side`` a side) comes back. The service
(:mod:`service.runtime`) and ``eval``/``discover`` (:func:`lost_reg.loop.build_loader`) decode here.

Neither OpenCV nor Pillow exposes libjpeg-turbo's scan limit (``djpeg -maxscans``, ``TJPARAM_SCANLIMIT``), and
Pillow's ``MAX_IMAGE_PIXELS`` reads the header's size only; a deadline on a killable process bounds every
decoder and format alike.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from pathlib import Path

from pebble import ProcessExpired, ProcessPool

from .decoding import MAX_PIXELS, Fitted, decode_job, limit_process, probe_job, ready
from .errors import DataError, DecodeTimeout, TooManyPixels
from .images import Prepared

log = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 10.0
"""Default wall-clock deadline for one image's decode (a 40 MP PNG takes ~1 s on one core)."""
BASE_MEMORY = 512 * 2**20
BYTES_PER_PIXEL = 24
"""Decoded RGB, a decoder's own buffers, a 16-bit or RGBA intermediate, the resized copy: all of them fit."""


def memory_for(max_pixels: int | None) -> int | None:
    """Address space a decoding process may add to what it holds at start: enough for an image of
    ``max_pixels`` in any accepted format, far less than a decompression bomb asks (None: no limit)."""
    return None if max_pixels is None else BASE_MEMORY + BYTES_PER_PIXEL * max_pixels


def _context() -> multiprocessing.context.BaseContext:
    """Fork server that preloads only the decoders: workers fork from a small process (not from a server or
    a run holding torch, a model and threads), and a replacement starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lost_reg.decoding"])
    return context


class DecodePool:
    """``workers`` decoding processes; :meth:`probe` and :meth:`decode` return futures (cancelling one that runs
    kills its process), :meth:`result` waits for one and says in a DataError why an image failed."""

    def __init__(self, workers: int, timeout_s: float = DECODE_TIMEOUT_S, max_pixels: int | None = MAX_PIXELS,
                 cpu_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s or timeout_s
        self.max_pixels = max_pixels
        self._pool = ProcessPool(max_workers=workers, initializer=limit_process, initargs=(memory_for(max_pixels),),
                                 context=_context())

    def start(self) -> None:
        """Start the processes now (pebble starts them with the first job), not in a first request's time."""
        self._pool.schedule(ready).result()

    def probe(self, data: bytes, name: str, formats: Sequence[str] | None = None) -> Future[tuple[int, int]]:
        """(width, height) from the header, checked against ``max_pixels`` (a TIFF's tiles too)."""
        return self._pool.schedule(probe_job, (data, name, self.max_pixels, formats, self.cpu_s),
                                   timeout=self.timeout_s)

    def decode(self, source: bytes | str | Path, name: str, patch_size: int, max_side: int | None, prep: str,
               formats: Sequence[str] | None = None) -> Future[Fitted]:
        """The image (bytes, or a file the process reads) decoded and fitted onto the patch grid."""
        source = str(source) if isinstance(source, Path) else source
        return self._pool.schedule(decode_job, (source, name, patch_size, max_side, prep, self.max_pixels, formats,
                                                self.cpu_s), timeout=self.timeout_s)

    def result(self, future: Future, name: str) -> object:
        """What the job gave; its failure as a DataError (a Fitted comes back as a :class:`Prepared`)."""
        try:
            value = future.result()
        except TimeoutError:
            log.warning("%s: no decode within %g s: its process was stopped", name, self.timeout_s)
            raise DecodeTimeout(f"{name}: not decoded within {self.timeout_s:g} s: a hostile or broken file "
                                "(e.g. a progressive JPEG with thousands of scans)") from None
        except ProcessExpired as e:
            if e.exitcode == -signal.SIGXCPU:
                log.warning("%s: decode over its %g s of CPU: its process was stopped", name, self.cpu_s)
                raise DecodeTimeout(f"{name}: not decoded within {self.cpu_s:g} s of CPU time") from None
            log.warning("%s: the decoding process ended (exit code %s); a new one was started", name, e.exitcode)
            raise DataError(f"{name}: the decoder crashed on this file (exit code {e.exitcode})") from None
        except MemoryError:
            raise TooManyPixels(f"{name}: decoding needs more memory than allowed for one image") from None
        except (CancelledError, DataError):
            raise
        except Exception as e:  # a decoder's own exception type: the file's failure, not the run's
            raise DataError(f"{name}: {type(e).__name__}: {e}") from None
        return Prepared.of(value) if isinstance(value, Fitted) else value

    def close(self) -> None:
        """Stop the processes (jobs still running are killed)."""
        self._pool.stop()
        self._pool.join()
