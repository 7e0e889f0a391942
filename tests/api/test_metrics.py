"""The Prometheus registry renders text format 0.0.4 that a parser reads back exactly."""

from __future__ import annotations

import math

import pytest
from support.prometheus import parse, value_of

from keel.api.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    ApiMetrics,
    Registry,
    escape_label_value,
)

# --------------------------------------------------------------------------- tests


def test_counters_and_gauges_render_and_parse_back() -> None:
    registry = Registry()
    writes = registry.counter("keel_store_writes_total", "Store writes.", ("kind", "verb"))
    up = registry.gauge("up", "Always one.")
    writes.labels("deployments", "create").inc()
    writes.labels(kind="deployments", verb="create").inc(2)
    writes.labels("leases", "delete").inc()
    up.set(1)
    helps, types, samples = parse(registry.render())
    assert types == {"keel_store_writes_total": "counter", "up": "gauge"}
    assert helps["up"] == "Always one."
    assert value_of(samples, "keel_store_writes_total", kind="deployments", verb="create") == 3
    assert value_of(samples, "keel_store_writes_total", kind="leases", verb="delete") == 1
    assert value_of(samples, "up") == 1


@pytest.mark.parametrize(
    "value", ['say "hi"', "back\\slash", "two\nlines", 'all \\ " \n together', "", "ünï"]
)
def test_label_values_are_escaped_and_read_back_exactly(value: str) -> None:
    registry = Registry()
    registry.counter("c_total", "help", ("v",)).labels(value).inc()
    _, _, samples = parse(registry.render())
    assert samples == [("c_total", (("v", value),), 1.0)]


def test_escaping_follows_the_text_format() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_help_text_with_newlines_and_backslashes_stays_on_one_line() -> None:
    registry = Registry()
    registry.gauge("g", 'line one\nline "two" \\ end').set(0)
    text = registry.render()
    assert text.count("\n") == 3
    helps, _, _ = parse(text)
    assert helps["g"] == 'line one\nline "two" \\ end'


def test_histogram_buckets_are_cumulative_with_sum_count_and_inf() -> None:
    registry = Registry()
    latency = registry.histogram("lat_seconds", "Latency.", ("verb",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        latency.labels("get").observe(value)
    _, types, samples = parse(registry.render())
    assert types["lat_seconds"] == "histogram"
    assert value_of(samples, "lat_seconds_bucket", verb="get", le="0.1") == 2  # le inclusive
    assert value_of(samples, "lat_seconds_bucket", verb="get", le="1") == 3
    assert value_of(samples, "lat_seconds_bucket", verb="get", le="+Inf") == 4
    assert value_of(samples, "lat_seconds_count", verb="get") == 4
    assert value_of(samples, "lat_seconds_sum", verb="get") == pytest.approx(2.65)


def test_latency_buckets_span_half_a_millisecond_to_ten_seconds() -> None:
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    registry = Registry()
    registry.histogram("h", "h").observe(0.0003)
    _, _, samples = parse(registry.render())
    les = [dict(ls)["le"] for n, ls, _ in samples if n == "h_bucket"]
    assert les[0] == "0.0005" and les[-2:] == ["10", "+Inf"]
    assert all(v == 1 for n, _, v in samples if n == "h_bucket")


def test_special_values_render_as_the_format_spells_them() -> None:
    registry = Registry()
    g = registry.gauge("g", "g", ("x",))
    g.labels("inf").set(math.inf)
    g.labels("ninf").set(-math.inf)
    g.labels("nan").set(math.nan)
    g.labels("frac").set(0.25)
    text = registry.render()
    assert 'g{x="inf"} +Inf\n' in text and 'g{x="ninf"} -Inf\n' in text
    assert 'g{x="nan"} NaN\n' in text and 'g{x="frac"} 0.25\n' in text
    parse(text)


def test_collectors_refresh_gauges_before_each_render() -> None:
    registry = Registry()
    objects = registry.gauge("objects", "Objects.", ("kind",))
    sizes = {"nodes": 3}
    registry.add_collector(lambda: objects.labels("nodes").set(sizes["nodes"]))
    assert value_of(parse(registry.render())[2], "objects", kind="nodes") == 3
    sizes["nodes"] = 7
    assert value_of(parse(registry.render())[2], "objects", kind="nodes") == 7


def test_misuse_is_rejected_with_a_clear_message() -> None:
    registry = Registry()
    c = registry.counter("c_total", "c", ("a",))
    with pytest.raises(ValueError, match="already registered"):
        registry.counter("c_total", "again")
    with pytest.raises(ValueError, match="only goes up"):
        c.labels("x").inc(-1)
    with pytest.raises(ValueError, match="expected 1 label values"):
        c.labels("x", "y")
    with pytest.raises(ValueError, match="missing label 'a'"):
        c.labels(b="x")
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    with pytest.raises(ValueError, match="metric name"):
        registry.counter("bad-name", "x")
    with pytest.raises(ValueError, match="label name"):
        registry.counter("ok", "x", ("__reserved",))
    with pytest.raises(ValueError, match="'le' is reserved"):
        registry.histogram("h", "x", ("le",))
    with pytest.raises(ValueError, match="increasing"):
        registry.histogram("h2", "x", buckets=(1.0, 0.5))


def test_api_metrics_export_the_names_of_issue_3() -> None:
    metrics = ApiMetrics()
    metrics.observe_request("get", "nodes", 200, 0.002)
    metrics.observe_request("get", "nodes", 200, 0.004)
    metrics.observe_request("create", "leases", 409, 0.02)
    metrics.store_writes.labels("leases", "create").inc()
    metrics.watchers.labels("instances").inc()
    metrics.cache_objects.labels("instances").set(12)
    metrics.cache_events.labels("instances").set(40)
    metrics.compacted_revision.set(17)
    _, types, samples = parse(metrics.render())
    assert types == {
        "keel_store_writes_total": "counter",
        "keel_api_requests_total": "counter",
        "keel_api_request_duration_seconds": "histogram",
        "keel_watch_cache_watchers": "gauge",
        "keel_watch_cache_objects": "gauge",
        "keel_watch_cache_events": "gauge",
        "keel_store_compacted_revision": "gauge",
    }
    assert value_of(samples, "keel_api_requests_total", verb="get", kind="nodes", code="200") == 2
    count = "keel_api_request_duration_seconds_count"
    assert value_of(samples, count, verb="create", kind="leases", code="409") == 1
    assert value_of(samples, "keel_store_writes_total", kind="leases", verb="create") == 1
    assert value_of(samples, "keel_watch_cache_objects", kind="instances") == 12
    assert value_of(samples, "keel_store_compacted_revision") == 17
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
