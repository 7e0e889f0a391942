"""The self-contained HTML report of one `keel verify` run: verdicts, a timeline of faults and
operations, every counterexample, and links to the component logs.

`render_report` is a pure function of the run's records; `write_report` only reads the run
directory (tolerating whatever is missing or half-written) and writes `report.html` beside it.
The page carries its own CSS and SVG and loads nothing, so it can be archived or mailed as is.
Every string that came from a history is escaped: histories record whatever the cluster said.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["render_report", "write_report"]

Record = Mapping[str, Any]

NOT_RECORDED = "not recorded"
# Operation lanes are binned so that a 100k-line history still makes a page of a few hundred KB.
BINS = 400
MAX_COPIES = 2000  # probe copies drawn per lane; the rest are counted, not drawn
MAX_COUNTEREXAMPLE_ROWS = 500
MAX_CELL = 400  # characters of one table cell before it is cut

# How an event's `type` shows in the operation lanes and counts; `invoke` is the other half of
# an operation that completes as ok/fail/info, so counting it too would double every operation.
OUTCOME = {"ok": "ok", "fail": "fail", "info": "info", "error": "error"}
SKIPPED_IN_LANES = {"invoke"}
COLOURS = {
    "ok": "#2e9d48",
    "fail": "#9a9a9a",
    "info": "#f08c00",
    "error": "#d62828",
    "other": "#4a78c2",
}
STACK_ORDER = ("ok", "info", "fail", "error", "other")
NODE_COLOURS = ("#4a78c2", "#e07b39", "#5aa469", "#b5508f", "#8c6bb1", "#c9a227", "#3aa6b9")
# Workloads that are drawn as markers or fault bars rather than as operation lanes.
NOT_OPERATIONS = {"nemesis", "convergence"}

LABEL_W = 180
PLOT_W = 920
AXIS_H = 30
FAULT_LANE_H = 18
OPS_LANE_H = 34
COPY_ROW_H = 9

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1180px;
padding:0 16px 40px;color:#222}
h1{font-size:44px;margin:0;letter-spacing:2px}h2{margin-top:32px;border-bottom:1px solid #ddd}
header{padding:16px 20px;margin-top:16px;border-radius:8px;color:#fff}
header.pass{background:#2e9d48}header.fail{background:#c62828}header.none{background:#777}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:10px 0 0}
header dt{font-weight:600}header dd{margin:0}header code{background:rgba(0,0,0,.2);
padding:1px 5px;border-radius:3px;color:#fff}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
td.code{word-break:break-all;max-width:420px}
.valid{color:#2e7d32;font-weight:700}.invalid{color:#c62828;font-weight:700}
.muted{color:#777}.note{background:#fff4d6;padding:4px 8px;border-radius:4px}
pre{white-space:pre-wrap;background:#f7f7f7;padding:8px;border-radius:4px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
svg{background:#fff;border:1px solid #ddd}svg text{font:11px system-ui,sans-serif}
details>summary{cursor:pointer;font-weight:600}
"""


# ---------------------------------------------------------------------------- the thin shell


def write_report(run_dir: Path) -> Path:
    """Render `run_dir/report.html` from whatever the run directory holds; return its path."""
    notes: list[str] = []
    schedule = _read_json(run_dir / "schedule.json", notes)
    verdicts = _read_json(run_dir / "verdicts.json", notes)
    if verdicts is not None and not isinstance(verdicts, list):
        notes.append("verdicts.json: expected a list of verdicts; ignored")
        verdicts = None
    if schedule is not None and not isinstance(schedule, dict):
        notes.append("schedule.json: expected an object; ignored")
        schedule = None
    history = _read_lines(run_dir / "history.jsonl", notes)
    probes: list[Record] | None = None
    for name in ("exclusive.jsonl", "duplicates.jsonl"):
        lines = _read_lines(run_dir / name, notes)
        if lines is not None:
            probes = (probes or []) + lines
    logs: list[str] | None = None
    sizes: dict[str, int] = {}
    if (run_dir / "logs").is_dir():
        logs = []
        for path in sorted((run_dir / "logs").rglob("*.log")):
            name = path.relative_to(run_dir).as_posix()
            logs.append(name)
            sizes[name] = path.stat().st_size
    page = render_report(
        schedule,
        history,
        [v for v in verdicts if isinstance(v, dict)] if verdicts is not None else None,
        probes,
        logs,
        log_sizes=sizes,
        notes=notes,
    )
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        notes.append(f"{path.name}: not JSON ({exc.msg}); ignored")
        return None


