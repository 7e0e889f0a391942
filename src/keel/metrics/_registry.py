"""A tiny Prometheus registry: counters, gauges and histograms with labels, rendered in the
text exposition format 0.0.4 for `/metrics`. No I/O, no threads: every component updates its
metrics from its event loop, and collectors copy counts kept elsewhere just before a scrape.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# API latency: from a cached GET (sub-millisecond) to a slow quorum write or a long list.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label_value(value: str) -> str:
    """Label values escape backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes backslash and line feed (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up; got inc({amount})")
        self.value += amount

    def set_total(self, total: float) -> None:
        """Copy a count kept elsewhere (a collector's job: the hot path keeps plain ints)."""
        self.value = float(total)


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    __slots__ = ("_bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); last is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # buckets are "le": inclusive
        self.count += 1
        self.sum += value

    def copy_from(self, counts: Sequence[int], total: float, count: int) -> None:
        """Copy per-bucket (not cumulative) counts kept elsewhere with the same bounds."""
        if len(counts) != len(self.counts):
            raise ValueError(f"expected {len(self.counts)} bucket counts, got {len(counts)}")
        self.counts = list(counts)
        self.sum = float(total)
        self.count = int(count)


C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[C]):
    type_name = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"metric name {name!r}: expected [a-zA-Z_:][a-zA-Z0-9_:]*")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"label name {label!r}: expected [a-zA-Z_][a-zA-Z0-9_]*")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: duplicate label names {list(labelnames)}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], C] = {}

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> C:
        """The child of one label combination (created at first use)."""
        if by_name:
            if values:
                raise TypeError("labels(): pass label values by position or by name, not both")
            try:
                values = tuple(by_name[n] for n in self.labelnames)
            except KeyError as exc:
                raise ValueError(f"{self.name}: missing label {exc.args[0]!r}") from None
            if len(by_name) != len(self.labelnames):
                extra = set(by_name) - set(self.labelnames)
                raise ValueError(f"{self.name}: unknown labels {sorted(extra)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: expected {len(self.labelnames)} label values "
                    f"{list(self.labelnames)}, got {len(key)}"
                )
            child = self._children[key] = self._new_child()
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(tuple(values), None)

    def clear(self) -> None:
        self._children.clear()

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels()")
        return self.labels()

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.type_name}\n"
        return head + "".join(self.samples())


class Counter(_Metric[CounterChild]):
    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def samples(self) -> Iterable[str]:
        for values, child in sorted(self._children.items()):
            yield f"{self.name}{_label_text(self.labelnames, values)} {format_value(child.value)}\n"


class Gauge(_Metric[GaugeChild]):
    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def samples(self) -> Iterable[str]:
        for values, child in sorted(self._children.items()):
            yield f"{self.name}{_label_text(self.labelnames, values)} {format_value(child.value)}\n"


class Histogram(_Metric[HistogramChild]):
    type_name = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be distinct, increasing and not empty")
        super().__init__(name, help, labelnames)
        self.buckets = bounds

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def samples(self) -> Iterable[str]:
        names = (*self.labelnames, "le")
        les = [format_value(b) for b in self.buckets] + ["+Inf"]
        for values, child in sorted(self._children.items()):
            cumulative = 0
            for le, count in zip(les, child.counts, strict=True):
                cumulative += count
                yield f"{self.name}_bucket{_label_text(names, (*values, le))} {cumulative}\n"
            labels = _label_text(self.labelnames, values)
            yield f"{self.name}_sum{labels} {format_value(child.sum)}\n"
            yield f"{self.name}_count{labels} {child.count}\n"


Metric = Counter | Gauge | Histogram


class Registry:
    """Named metrics, rendered in registration order; collectors run before each render."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _add(self, metric: Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def add_collector(self, collect: Callable[[], None]) -> None:
        """`collect()` runs before every render, e.g. to copy cache sizes into gauges."""
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        return "".join(metric.render() for metric in self._metrics.values())
