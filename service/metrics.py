"""Prometheus metrics in a registry of their own, so several apps (tests, workers) never collide."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    """The service's counters; exposed as Prometheus text on ``/metrics``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("lost_reg_http_requests", "HTTP requests answered",
                                ["method", "path", "status"], registry=r)
        self.latency = Histogram("lost_reg_http_request_seconds", "HTTP request latency",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("lost_reg_errors", "errors by code (per request and per file)", ["code"], registry=r)
        self.images = Counter("lost_reg_images", "images localised", registry=r)
        self.batch_size = Histogram("lost_reg_batch_size", "images per backbone call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.inference = Histogram("lost_reg_inference_seconds", "backbone + discovery time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("lost_reg_queue_depth", "images waiting for inference", registry=r)
        self.in_flight = Gauge("lost_reg_images_in_flight", "images held from their first byte to their answer "
                               "(what max_queue bounds)", registry=r)
        self.rejections = Counter("lost_reg_rejections", "requests refused or abandoned for load or limits, by "
                                  "reason", ["reason"], registry=r)
