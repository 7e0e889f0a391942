"""The dashboard in a real headless Chromium against a real `keel up`: logging in (a pasted
token, the one-time link), a viewer refused when it acts, a node going NotReady and its
instances moving, a rollout followed to completion, and a new lease holder with a higher
fencing token after the controller-manager leader stops."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import V1, ApiServer, KeelProcess, wait_for
from support.browser import chromium

pytestmark = pytest.mark.usefixtures("browser_required")

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.yaml"
UI_TIMEOUT = 30_000  # ms: what a user would wait for the page to show a change


def children_of(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: PID -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def child_pid(up: ApiServer, text: str) -> int:
    return wait_for(
        f"a child of keel up running {text!r}",
        lambda: next((p for p, line in children_of(up.pid).items() if text in line), None),
    )


class Platform:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.up = ApiServer(
            directory / ".keel",
            "--clusters", "2", "--nodes-per-cluster", "2",
            subcommand="up", cwd=directory,
        )  # fmt: skip
        self.paused: list[int] = []

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        answer = self.up.http("admin").request(method, path, body, timeout=5, **kw)
        assert answer.status < 400, (answer.status, answer.body[:300])
        return answer.json

    def link(self) -> str:
        found = wait_for("the dashboard link", lambda: re.search(r"dashboard (\S+)", self.up.log()))
        return found.group(1)

    def ready_hello(self) -> dict[str, str]:
        """name -> node of the Running and Ready instances of hello."""
        listed = self.api("GET", f"{V1}/namespaces/default/instances?labelSelector=app%3Dhello")
        ready = {}
        for inst in listed["items"]:
            status = inst.get("status", {})
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            if status.get("phase") == "Running" and conditions.get("Ready") == "True":
                ready[inst["metadata"]["name"]] = inst["spec"]["nodeName"]
        return ready

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.paused.append(pid)

    def resume_all(self) -> None:
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused.clear()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    plat = Platform(tmp_path_factory.mktemp("ui"))
    plat.up.start()
    applied = subprocess.run(
        [sys.executable, "-m", "keel", "apply", "-f", str(HELLO)],
        cwd=plat.dir, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    try:
        yield plat
    finally:
        plat.resume_all()
        children = children_of(plat.up.pid)
        plat.up.stop(signal.SIGINT, timeout=40)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as context:
        yield context


@pytest.fixture
def tabs(browser: Any) -> Iterator[list[Any]]:
    """The tabs a test opens, closed after it (their streams hold the browser's six
    connections to the server)."""
    opened: list[Any] = []
    yield opened
    for page in opened:
        page.close()


def logged_in(tabs: list[Any], browser: Any, platform: Platform, token: str | None = None) -> Any:
    """A new tab logged in with `token` typed into the login page (admin's by default)."""
    page = new_tab(tabs, browser)
    page.goto(f"{platform.up.url}/ui/")
    page.fill("#token", token or platform.up.token("admin"))
    page.click("#login-form button")
    page.locator("#who").filter(has_text="(").wait_for(timeout=UI_TIMEOUT)
    return page


def new_tab(tabs: list[Any], browser: Any) -> Any:
    page = browser.new_page()
    tabs.append(page)
    return page


def rows(page: Any, table: str) -> list[list[str]]:
    """The cells of each drawn row of a virtual table."""
    texts = page.locator(f'[data-table="{table}"] .vt-row').all_inner_texts()
    return [re.split(r"[\t\n]", text) for text in texts]


def test_the_one_time_link_logs_in_once(platform: Platform, browser: Any, tabs: list[Any]) -> None:
    link = platform.link()
    page = new_tab(tabs, browser)
    page.goto(link)
    page.locator("#who").filter(has_text="admin (admin)").wait_for(timeout=UI_TIMEOUT)
    assert "login=" not in page.url, "the code is dropped from the address bar"
    page.locator('[data-card="nodes"] .big').filter(has_text="4").wait_for(timeout=UI_TIMEOUT)

    again = new_tab(tabs, browser)
    again.goto(link)
    error = again.locator("#login-error")
    error.filter(has_text="used already").wait_for(timeout=UI_TIMEOUT)
    assert again.locator("#login").is_visible()


def test_a_viewer_sees_everything_but_its_actions_are_refused(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    wait_for("3 ready hello instances", lambda: len(platform.ready_hello()) == 3, timeout=60)
    page = logged_in(tabs, browser, platform, platform.up.token("viewer"))
    assert "read-only" in page.inner_text("#who")
    page.goto(f"{platform.up.url}/ui/#/deployments")
    page.locator("[data-deployment='default/hello']").wait_for(timeout=UI_TIMEOUT)
    page.click("button[data-act='scale']")
    page.fill("#confirm input[name='replicas']", "5")
    page.click("#confirm-ok")
    refused = page.locator(".toast.bad")
    refused.wait_for(timeout=UI_TIMEOUT)
    assert "Refused" in refused.inner_text()
    assert "may only get, list and watch" in refused.inner_text()
    deployment = platform.api("GET", f"{V1}/namespaces/default/deployments/hello")
    assert deployment["spec"]["replicas"] == 3


def test_an_instances_log_tail_and_events_filtered_by_type(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    ready = wait_for("3 ready instances", lambda: len(h := platform.ready_hello()) == 3 and h)
    name = sorted(ready)[0]
    page = logged_in(tabs, browser, platform)
    page.goto(f"{platform.up.url}/ui/#/instances")
    page.fill("#filter", name)
    page.locator(f'.vt-row[data-key="default/{name}"]').click()
    # python's http.server logs each health check it answers
    page.locator("#log").filter(has_text="GET / HTTP/1.").wait_for(timeout=UI_TIMEOUT)

    page.goto(f"{platform.up.url}/ui/#/events")
    page.locator('[data-table="events"] .vt-row').first.wait_for(timeout=UI_TIMEOUT)
    page.select_option("#kind", "Instance")
    page.fill("#filter", name)
    shown = wait_for(
        "only the instance's events, its start among them",
        lambda: (
            (r := rows(page, "events"))
            and all(f"Instance/default/{name}" == e[2] for e in r)
            and any(e[3] == "Started" for e in r)
            and r
        ),
    )
    assert all(e[1] in ("Normal", "Warning") for e in shown)


def test_a_node_going_not_ready_and_its_instances_moving_are_seen_live(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    placed = wait_for(
        "3 ready hello instances", lambda: len(h := platform.ready_hello()) == 3 and h
    )
    victim_instance, node = sorted(placed.items())[0]
    page = logged_in(tabs, browser, platform)
    page.goto(f"{platform.up.url}/ui/#/overview")
    row = page.locator(f'[data-table="nodes"] .vt-row[data-key="{node}"]')
    row.filter(has_text="Ready").wait_for(timeout=UI_TIMEOUT)

    platform.pause(child_pid(platform.up, f"agent --node {node} "))  # it stops answering
    row.filter(has_text="NotReady").wait_for(timeout=UI_TIMEOUT)
    assert rows(page, "nodes")[0][0] == node, "problems come first"
    page.locator('[data-card="not ready"] .big').filter(has_text="1").wait_for(timeout=UI_TIMEOUT)

    page.goto(f"{platform.up.url}/ui/#/instances")

    def moved() -> bool:
        shown = rows(page, "instances")
        running = [r for r in shown if len(r) > 3 and r[1] == "Running" and r[2] == "yes"]
        return len(running) == 3 and all(r[3] != node for r in running)

    wait_for(f"the instances page to show 3 ready instances off {node}", moved, timeout=60)
    shown = {r[0]: r for r in rows(page, "instances")}
    assert shown[f"default/{victim_instance}"][3] != node, shown  # replaced under its name
    platform.resume_all()
    page.goto(f"{platform.up.url}/ui/#/overview")
    row.filter(has_text="Ready").wait_for(timeout=UI_TIMEOUT)


def test_a_rollout_is_followed_to_completion(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    wait_for("3 ready hello instances", lambda: len(platform.ready_hello()) == 3, timeout=60)
    page = logged_in(tabs, browser, platform)
    page.goto(f"{platform.up.url}/ui/#/deployments")
    page.locator("[data-deployment='default/hello']").wait_for(timeout=UI_TIMEOUT)
    revisions = len(platform.api("GET", f"{V1}/namespaces/default/revisions")["items"])
    platform.api(
        "PATCH",
        f"{V1}/namespaces/default/deployments/hello",
        {"spec": {"template": {"spec": {"env": {"RELEASE": "2"}}}}},
        content_type="application/merge-patch+json",
    )
    new = page.locator(f"tr[data-revision='{revisions + 1}']")
    new.wait_for(timeout=UI_TIMEOUT)
    page.locator(".phase[data-phase='Progressing']").wait_for(timeout=UI_TIMEOUT)
    new.filter(has_text="3/3 ready").filter(has_text="update, current").wait_for(timeout=90_000)
    page.locator(".phase[data-phase='Complete']").wait_for(timeout=90_000)

    # An admin's action goes through the confirmation and reaches the API.
    page.click("button[data-act='pause']")
    page.click("#confirm-ok")
    page.locator(".toast.ok").filter(has_text="paused").wait_for(timeout=UI_TIMEOUT)
    assert platform.api("GET", f"{V1}/namespaces/default/deployments/hello")["spec"]["paused"]
    page.click("button[data-act='resume']")
    page.click("#confirm-ok")
    page.locator(".toast.ok").filter(has_text="resumed").wait_for(timeout=UI_TIMEOUT)
    assert not platform.api("GET", f"{V1}/namespaces/default/deployments/hello")["spec"]["paused"]


def test_a_new_leader_and_fencing_token_show_after_the_leader_stops(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    page = logged_in(tabs, browser, platform)
    page.goto(f"{platform.up.url}/ui/#/leases")
    row = page.locator('[data-table="leases"] .vt-row[data-key="keel-system/controller-manager"]')
    row.filter(has_text="keel-up").wait_for(timeout=UI_TIMEOUT)
    before = int(re.split(r"[\t\n]", row.inner_text())[2])
    standby = KeelProcess(
        "controller-manager",
        "--kubeconfig", str(platform.up.kubeconfig_for("controller")),
        "--identity", "standby", "--controllers", "deployment",
        log_dir=platform.up.state_dir, name="standby",
    ).start()  # fmt: skip
    try:
        platform.pause(child_pid(platform.up, "controller-manager --kubeconfig"))
        row.filter(has_text="standby").wait_for(timeout=UI_TIMEOUT)
        after = int(re.split(r"[\t\n]", row.inner_text())[2])
        assert after > before, "a new holder has a higher fencing token"
        history = page.locator('tr[data-lease="keel-system/controller-manager"]')
        history.filter(has_text="standby").wait_for(timeout=UI_TIMEOUT)
        assert "keel-up" in history.inner_text()
    finally:
        platform.resume_all()
        standby.stop()


def test_a_canary_waiting_at_its_pause_is_promoted_from_the_dashboard(
    platform: Platform, browser: Any, tabs: list[Any]
) -> None:
    command = ["python3", "-c", "import time; time.sleep(1e6)"]
    body = {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": "canary-ui", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "bakeSeconds": 1,
            "strategy": {
                "type": "Canary",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                "canary": {"steps": [{"setWeight": 50}, {"pause": {}}]},
            },
            "template": {
                "metadata": {"labels": {"app": "canary-ui"}},
                "spec": {"command": command, "terminationGracePeriodSeconds": 1},
            },
        },
    }
    path = f"{V1}/namespaces/default/deployments"
    platform.api("POST", path, body)

    def status() -> dict[str, Any]:
        found: dict[str, Any] = platform.api("GET", f"{path}/canary-ui").get("status", {})
        return found

    wait_for("canary-ui stable", lambda: status().get("stableRevision", "") != "", timeout=60)
    platform.api(
        "PATCH",
        f"{path}/canary-ui",
        {"spec": {"template": {"spec": {"env": {"RELEASE": "2"}}}}},
        content_type="application/merge-patch+json",
    )
    wait_for("canary-ui at its pause", lambda: status().get("currentStep") == 1, timeout=60)
    page = logged_in(tabs, browser, platform)
    page.goto(f"{platform.up.url}/ui/#/deployments")
    page.get_by_text("default/canary-ui", exact=True).first.click()
    page.locator("[data-deployment='default/canary-ui']").wait_for(timeout=UI_TIMEOUT)
    page.locator("[data-current-step='1'] .step.current").filter(
        has_text="pause (promote)"
    ).wait_for(timeout=UI_TIMEOUT)
    page.click("button[data-act='promote']")
    page.click("#confirm-ok")
    page.locator(".toast.ok").filter(has_text="promoted").wait_for(timeout=UI_TIMEOUT)
    page.locator(".phase[data-phase='Complete']").wait_for(timeout=60_000)
    assert status()["phase"] == "Complete"
