"""`keel verify` refuses bad input with the field and what was expected, and
`keel verify check` judges history files from anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_options_are_refused_naming_each_one(tmp_path: Path) -> None:
    result = keel(
        "verify",
        "--etcd-members",
        "4",
        "--faults",
        "flood",
        "--broken",
        "nothing",
        "--workloads",
        "register,dance",
        "--duration",
        "0",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.returncode == 2
    for expected in (
        "--etcd-members: expected 1, 3 or 5, got 4",
        "--faults: unknown fault 'flood'",
        "--broken: expected one of",
        "--workloads: unknown workload 'dance'",
        "--duration: expected a positive number of seconds, got 0",
    ):
        assert expected in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is built for a refused run"


def write(path: Path, events: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def op(process: int, type_: str, f: str, value: object, time: int) -> dict[str, object]:
    return {"process": process, "type": type_, "f": f, "key": "k", "value": value, "time": time}


def test_check_accepts_a_linearizable_register_history(tmp_path: Path) -> None:
    history = write(
        tmp_path / "ok.jsonl",
        [
            op(1, "invoke", "write", 1, 1),
            op(1, "ok", "write", 1, 2),
            op(2, "invoke", "read", None, 3),
            op(2, "ok", "read", 1, 4),
        ],
    )
    result = keel("verify", "check", "--model", "register", str(history))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS")


def test_check_rejects_a_stale_read_and_prints_the_counterexample(tmp_path: Path) -> None:
    history = write(
        tmp_path / "stale.jsonl",
        [
            op(1, "invoke", "write", 1, 1),
            op(1, "ok", "write", 1, 2),
            op(1, "invoke", "write", 2, 3),
            op(1, "ok", "write", 2, 4),
            op(2, "invoke", "read", None, 5),
            op(2, "ok", "read", 1, 6),
        ],
    )
    result = keel("verify", "check", "--model", "register", str(history))
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL")
    assert '"value": 1' in result.stdout  # the stale read is shown


def test_check_reports_a_malformed_file_and_an_unknown_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"process": 1}\nnot json\n')
    result = keel("verify", "check", "--model", "register", str(bad))
    assert result.returncode == 2
    assert "bad.jsonl" in result.stderr
    result = keel("verify", "check", "--model", "bank", str(bad))
    assert result.returncode == 2
    assert "--model: expected one of register" in result.stderr
