"""The API server's metrics (issue 3, item 5) on the shared Prometheus registry of
`keel.metrics`, which every other component uses too; its names are re-exported here.
"""

from __future__ import annotations

from keel.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Metric,
    Registry,
    escape_help,
    escape_label_value,
    format_value,
)

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "ApiMetrics",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metric",
    "Registry",
    "escape_help",
    "escape_label_value",
    "format_value",
]


class ApiMetrics:
    """The metrics the API server exports (issue 3, item 5), on a registry of their own."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.store_writes = r.counter(
            "keel_store_writes_total",
            "Store writes (consensus writes) made by this API server, per kind and verb.",
            ("kind", "verb"),
        )
        self.requests = r.counter(
            "keel_api_requests_total",
            "API requests answered, per verb, kind and HTTP status code.",
            ("verb", "kind", "code"),
        )
        self.request_duration = r.histogram(
            "keel_api_request_duration_seconds",
            "API request latency until the response starts (watches: until the stream opens).",
            ("verb", "kind", "code"),
        )
        self.watchers = r.gauge(
            "keel_watch_cache_watchers", "Open watches served from the watch cache.", ("kind",)
        )
        self.cache_objects = r.gauge(
            "keel_watch_cache_objects", "Objects held in the watch cache.", ("kind",)
        )
        self.cache_events = r.gauge(
            "keel_watch_cache_events", "Events held in the watch cache's ring.", ("kind",)
        )
        self.compacted_revision = r.gauge(
            "keel_store_compacted_revision",
            "The store revision compacted at, as far as this API server knows: "
            "a watch from an older resourceVersion gets 410 Expired.",
        )

    def observe_request(self, verb: str, kind: str, code: int, seconds: float) -> None:
        code_text = str(code)
        self.requests.labels(verb, kind, code_text).inc()
        self.request_duration.labels(verb, kind, code_text).observe(seconds)

    def render(self) -> str:
        return self.registry.render()
