"""What `keel up` says while it starts: where each component serves its metrics (recorded in
STATE/metrics-targets.json, a Prometheus file_sd target list) and what it is waiting for (the
leaders' leases, then every node Ready), one line per step (see `_progress`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from keel.cli._progress import Progress

__all__ = [
    "METRICS_TARGETS",
    "metrics_listens",
    "wait_until_ready",
    "with_metrics",
    "write_metrics_targets",
]

METRICS_TARGETS = "metrics-targets.json"
LEADERS = (("keel-system", "controller-manager"), ("keel-system", "scheduler"))
POLL = 0.25
GIVE_UP = 120.0  # seconds: then say so and go on (the platform keeps trying by itself)


def _previous_ports(state_dir: Path) -> dict[str, int]:
    """component name -> port, from the targets file of an earlier run."""
    try:
        groups = json.loads((state_dir / METRICS_TARGETS).read_text(encoding="utf-8"))
        return {
            g["labels"]["component"]: int(g["targets"][0].rsplit(":", 1)[1])
            for g in groups
            if g["labels"].get("component") and g["labels"]["component"] != "apiserver"
        }
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return {}


def metrics_listens(
    state_dir: Path, names: Sequence[str], host: str = "127.0.0.1"
) -> dict[str, str]:
    """A free loopback port for each component's /metrics: the port of the last run where it
    is still free (so a scrape config keeps working across restarts), a new one otherwise.
    All are held open together while choosing, so no two components get the same port."""
    previous = _previous_ports(state_dir)
    held: list[socket.socket] = []
    chosen: dict[str, str] = {}
    try:
        for name in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            try:
                sock.bind((host, previous.get(name, 0)))
            except OSError:
                sock.bind((host, 0))
            chosen[name] = f"{host}:{sock.getsockname()[1]}"
    finally:
        for sock in held:
            sock.close()
    return chosen


def with_metrics(items: Sequence[Any], listens: dict[str, str]) -> list[Any]:
    """`items` (keel up's Components) with `--metrics-listen` added to their commands."""
    return [
        replace(item, argv=(*item.argv, "--metrics-listen", listens[item.name]))
        if item.name in listens
        else item
        for item in items
    ]


def write_metrics_targets(state_dir: Path, listens: dict[str, str], api_url: str) -> Path:
    """STATE/metrics-targets.json in Prometheus' file_sd format; returns its path."""
    groups: list[dict[str, Any]] = []
    scheme, _, address = api_url.partition("://")
    groups.append(
        {
            "targets": [address.rstrip("/")],
            "labels": {"job": "keel-apiserver", "component": "apiserver", "__scheme__": scheme},
        }
    )
    for name, listen in listens.items():
        kind, _, node = name.partition("/")
        labels = {"job": f"keel-{kind}", "component": name}
        if node:
            labels["node"] = node
        groups.append({"targets": [listen], "labels": labels})
    path = state_dir / METRICS_TARGETS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


async def wait_until_ready(
    api: Any,
    nodes: Sequence[str],
    progress: Progress,
    logs: Path,
    started: float,
    *,
    give_up: float = GIVE_UP,
) -> bool:
    """Wait (reading the store, never writing) until the controller-manager and the
    scheduler hold their leases and every node is Ready, saying so step by step. After
    `give_up` seconds, say what is missing and return False (nothing is stopped)."""
    from keel.api.registry import BY_KIND

    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    lease_info, node_info = BY_KIND["Lease"], BY_KIND["Node"]
    progress.step("waiting for the controller-manager and the scheduler to take their leases")
    while True:
        missing = []
        for namespace, name in LEADERS:
            with contextlib.suppress(Exception):
                if await api.storage.read(lease_info, namespace, name) is not None:
                    continue
            missing.append(name)
        if not missing:
            break
        if loop.time() > deadline:
            progress.done(f"{' and '.join(missing)} not leading yet; see the logs in {logs}")
            return False
        progress.update(f"waiting for {' and '.join(missing)} to take a lease (logs in {logs})")
        await asyncio.sleep(POLL)
    progress.done("controller-manager and scheduler are leading")
    if nodes:
        total = len(nodes)
        progress.step(f"waiting for {total} node(s) Ready (0/{total})")
        while True:
            ready = []
            for name in nodes:
                with contextlib.suppress(Exception):
                    node = await api.storage.read(node_info, "", name)
                    if node is not None and _ready(node):
                        ready.append(name)
            if len(ready) == total:
                break
            waiting = [n for n in nodes if n not in ready]
            shown = ", ".join(waiting[:3]) + (", ..." if len(waiting) > 3 else "")
            if loop.time() > deadline:
                progress.done(
                    f"{len(ready)}/{total} node(s) Ready; not yet: {shown} (see the agents' "
                    f"logs in {logs}); going on"
                )
                return False
            progress.update(
                f"waiting for {total} node(s) Ready ({len(ready)}/{total}; not yet: {shown})"
            )
            await asyncio.sleep(POLL)
        progress.done(f"{total}/{total} node(s) Ready")
    progress.done(f"ready in {loop.time() - started:.1f} s")
    return True
