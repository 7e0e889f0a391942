"""The `keel` command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def keel(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=check,
        timeout=60,
    )


def test_keel_help_lists_the_commands() -> None:
    out = keel("--help").stdout
    assert "store" in out
    assert "dev" in out


def test_store_commands_write_read_and_show_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    first = keel("store", "--store", url, "put", "/a", "one").stdout
    assert first.strip() == "revision 2"
    keel("store", "--store", url, "put", "/a", "two")
    got = keel("store", "--store", url, "get", "/a").stdout
    assert "'two'" in got
    assert "version=2" in got
    old = keel("store", "--store", url, "range", "/", "--revision", "2").stdout
    assert "'one'" in old
    assert "-- 1 keys at revision 3" in old
    status = keel("store", "--store", url, "status").stdout
    assert "revision:         3" in status


def test_store_errors_are_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    missing = keel("store", "--store", url, "get", "/nope", check=False)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    future = keel("store", "--store", url, "range", "/", "--revision", "99", check=False)
    assert future.returncode == 1
    assert future.stderr.startswith("keel store:")
    assert "future" in future.stderr
    bad = keel("store", "--store", "nosuch://x", "status", check=False)
    assert bad.returncode == 1
    assert "unknown scheme" in bad.stderr


@pytest.mark.timeout(60)
def test_store_demo_shows_a_lease_expiring(tmp_path: Path) -> None:
    out = keel("store", "demo", cwd=tmp_path).stdout
    assert (tmp_path / ".keel" / "keel.db").exists()
    assert "CAS with a stale mod_revision -> succeeded=False" in out
    assert "watch: DELETE /demo/leader" in out
