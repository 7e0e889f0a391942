"""The `keel verify` report is one self-contained page that tells a reader what failed and shows
the evidence: verdicts, counterexamples, faults and probe copies on a timeline, escaped history
text, and whatever the run directory lacked marked as not recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from keel.verify.report import render_report, write_report

SECOND = 1_000_000_000
T0 = 5_000 * SECOND  # CLOCK_MONOTONIC is far from zero
EVIL = "<script>alert(1)</script>"


def _at(seconds: float) -> int:
    return T0 + int(seconds * SECOND)


def _schedule() -> dict[str, Any]:
    return {
        "seed": 4242,
        "duration": 20.0,
        "command": "keel verify --seed 4242 --duration 20 --faults kill,pause",
        "shape": {"store": "etcd", "hosts": 3, "etcd_members": 3, "apiservers": 2, "agents": 2},
        "faults": [
            {"at": 2.0, "kind": "kill", "target": "apiserver", "duration": 3.0, "pick": 1},
            {"at": 8.0, "kind": "pause", "target": "etcd", "duration": 2.0, "pick": 0},
        ],
    }


def _history() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(40):
        t = i * 0.4
        events.append(
            {
                "workload": "register",
                "process": i % 3,
                "type": "invoke",
                "f": "write",
                "key": "k1",
                "value": i,
                "time": _at(t),
            }
        )
        outcome = "ok" if i % 5 else ("info" if i % 10 else "fail")
        events.append(
            {
                "workload": "register",
                "process": i % 3,
                "type": outcome,
                "f": "write",
                "key": "k1",
                "value": i,
                "time": _at(t + 0.05),
            }
        )
    events += [
        {
            "workload": "register",
            "process": 7,
            "type": "invoke",
            "f": "write",
            "key": "k2",
            "value": EVIL,
            "time": _at(1.0),
        },
        {
            "workload": "register",
            "process": 7,
            "type": "ok",
            "f": "write",
            "key": "k2",
            "value": EVIL,
            "time": _at(1.1),
        },
        {"workload": "watch", "process": "w0", "type": "event", "time": _at(3.0)},
        {"workload": "fencing", "process": "c1", "type": "acquired", "token": 3, "time": _at(0.5)},
        {
            "workload": "nemesis",
            "type": "start",
            "fault": "kill",
            "target": "apiserver",
            "time": _at(2.0),
        },
        {
            "workload": "nemesis",
            "type": "info",
            "fault": "kill",
            "detail": "kill -9 apiserver/host-2 (pid 4711)",
            "time": _at(2.01),
        },
        {
            "workload": "nemesis",
            "type": "end",
            "fault": "kill",
            "detail": "kill -9 apiserver/host-2 (pid 4711)",
            "time": _at(5.0),
        },
        {
            "workload": "nemesis",
            "type": "start",
            "fault": "pause",
            "target": "etcd",
            "time": _at(8.0),
        },
        {
            "workload": "nemesis",
            "type": "info",
            "fault": "pause",
            "detail": "SIGSTOP etcd/host-1 (pid 99)",
            "time": _at(8.01),
        },
        {"workload": "nemesis", "type": "heal", "time": _at(16.0)},
        {"workload": "convergence", "type": "heal", "time": _at(16.0)},
        {
            "workload": "convergence",
            "type": "probe",
            "converged": False,
            "missing": ["a"],
            "time": _at(16.5),
        },
        {
            "workload": "convergence",
            "type": "probe",
            "converged": True,
            "missing": [],
            "time": _at(17.25),
        },
    ]
    return sorted(events, key=lambda e: e["time"])


def _probes() -> list[dict[str, Any]]:
    lines = []
    # Two copies of the exclusive instance alive together between 6 s and 9 s.
    for copy, node, start, stop in (("a/1/1", "host-1", 0.2, 9.0), ("b/2/2", "host-2", 6.0, 12.0)):
        lines.append(
            {
                "workload": "exclusive",
                "type": "start",
                "copy": copy,
                "node": node,
                "instance": "ex-0",
                "pid": 1,
                "time": _at(start),
            }
        )
        lines.append(
            {
                "workload": "exclusive",
                "type": "beat",
                "copy": copy,
                "node": node,
                "instance": "ex-0",
                "pid": 1,
                "time": _at((start + stop) / 2),
            }
        )
        lines.append(
            {
                "workload": "exclusive",
                "type": "stop",
                "copy": copy,
                "node": node,
                "instance": "ex-0",
                "pid": 1,
                "time": _at(stop),
            }
        )
    return lines


def _invalid_verdicts() -> list[dict[str, Any]]:
    return [
        {
            "model": "register",
            "valid": False,
            "summary": "a read saw a value never written",
            "explanation": "process 7 read 'ghost-value-31337' which no write produced",
            "counterexample": [
                {
                    "workload": "register",
                    "process": 7,
                    "type": "ok",
                    "f": "read",
                    "key": "k2",
                    "value": "ghost-value-31337",
                    "time": _at(1.234),
                },
                {
                    "workload": "register",
                    "process": 7,
                    "type": "ok",
                    "f": "write",
                    "key": "k2",
                    "value": EVIL,
                    "time": _at(1.1),
                },
            ],
            "stats": {"operations": 82, "indeterminate": 4},
        },
        {
            "model": "exclusive",
            "valid": True,
            "summary": "never two copies",
            "counterexample": [],
            "explanation": "",
            "stats": {"copies": 2},
        },
    ]


def _write_run(run_dir: Path, verdicts: list[dict[str, Any]]) -> None:
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "schedule.json").write_text(json.dumps(_schedule()))
    (run_dir / "history.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in _history()) + '{"workload": "regis'  # torn line
    )
    probes = _probes()
    (run_dir / "exclusive.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes))
    (run_dir / "duplicates.jsonl").write_text("")
    (run_dir / "verdicts.json").write_text(json.dumps(verdicts))
    (run_dir / "logs" / "apiserver-host-2.log").write_text("x" * 3000)
    (run_dir / "logs" / "etcd-host-1.log").write_text("started\n")


def test_failed_run_report_shows_the_violation_and_its_evidence(tmp_path: Path) -> None:
    _write_run(tmp_path, _invalid_verdicts())

    path = write_report(tmp_path)

    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert ">FAIL<" in page and ">PASS<" not in page
    assert "4242" in page and "keel verify --seed 4242 --duration 20 --faults kill,pause" in page
    # The counterexample, its explanation, its times relative to the first event.
    assert "ghost-value-31337" in page
    assert "a read saw a value never written" in page
    assert ">1.234<" in page
    # Faults with their details, and the heal and convergence markers on the timeline.
    assert "kill -9 apiserver/host-2 (pid 4711)" in page
    assert "SIGSTOP etcd/host-1 (pid 99)" in page
    assert "ended by the final heal" in page
    assert "converged 1.250 s after the final heal" in page
    assert page.count("<svg") == 1 and "</svg>" in page
    # Both exclusive copies are drawn and flagged as alive together.
    assert "exclusive copies" in page
    assert page.count("overlaps another copy") == 2
    # The torn last line of the history is skipped and said so.
    assert "history.jsonl: 1 unreadable line(s) skipped" in page
    # Logs are linked relatively, with their size.
    assert 'href="logs/apiserver-host-2.log"' in page and "2.9 KiB" in page


def test_report_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    _write_run(tmp_path, _invalid_verdicts())

    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "url(" not in page and "@import" not in page


def test_history_text_is_escaped_everywhere(tmp_path: Path) -> None:
    _write_run(tmp_path, _invalid_verdicts())

    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page


def test_run_with_only_a_schedule_still_renders_and_says_not_recorded(tmp_path: Path) -> None:
    (tmp_path / "schedule.json").write_text(json.dumps({**_schedule(), "command": None}))

    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert "not recorded" in page
    assert "Verdicts not recorded" in page and "Logs not recorded" in page
    assert ">PASS<" not in page
    assert "keel verify --seed 4242 --duration 20" in page  # the replay command, rebuilt


def test_empty_run_directory_still_renders(tmp_path: Path) -> None:
    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert "Schedule" in page and "not recorded" in page


def test_valid_run_passes(tmp_path: Path) -> None:
    verdicts = [dict(v, valid=True, counterexample=[]) for v in _invalid_verdicts()]
    _write_run(tmp_path, verdicts)

    page = write_report(tmp_path).read_text(encoding="utf-8")

    assert ">PASS<" in page and ">FAIL<" not in page
    assert "Violations" not in page


def test_a_large_history_makes_a_page_of_bounded_size() -> None:
    history = [
        {
            "workload": "register" if i % 2 else "store-register",
            "process": i % 20,
            "type": ("ok", "fail", "info", "invoke")[i // 2 % 4],
            "f": "write",
            "key": f"k{i % 8}",
            "value": i,
            "time": _at(i / 1000),
        }
        for i in range(100_000)
    ]

    page = render_report(_schedule(), history, _invalid_verdicts(), _probes(), [])

    assert len(page) < 200_000
    for workload in ("register", "store-register"):
        for outcome in ("ok", "fail", "info"):
            assert f"<title>{workload}: 12500 {outcome}</title>" in page
