"""Round-robin between requests: a queue that hands out one item per owner in turn, and a thread pool on it.

A request that queues 16 large decodes must not make a later one-image request wait for all of them:
each owner (a request's :class:`~service.admission.Ticket`) gets its own FIFO, and consumers take from the
owners in turn. An owner's queued work can be dropped at once (its request timed out or its client left).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Thread-safe queue of items per owner, taken round-robin between owners, FIFO within one."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._owners: OrderedDict[Hashable, deque[T]] = OrderedDict()
        self._size = 0
        self._closed = False

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, owner: Hashable, item: T) -> None:
        """Queue ``item`` behind ``owner``'s earlier ones; RuntimeError once closed."""
        with self._ready:
            if self._closed:
                raise RuntimeError("the queue is closed")
            self._owners.setdefault(owner, deque()).append(item)
            self._size += 1
            self._ready.notify()

    def get(self, timeout: float | None = None, accept: Callable[[T], bool] | None = None) -> T | None:
        """The next owner's oldest item, waiting up to ``timeout`` s (None: for ever); None on timeout, once
        closed and empty, or when ``accept`` refuses that item (it stays first in line)."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size or self._closed, timeout):
                return None
            if not self._size:
                return None
            owner, items = next(iter(self._owners.items()))
            if accept is not None and not accept(items[0]):
                return None
            item = items.popleft()
            self._size -= 1
            if items:
                self._owners.move_to_end(owner)  # its turn is over: every other owner comes first
            else:
                del self._owners[owner]
            return item

    def drop(self, owner: Hashable) -> list[T]:
        """Remove and return everything ``owner`` still has queued."""
        with self._ready:
            items = self._owners.pop(owner, deque())
            self._size -= len(items)
            return list(items)

    def close(self) -> None:
        """Take nothing more; consumers drain what is queued, then get None."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


class FairPool:
    """``workers`` threads running calls from a :class:`FairQueue`: round-robin between owners."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: FairQueue[_Call] = FairQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def __len__(self) -> int:
        """Calls waiting for a thread."""
        return len(self._queue)

    def submit(self, owner: Hashable, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)`` for ``owner``; cancelling the future before a thread takes it skips the call."""
        call = _Call(fn, args)
        self._queue.put(owner, call)
        return call.future

    def cancel(self, owner: Hashable) -> int:
        """Drop ``owner``'s queued calls (a running one finishes; its result is dropped); how many were dropped."""
        dropped = self._queue.drop(owner)
        for call in dropped:
            call.future.cancel()
        return len(dropped)

    def shutdown(self) -> None:
        """Cancel what is queued, let running calls end, stop the threads."""
        self._queue.close()
        while (call := self._queue.get(timeout=0)) is not None:
            call.future.cancel()

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                result = call.fn(*call.args)
            except BaseException as e:  # handed to the awaiting request, like concurrent.futures does
                call.future.set_exception(e)
            else:
                call.future.set_result(result)
