"""Round-robin between requests: a queue that hands out one item per owner in turn, and a pool on it.

A request that queues 16 large decodes must not make a later one-image request wait for all of them:
each owner (a request's :class:`~service.admission.Ticket`) gets its own FIFO, and consumers take from the
owners in turn. An owner's queued work can be dropped at once (its request timed out or its client left),
and so can its running work: :class:`FairPool`'s calls run their decodes in processes
(:class:`lost_reg.decoders.DecodePool`) whose jobs are killed on cancel. One owner holds at most all but
one of the pool's places, so a new request always finds one free while a single request (two scan bombs,
say) keeps the others busy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_NONE = object()


class FairQueue(Generic[T]):
    """Thread-safe queue of items per owner, taken round-robin between owners, FIFO within one."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._owners: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._size = 0
        self.closed = False

    def __len__(self) -> int:
        return self._size

    def put(self, owner: Hashable, item: T) -> None:
        """Queue ``item`` behind ``owner``'s earlier ones; RuntimeError once closed."""
        with self._ready:
            if self.closed:
                raise RuntimeError("the queue is closed")
            self._owners.setdefault(owner, deque()).append(item)
            self._size += 1
            self._ready.notify()

    def get(self, timeout: float | None = None, accept: Callable[[T], bool] | None = None,
            eligible: Callable[[Hashable], bool] | None = None) -> T | None:
        """The next owner's oldest item, waiting up to ``timeout`` s (None: for ever); None on timeout, once
        closed and empty, or when ``accept`` refuses that item (it stays first in line). With ``eligible``,
        owners it refuses are passed over (their turn kept); it is asked again on :meth:`wake`."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._first(eligible) is not _NONE or self.closed, timeout):
                return None
            owner = self._first(eligible)
            if owner is _NONE:
                return None
            items = self._owners[owner]
            if accept is not None and not accept(items[0]):
                return None
            item = items.popleft()
            self._size -= 1
            if items:
                self._owners.move_to_end(owner)  # its turn is over: every other owner comes first
            else:
                del self._owners[owner]
            return item

    def _first(self, eligible: Callable[[Hashable], bool] | None) -> Hashable:
        """The first owner in turn that ``eligible`` allows (any owner may be None), else ``_NONE``."""
        return next((owner for owner in self._owners if eligible is None or eligible(owner)), _NONE)

    def wake(self) -> None:
        """Make waiting consumers look again (what ``eligible`` says has changed)."""
        with self._ready:
            self._ready.notify_all()

    def drop(self, owner: Hashable) -> list[T]:
        """Remove and return everything ``owner`` still has queued."""
        with self._ready:
            items = self._owners.pop(owner, deque())
            self._size -= len(items)
            return list(items)

    def close(self) -> None:
        """Take nothing more; consumers drain what is queued, then get None."""
        with self._ready:
            self.closed = True
            self._ready.notify_all()


Watch = Callable[[Future], Future]
"""Handed to each call: registers a process job (a future) so that cancelling the call's owner kills it."""


@dataclass
class _Call:
    owner: Hashable
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)
    jobs: list[Future] = field(default_factory=list)
    stopped: bool = False


class FairPool:
    """``workers`` threads running calls from a :class:`FairQueue`: round-robin between owners, at most
    ``per_owner`` calls of one owner at once. A call ``fn(watch, *args)`` waits on process jobs it hands to
    ``watch``; :meth:`cancel` drops an owner's queued calls and cancels its running calls' jobs."""

    def __init__(self, workers: int, name: str, per_owner: int | None = None) -> None:
        self._queue: FairQueue[_Call] = FairQueue()
        self._per_owner = per_owner or workers
        self._running: dict[Hashable, list[_Call]] = {}
        self._lock = threading.Lock()
        for i in range(workers):
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True).start()

    def submit(self, owner: Hashable, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(watch, *args)`` for ``owner``; cancelling the future before a thread takes it skips the call."""
        call = _Call(owner, fn, args)
        self._queue.put(owner, call)
        return call.future

    def cancel(self, owner: Hashable) -> int:
        """Drop ``owner``'s queued calls and kill its running jobs (their calls fail with CancelledError); how
        many calls were dropped or stopped."""
        dropped = self._queue.drop(owner)
        for call in dropped:
            call.future.cancel()
        with self._lock:
            running = list(self._running.get(owner, ()))
            for call in running:
                call.stopped = True
            jobs = [job for call in running for job in call.jobs]
        for job in jobs:
            job.cancel()
        return len(dropped) + len(running)

    def shutdown(self) -> None:
        """Cancel what is queued, let running calls end, stop the threads."""
        self._queue.close()
        while (call := self._queue.get(timeout=0)) is not None:
            call.future.cancel()

    def _eligible(self, owner: Hashable) -> bool:
        with self._lock:
            return len(self._running.get(owner, ())) < self._per_owner

    def _run(self) -> None:
        while (call := self._queue.get(eligible=self._eligible)) is not None:
            if not call.future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running.setdefault(call.owner, []).append(call)

            def watch(job: Future, call: _Call = call) -> Future:
                with self._lock:
                    call.jobs.append(job)
                    stopped = call.stopped  # its owner was cancelled before this job started
                if stopped:
                    job.cancel()
                return job

            try:
                result = call.fn(watch, *call.args)
            except BaseException as e:  # handed to the awaiting request, like concurrent.futures does
                call.future.set_exception(e)
            else:
                call.future.set_result(result)
            finally:
                with self._lock:
                    calls = self._running[call.owner]
                    calls.remove(call)
                    if not calls:
                        del self._running[call.owner]
                self._queue.wake()
