"""The dashboard across an API server restart, in headless Chromium: its session (signed, not
stored) stays valid, and its watches resume from the last resourceVersion they saw, so an
object created while the server was down and one created after both appear, and one deleted
meanwhile goes."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import V1, ApiServer
from support.browser import chromium

pytestmark = pytest.mark.usefixtures("browser_required")
UI_TIMEOUT = 30_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ApiServer]:
    api = ApiServer(tmp_path / "apiserver").start()
    try:
        yield api
    finally:
        api.stop(signal.SIGKILL)


def node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"cluster": "c1", "capacity": {"cpu": "2", "memory": "4Gi"}},
    }


def test_watches_resume_after_the_api_server_restarts(server: ApiServer) -> None:
    admin = server.http("admin")
    assert admin.post(f"{V1}/nodes", node("before")).status == 201
    assert admin.post(f"{V1}/nodes", node("doomed")).status == 201
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.url}/ui/")
        page.fill("#token", server.token("viewer"))
        page.click("#login-form button")
        rows = page.locator('[data-table="nodes"] .vt-row')
        rows.filter(has_text="before").wait_for(timeout=UI_TIMEOUT)
        page.locator("#live.on").wait_for(timeout=UI_TIMEOUT)

        server.stop()
        page.locator("#live.off").wait_for(timeout=UI_TIMEOUT)  # it says it is reconnecting
        server.start()
        admin = server.http("admin")
        assert admin.post(f"{V1}/nodes", node("after")).status == 201
        assert admin.delete(f"{V1}/nodes/doomed").status == 200

        rows.filter(has_text="after").wait_for(timeout=UI_TIMEOUT)
        rows.filter(has_text="doomed").wait_for(state="detached", timeout=UI_TIMEOUT)
        page.locator("#live.on").wait_for(timeout=UI_TIMEOUT)
        assert page.locator("#login").is_hidden(), "the session outlived the restart"
        assert sorted(r.split("\n")[0] for r in rows.all_inner_texts()) == ["after", "before"]
