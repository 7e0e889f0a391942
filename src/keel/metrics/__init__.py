"""Prometheus metrics for every Keel component: a small registry rendered in text exposition
format 0.0.4 (`Registry`), and `MetricsServer`, which serves it at `/metrics` for the
processes that have no web server of their own. A leaf module: it imports nothing of Keel's,
so every layer (API server, runtime, controllers, scheduler, agent) may use it.
"""

from keel.metrics._http import MetricsServer, parse_listen
from keel.metrics._registry import (
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
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metric",
    "MetricsServer",
    "Registry",
    "escape_help",
    "escape_label_value",
    "format_value",
    "parse_listen",
]