def _read_lines(path: Path, notes: list[str]) -> list[Record] | None:
    """JSON lines, skipping the ones that do not decode (a run killed mid-write leaves one)."""
    if not path.is_file():
        return None
    events: list[Record] = []
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(event, dict):
                events.append(event)
            else:
                bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return events


# ---------------------------------------------------------------------------- the pure core


def render_report(
    schedule: Record | None,
    history: Sequence[Record] | None,
    verdicts: Sequence[Record] | None,
    probe_lines: Sequence[Record] | None,
    logs: Sequence[str] | None,
    *,
    log_sizes: Mapping[str, int] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The whole page as one string. `None` for any input means its file was not recorded;
    `logs` are paths relative to the run directory, linked as such."""
    clock = _Clock.of(history or [], probe_lines or [])
    nemesis = _nemesis(history or [], clock)
    status = _overall(verdicts)
    title = f"keel verify: {status}"
    if schedule is not None and "seed" in schedule:
        title += f" (seed {schedule['seed']})"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        _header(status, schedule, verdicts, nemesis, notes),
        _verdict_table(verdicts),
        _timeline(history, probe_lines, clock, nemesis),
        _violations(verdicts, clock),
        _operation_counts(history),
        _nemesis_table(nemesis, history is not None),
        _log_links(logs, log_sizes or {}),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _text(value: object, limit: int = MAX_CELL) -> str:
    """A value as short readable text: strings as they are, anything else as compact JSON."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(mapping: object, limit: int = 80) -> str:
    if not isinstance(mapping, Mapping):
        return _text(mapping)
    return ", ".join(f"{key}={_text(value, limit)}" for key, value in mapping.items())


def _time(event: Record) -> int | None:
    value = event.get("time")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


@dataclass(frozen=True)
class _Clock:
    """Seconds from the first history event (CLOCK_MONOTONIC ns, shared with the probes)."""

    origin: int | None
    span: float  # seconds covered by the timeline, never zero

    @staticmethod
    def of(history: Sequence[Record], probes: Sequence[Record]) -> _Clock:
        times = [t for t in map(_time, history) if t is not None]
        probe_times = [t for t in map(_time, probes) if t is not None]
        origin = min(times) if times else (min(probe_times) if probe_times else None)
        if origin is None:
            return _Clock(None, 1.0)
        last = max(times + probe_times)
        return _Clock(origin, max((last - origin) / 1e9, 1e-3))

    def seconds(self, event: Record) -> float | None:
        t = _time(event)
        return None if t is None or self.origin is None else (t - self.origin) / 1e9

    def label(self, event: Record) -> str:
        s = self.seconds(event)
        return "—" if s is None else f"{s:.3f}"


# ---------------------------------------------------------------------------- nemesis


@dataclass
class _Fault:
    kind: str
    target: str
    start: float | None
    end: float | None = None
    detail: str = ""
    note: str = ""


@dataclass
class _Nemesis:
    faults: list[_Fault] = field(default_factory=list)
    heal: float | None = None
    rollouts: list[tuple[float, str]] = field(default_factory=list)
    converged: float | None = None  # first converged probe at or after the heal


def _nemesis(history: Sequence[Record], clock: _Clock) -> _Nemesis:
    """Pairs each fault's start with its end (first in, first out per kind); a fault the final
    heal cut short ends at the heal, one with no end at all at the end of the timeline."""
    result = _Nemesis()
    open_by_kind: dict[str, list[_Fault]] = {}
    converged: list[float] = []
    events = [e for e in history if e.get("workload") in NOT_OPERATIONS]
    events.sort(key=lambda e: _time(e) or 0)
    for event in events:
        at = clock.seconds(event)
        kind = str(event.get("fault", "fault"))
        detail = _text(event.get("detail", ""))
        kind_of_event = event.get("type")
        if event.get("workload") == "convergence":
            if kind_of_event == "heal" and at is not None:
                result.heal = at if result.heal is None else min(result.heal, at)
            elif kind_of_event == "probe" and event.get("converged") is True and at is not None:
                converged.append(at)
            continue
        if kind_of_event == "start":
            fault = _Fault(kind, _text(event.get("target", "")), at, detail=detail)
            result.faults.append(fault)
            open_by_kind.setdefault(kind, []).append(fault)
        elif kind_of_event == "info":
            pending = [f for f in open_by_kind.get(kind, []) if not f.detail]
            if pending:
                pending[0].detail = detail
        elif kind_of_event == "end":
            queue = open_by_kind.get(kind, [])
            if queue:
                fault = queue.pop(0)
            else:
                fault = _Fault(kind, "", None, note="no start recorded")
                result.faults.append(fault)
            fault.end = at
            fault.detail = fault.detail or detail
            if "error" in event:
                fault.note = _text(event["error"])
        elif kind_of_event == "heal" and at is not None:
            result.heal = at if result.heal is None else min(result.heal, at)
            for queue in open_by_kind.values():
                for fault in queue:
                    fault.end, fault.note = at, "ended by the final heal"
                queue.clear()
        elif kind_of_event == "rollout" and at is not None:
            rest = {k: v for k, v in event.items() if k not in {"workload", "type", "time"}}
            result.rollouts.append((at, _compact(rest)))
    for queue in open_by_kind.values():
        for fault in queue:
            fault.note = "no end recorded"
    # A converged probe before the heal says nothing about recovering from the faults.
    heal = result.heal
    result.converged = next((t for t in converged if heal is None or t >= heal), None)
    return result


# ---------------------------------------------------------------------------- sections


def _overall(verdicts: Sequence[Record] | None) -> str:
    if not verdicts:
        return "NO VERDICT"
    return "PASS" if all(v.get("valid") is True for v in verdicts) else "FAIL"


def _header(
    status: str,
    schedule: Record | None,
    verdicts: Sequence[Record] | None,
    nemesis: _Nemesis,
    notes: Sequence[str],
) -> str:
    css = {"PASS": "pass", "FAIL": "fail"}.get(status, "none")
    rows: list[tuple[str, str]] = []
    if schedule is None:
        rows.append(("Schedule", f"<i>{NOT_RECORDED}</i>"))
    else:
        seed = schedule.get("seed", "?")
        rows.append(("Seed", _e(seed)))
        duration = schedule.get("duration")
        rows.append(
            (
                "Duration",
                _e(f"{duration:g} s" if isinstance(duration, int | float) else NOT_RECORDED),
            )
        )
        rows.append(("Shape", _e(_compact(schedule.get("shape", NOT_RECORDED)))))
        faults = schedule.get("faults")
        rows.append(("Faults scheduled", _e(len(faults) if isinstance(faults, list) else 0)))
        command = schedule.get("command")
        if isinstance(command, list):
            command = " ".join(str(c) for c in command)
        if command:
            rows.append(("Replay", f"<code>{_e(command)}</code>"))
        else:
            replay = f"keel verify --seed {seed}"
            if isinstance(duration, int | float):
                replay += f" --duration {duration:g}"
            rows.append(("Replay", f"<code>{_e(replay)}</code> with the run's other options"))
    verdict_text = (
        NOT_RECORDED
        if verdicts is None
        else (
            f"{sum(1 for v in verdicts if v.get('valid') is True)} of {len(verdicts)} models valid"
        )
    )
    rows.append(("Verdicts", _e(verdict_text)))
    if nemesis.heal is not None:
        if nemesis.converged is not None:
            healed = f"converged {nemesis.converged - nemesis.heal:.3f} s after the final heal"
        else:
            healed = "no converged probe recorded after the final heal"
        rows.append(("Convergence", _e(healed)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    note_html = "".join(f'<p class="note" style="color:#222">{_e(n)}</p>' for n in notes)
    return f'<header class="{css}"><h1>{_e(status)}</h1><dl>{dl}</dl>{note_html}</header>'


def _verdict_table(verdicts: Sequence[Record] | None) -> str:
    head = "<section><h2>Verdicts</h2>"
    if verdicts is None:
        return head + f"<p class=muted>Verdicts {NOT_RECORDED}.</p></section>"
    if not verdicts:
        return head + "<p class=muted>No checker produced a verdict.</p></section>"
    rows = []
    for verdict in verdicts:
        valid = verdict.get("valid") is True
        word = (
            '<span class="valid">valid</span>' if valid else '<span class="invalid">INVALID</span>'
        )
        model = _e(verdict.get("model", "?"))
        if not valid:
            model = f'<a href="#violation-{_anchor(verdict.get("model", "?"))}">{model}</a>'
        rows.append(
            f"<tr><td>{model}</td><td>{word}</td><td>{_e(_text(verdict.get('summary', '')))}</td>"
            f'<td class="code">{_e(_compact(verdict.get("stats", {})))}</td></tr>'
        )
    return (
        head
        + "<table><tr><th>Model</th><th>Verdict</th><th>Summary</th><th>Stats</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )


def _anchor(name: object) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(name))


def _violations(verdicts: Sequence[Record] | None, clock: _Clock) -> str:
    invalid = [v for v in verdicts or [] if v.get("valid") is not True]
    if not invalid:
        return ""
    out = ["<section><h2>Violations</h2>"]
    for verdict in invalid:
        model = verdict.get("model", "?")
        out.append(
            f'<h3 id="violation-{_anchor(model)}">{_e(model)}: '
            f"{_e(_text(verdict.get('summary', '')))}</h3>"
        )
        explanation = verdict.get("explanation")
        if explanation:
            out.append(f"<pre>{_e(_text(explanation, 20_000))}</pre>")
        events = verdict.get("counterexample")
        events = [e for e in events if isinstance(e, Mapping)] if isinstance(events, list) else []
        if not events:
            out.append("<p class=muted>No counterexample events recorded.</p>")
            continue
        out.append(f"<details open><summary>Counterexample: {len(events)} event(s)</summary>")
        out.append(_event_table(events[:MAX_COUNTEREXAMPLE_ROWS], clock))
        if len(events) > MAX_COUNTEREXAMPLE_ROWS:
            out.append(
                f"<p class=muted>{len(events) - MAX_COUNTEREXAMPLE_ROWS} more event(s) "
                "in verdicts.json.</p>"
            )
        out.append("</details>")
    out.append("</section>")
    return "\n".join(out)


EVENT_COLUMNS = ("process", "type", "f", "key", "value")


def _event_table(events: Iterable[Record], clock: _Clock) -> str:
    header = "".join(f"<th>{c}</th>" for c in ("time (s)", *EVENT_COLUMNS, "other fields"))
    rows = []
    for event in events:
        cells = [f'<td class="num">{_e(clock.label(event))}</td>']
        for column in EVENT_COLUMNS:
            value = event.get(column)
            cells.append(f'<td class="code">{"" if value is None else _e(_text(value))}</td>')
        rest = {k: v for k, v in event.items() if k not in {"time", *EVENT_COLUMNS}}
        cells.append(f'<td class="code">{_e(_compact(rest))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _operation_counts(history: Sequence[Record] | None) -> str:
    head = "<section><h2>Operations</h2>"
    if history is None:
        return head + f"<p class=muted>History {NOT_RECORDED}.</p></section>"
    counts: dict[str, Counter[str]] = {}
    for event in history:
        workload = str(event.get("workload", "?"))
        kind = event.get("type")
        # A nemesis `info` is a fault's detail, not an indeterminate operation.
        operation = workload not in NOT_OPERATIONS
        bucket = OUTCOME.get(kind, "other") if operation and isinstance(kind, str) else "other"
        counts.setdefault(workload, Counter())[bucket] += 1
    if not counts:
        return head + "<p class=muted>The history is empty.</p></section>"
    rows = []
    for workload in sorted(counts):
        c = counts[workload]
        cells = "".join(
            f'<td class="num">{c[k]}</td>' for k in ("ok", "fail", "info", "error", "other")
        )
        rows.append(f"<tr><td>{_e(workload)}</td>{cells}<td class='num'>{c.total()}</td></tr>")
    return (
        head + "<table><tr><th>Workload</th><th>ok</th><th>fail</th><th>info</th><th>error</th>"
        "<th>other events</th><th>all lines</th></tr>" + "".join(rows) + "</table></section>"
    )


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _nemesis_table(nemesis: _Nemesis, recorded: bool) -> str:
    head = "<section><h2>Nemesis</h2>"
    if not recorded:
        return head + f"<p class=muted>History {NOT_RECORDED}.</p></section>"
    rows: list[tuple[float, str]] = []
    for f in nemesis.faults:
        length = "" if f.start is None or f.end is None else f"{f.end - f.start:.3f}"
        detail = _e(f.detail) + (f' <span class="muted">({_e(f.note)})</span>' if f.note else "")
        rows.append(
            (
                f.start if f.start is not None else -1.0,
                f"<tr><td>{_e(f.kind)}</td><td>{_e(f.target)}</td>"
                f'<td class="num">{_seconds(f.start)}</td><td class="num">{_seconds(f.end)}</td>'
                f'<td class="num">{length}</td><td>{detail}</td></tr>',
            )
        )
    for at, detail in nemesis.rollouts:
        rows.append(
            (
                at,
                f'<tr><td>rollout</td><td></td><td class="num">{at:.3f}</td>'
                f"<td></td><td></td><td>{_e(detail)}</td></tr>",
            )
        )
    if nemesis.heal is not None:
        rows.append(
            (
                nemesis.heal,
                f'<tr><td>heal</td><td></td><td class="num">{nemesis.heal:.3f}'
                "</td><td></td><td></td><td>final heal of every fault</td></tr>",
            )
        )
    if not rows:
        return head + "<p class=muted>No faults were injected.</p></section>"
    rows.sort(key=lambda r: r[0])
    return (
        head + f"<details open><summary>{len(nemesis.faults)} fault(s)</summary>"
        "<table><tr><th>Fault</th><th>Target</th><th>Start (s)</th><th>End (s)</th>"
        "<th>Length (s)</th><th>Detail</th></tr>"
        + "".join(r for _, r in rows)
        + "</table></details></section>"
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def _log_links(logs: Sequence[str] | None, sizes: Mapping[str, int]) -> str:
    head = "<section><h2>Logs</h2>"
    if logs is None:
        return head + f"<p class=muted>Logs {NOT_RECORDED}.</p></section>"
    if not logs:
        return head + "<p class=muted>The logs directory is empty.</p></section>"
    items = []
    for name in logs:
        size = f' <span class="muted">({_size(sizes[name])})</span>' if name in sizes else ""
        items.append(f'<li><a href="{_e(quote(name))}">{_e(name)}</a>{size}</li>')
    return head + "<ul>" + "".join(items) + "</ul></section>"


# ---------------------------------------------------------------------------- the timeline


class _Svg:
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.parts: list[str] = []
        self.y: float = AXIS_H

    def x(self, seconds: float) -> float:
        return LABEL_W + max(0.0, min(seconds, self.clock.span)) / self.clock.span * PLOT_W

    def lane(self, label: str, height: float, tooltip: str) -> float:
        """Draws a lane's background and label; returns its top."""
        top = self.y
        shade = "#f6f6f6" if len(self.parts) % 2 else "#fbfbfb"
        self.parts.append(
            f'<rect x="0" y="{top}" width="{LABEL_W + PLOT_W}" height="{height}" fill="{shade}">'
            f"<title>{_e(tooltip)}</title></rect>"
            f'<text x="6" y="{top + min(height, 18) - 5:.0f}">{_e(_text(label, 28))}</text>'
        )
        self.y += height
        return top


def _timeline(
    history: Sequence[Record] | None,
    probes: Sequence[Record] | None,
    clock: _Clock,
    nemesis: _Nemesis,
) -> str:
    head = "<section><h2>Timeline</h2>"
    if clock.origin is None:
        return head + f"<p class=muted>History {NOT_RECORDED}: nothing to draw.</p></section>"
    svg = _Svg(clock)
    # Fault lanes, in the order the kinds first struck.
    kinds = list(dict.fromkeys(f.kind for f in nemesis.faults))
    for kind in kinds:
        top = svg.lane(kind, FAULT_LANE_H, f"fault {kind}")
        for f in (f for f in nemesis.faults if f.kind == kind):
            start = f.start if f.start is not None else 0.0
            end = f.end if f.end is not None else clock.span
            x0, x1 = svg.x(start), svg.x(end)
            tip = f"{f.kind} {f.target} {_seconds(f.start)} to {_seconds(f.end)} s: {f.detail}"
            if f.note:
                tip += f" ({f.note})"
            svg.parts.append(
                f'<rect x="{x0:.1f}" y="{top + 3}" width="{max(x1 - x0, 1.5):.1f}" '
                f'height="{FAULT_LANE_H - 6}" fill="#c62828" opacity="0.75">'
                f"<title>{_e(tip)}</title></rect>"
            )
    if nemesis.rollouts:
        top = svg.lane("rollout", FAULT_LANE_H, "rollouts of the plain Deployment")
        for at, detail in nemesis.rollouts:
            x = svg.x(at)
            svg.parts.append(
                f'<path d="M{x:.1f},{top + 3}l4,6l-4,6l-4,-6z" fill="#8c6bb1">'
                f"<title>{_e(f'{at:.3f} s rollout {detail}')}</title></path>"
            )
    _operation_lanes(svg, history or [])
    _copy_lanes(svg, probes or [])
    # Markers across every lane.
    bottom = svg.y
    # The heal's label sits left of its line and convergence's right, so close ones both read.
    for mark, label, colour, anchor, dx in (
        (nemesis.heal, "heal", "#c62828", "end", -3),
        (nemesis.converged, "converged", "#2e9d48", "start", 3),
    ):
        if mark is None:
            continue
        x = svg.x(mark)
        svg.parts.append(
            f'<line x1="{x:.1f}" y1="14" x2="{x:.1f}" y2="{bottom}" stroke="{colour}" '
            f'stroke-width="1.5" stroke-dasharray="4,3">'
            f"<title>{label} at {mark:.3f} s</title></line>"
            f'<text x="{x + dx:.1f}" y="12" fill="{colour}" text-anchor="{anchor}">{label}</text>'
        )
    axis = _axis(svg, bottom)
    height = bottom + 4
    legend = "".join(
        f'<span><i style="background:{COLOURS[k]}"></i>{k}</span>' for k in STACK_ORDER
    )
    return (
        head + f"<p class=muted>Seconds since the first history event; {clock.span:.3f} s in all. "
        "Hover a bar for its detail.</p>"
        f'<div class="legend">{legend}<span><i style="background:#c62828;opacity:.75"></i>fault'
        "</span></div>"
        f'<svg width="{LABEL_W + PLOT_W}" height="{height}" '
        f'viewBox="0 0 {LABEL_W + PLOT_W} {height}" role="img" aria-label="timeline">'
        + axis
        + "".join(svg.parts)
        + "</svg></section>"
    )


def _axis(svg: _Svg, bottom: float) -> str:
    span = svg.clock.span
    step = 1e-3
    for candidate in (
        1e-3,
        2e-3,
        5e-3,
        0.01,
        0.02,
        0.05,
        0.1,
        0.2,
        0.5,
        1,
        2,
        5,
        10,
        15,
        30,
        60,
        120,
        300,
        600,
        1200,
        1800,
        3600,
        7200,
    ):
        step = candidate
        if span / candidate <= 12:
            break
    out = []
    tick = 0.0
    while tick <= span + 1e-9:
        x = svg.x(tick)
        out.append(
            f'<line x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#e4e4e4"/>'
            f'<text x="{x:.1f}" y="{AXIS_H - 7}" text-anchor="middle" fill="#555">{tick:g}</text>'
        )
        tick = round(tick + step, 6)
    return "".join(out)


def _operation_lanes(svg: _Svg, history: Sequence[Record]) -> None:
    """One lane per workload: a histogram of its events in BINS bins, stacked by outcome."""
    clock = svg.clock
    bins: dict[str, dict[str, list[int]]] = {}
    totals: dict[str, Counter[str]] = {}
    for event in history:
        workload = event.get("workload")
        kind = event.get("type")
        if not isinstance(workload, str) or workload in NOT_OPERATIONS:
            continue
        if kind in SKIPPED_IN_LANES:
            continue
        at = clock.seconds(event)
        if at is None:
            continue
        outcome = OUTCOME.get(kind, "other") if isinstance(kind, str) else "other"
        lane = bins.setdefault(workload, {k: [0] * BINS for k in STACK_ORDER})
        index = min(BINS - 1, max(0, int(at / clock.span * BINS)))
        lane[outcome][index] += 1
        totals.setdefault(workload, Counter())[outcome] += 1
    width = PLOT_W / BINS
    for workload in sorted(bins):
        lane = bins[workload]
        tally = ", ".join(f"{n} {k}" for k, n in totals[workload].most_common())
        top = svg.lane(workload, OPS_LANE_H, f"{workload}: {tally}")
        peak = max(sum(lane[k][i] for k in STACK_ORDER) for i in range(BINS)) or 1
        scale = (OPS_LANE_H - 6) / peak
        filled = [0.0] * BINS
        base = top + OPS_LANE_H - 2
        for outcome in STACK_ORDER:
            path = []
            for i, n in enumerate(lane[outcome]):
                if not n:
                    continue
                h = n * scale
                path.append(
                    f"M{LABEL_W + i * width:.2f},{base - filled[i]:.1f}h{width:.2f}v{-h:.1f}"
                    f"h{-width:.2f}z"
                )
                filled[i] += h
            if path:
                svg.parts.append(
                    f'<path d="{"".join(path)}" fill="{COLOURS[outcome]}">'
                    f"<title>{_e(workload)}: {totals[workload][outcome]} {outcome}</title></path>"
                )


@dataclass
class _Copy:
    name: str
    node: str
    start: float
    end: float
    pid: str = ""
    instance: str = ""
    stopped: bool = False
    overlaps: bool = False


def _copy_lanes(svg: _Svg, probes: Sequence[Record]) -> None:
    """One lane per probe workload: a bar per copy from its start to its last beat or stop,
    stacked into rows so that copies alive at once are seen side by side."""
    clock = svg.clock
    by_workload: dict[str, dict[str, _Copy]] = {}
    for line in probes:
        at = clock.seconds(line)
        if at is None:
            continue
        workload = str(line.get("workload", "probe"))
        name = str(line.get("copy", "?"))
        copies = by_workload.setdefault(workload, {})
        copy = copies.get(name)
        if copy is None:
            copy = copies[name] = _Copy(name, _text(line.get("node", "?")), at, at)
        copy.start, copy.end = min(copy.start, at), max(copy.end, at)
        copy.pid = copy.pid or _text(line.get("pid", ""))
        copy.instance = copy.instance or _text(line.get("instance", ""))
        copy.stopped = copy.stopped or line.get("type") == "stop"
    nodes = sorted({c.node for seen in by_workload.values() for c in seen.values()})
    colour = {node: NODE_COLOURS[i % len(NODE_COLOURS)] for i, node in enumerate(nodes)}
    for workload in sorted(by_workload):
        ordered = sorted(by_workload[workload].values(), key=lambda c: (c.start, c.end))
        _mark_overlaps(ordered)
        drawn = ordered[:MAX_COPIES]
        rows: list[float] = []  # the end of the last copy placed in each row
        placed: list[tuple[_Copy, int]] = []
        for copy in drawn:
            row = next((r for r, end in enumerate(rows) if end < copy.start), None)
            if row is None:
                row = len(rows)
                rows.append(copy.end)
            rows[row] = copy.end
            placed.append((copy, row))
        overlapping = sum(1 for c in ordered if c.overlaps)
        tip = f"{workload} copies: {len(ordered)}, {overlapping} alive at the same time as another"
        if len(ordered) > MAX_COPIES:
            tip += f" ({len(ordered) - MAX_COPIES} not drawn)"
        height = max(FAULT_LANE_H, len(rows) * COPY_ROW_H + 6)
        top = svg.lane(f"{workload} copies", height, tip)
        for copy, row in placed:
            x0, x1 = svg.x(copy.start), svg.x(copy.end)
            end = "stopped" if copy.stopped else "last beat"
            text = (
                f"{copy.name} on {copy.node} (pid {copy.pid}, instance {copy.instance}): "
                f"{copy.start:.3f} to {copy.end:.3f} s ({end})"
            )
            if copy.overlaps:
                text += "; overlaps another copy"
            stroke = ' stroke="#d62828" stroke-width="1.5"' if copy.overlaps else ""
            svg.parts.append(
                f'<rect x="{x0:.1f}" y="{top + 3 + row * COPY_ROW_H}" '
                f'width="{max(x1 - x0, 1.5):.1f}" height="{COPY_ROW_H - 2}" '
                f'fill="{colour[copy.node]}"{stroke}><title>{_e(text)}</title></rect>'
            )


def _mark_overlaps(copies: list[_Copy]) -> None:
    """Flags every copy alive while another one was (copies sorted by start)."""
    latest: _Copy | None = None  # the copy seen so far that lives the longest
    for copy in copies:
        if latest is not None and copy.start < latest.end:
            copy.overlaps = latest.overlaps = True
        if latest is None or copy.end > latest.end:
            latest = copy
