"""Admission: how many images the service holds at once, each counted from its first byte to its answer.

An image counts against ``max_queue`` from the moment its file part starts arriving (or its Label Studio
download starts) until its request's answer is sent: while it is read, decoded, queued and computed.
Every request carries a :class:`Ticket`; it takes one place per image as the body streams in, and the
first image that finds no place left gets a 503 at once, so the rest of that body is never read. All of
this runs on the event loop thread, so it needs no lock.
"""

from __future__ import annotations

from .errors import ServiceError
from .metrics import Metrics

RETRY_AFTER_S = 1


class Admission:
    """The places for images in flight, shared by every request."""

    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)

    def check(self) -> None:
        """503 at once when no place is free: a request that cannot hold even one image reads nothing."""
        if self.in_flight >= self.capacity:
            raise self.busy()

    def busy(self) -> ServiceError:
        return ServiceError(503, "busy", f"the service holds {self.in_flight} images already (its limit is "
                                         f"{self.capacity}); retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)})


class Ticket:
    """One request's places: taken image by image, all given back when its answer has been sent. Also the
    request's identity in the fair queues (:mod:`service.fair`)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.images = 0

    def take(self, images: int = 1) -> None:
        """Hold ``images`` more places, or 503 (holding no more than before) when they are not free."""
        a = self.admission
        if a.in_flight + images > a.capacity:
            raise a.busy()
        a.in_flight += images
        self.images += images

    def release(self) -> None:
        """Give every place back."""
        self.admission.in_flight -= self.images
        self.images = 0
