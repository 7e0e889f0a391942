"""The dashboard's first paint in headless Chromium, with 5,000 nodes and 50,000 instances in
the store, against a same-run baseline (an empty store); `--screenshots DIR` instead takes a
picture of every page of a fresh `keel up` running examples/hello.yaml.

    python benchmarks/ui.py [--nodes 5000 --instances 50000] [--quick]
    python benchmarks/ui.py --screenshots docs/screenshots

First paint: from the start of the page load until its table shows its first rows (measured
in the page, performance.now()); all loaded: until its count says every object arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
# the servers this starts (`python -m keel ...`) run this checkout's Keel, too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
)

from _common import ApiServer  # noqa: E402
from support.browser import chromium, missing  # noqa: E402

from keel.api.registry import BY_KIND  # noqa: E402
from keel.api.resources import (  # noqa: E402
    Cluster,
    Condition,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    PortStatus,
    ResourceList,
)
from keel.api.storage import encode, to_stored  # noqa: E402
from keel.store import Op, open_store  # noqa: E402

NOW = "2026-01-01T00:00:00Z"
PAGES = {  # page -> (table, what its count says)
    "overview": ("nodes", "nodes"),
    "instances": ("instances", "instances"),
}


def objects(nodes: int, instances: int) -> list[tuple[bytes, bytes]]:
    """Keys and stored values of clusters, nodes (one in 50 NotReady, one in 40 cordoned)
    and instances spread over them."""
    clusters = max(1, nodes // 500)
    out: list[tuple[bytes, bytes]] = []

    def meta(name: str, namespace: str = "", **kw: Any) -> ObjectMeta:
        return ObjectMeta(
            name=name, namespace=namespace, uid=str(uuid.uuid4()), creation_timestamp=NOW, **kw
        )

    def put(kind: str, obj: Any) -> None:
        info = BY_KIND[kind]
        out.append((info.key(obj.metadata.namespace, obj.metadata.name), encode(to_stored(obj))))

    for c in range(clusters):
        put("Cluster", Cluster(metadata=meta(f"cluster-{c}")))
    for n in range(nodes):
        ready = "False" if n % 50 == 7 else "True"
        put(
            "Node",
            Node(
                metadata=meta(f"node-{n:05d}"),
                spec=NodeSpec(
                    cluster=f"cluster-{n % clusters}",
                    capacity=ResourceList(cpu="16", memory="64Gi"),
                    unschedulable=n % 40 == 3,
                ),
                status=NodeStatus(
                    conditions=[Condition(type="Ready", status=ready, last_transition_time=NOW)]
                ),
            ),
        )
    for i in range(instances):
        put(
            "Instance",
            Instance(
                metadata=meta(f"app-{i // 100:04d}-{i % 100:02d}", "default", labels={"app": "a"}),
                spec=InstanceSpec(
                    command=["sleep", "infinity"],
                    node_name=f"node-{i % nodes:05d}",
                    resources=ResourceList(cpu="100m", memory="128Mi"),
                ),
                status=InstanceStatus(
                    phase="Running",
                    conditions=[Condition(type="Ready", status="True", last_transition_time=NOW)],
                    ports=[PortStatus(name="http", port=20000 + i % 40000)],
                    started_at=NOW,
                ),
            ),
        )
    return out


async def fill(db: Path, nodes: int, instances: int) -> None:
    store = await open_store(f"sqlite:///{db}")
    try:
        items = objects(nodes, instances)
        batches = [items[i : i + 128] for i in range(0, len(items), 128)]  # a txn's limit
        for batch in batches:
            await store.txn([], [Op.put(k, v) for k, v in batch], [])
    finally:
        await store.close()


def prepare(state: Path, nodes: int, instances: int) -> None:
    """A state dir whose store holds the objects (before any browser runs: Playwright's
    synchronous API keeps an event loop of its own on this thread)."""
    state.mkdir(parents=True)
    if nodes or instances:
        asyncio.run(fill(state / "keel.db", nodes, instances))


FIRST_ROWS = """([table, n]) => {
  const rows = document.querySelectorAll(`[data-table="${table}"] .vt-row`).length;
  const count = document.querySelector(`[data-table="${table}"] .vt-count`);
  return (n === 0 ? count && count.textContent.startsWith("0 ") : rows > 0) && performance.now();
}"""
ALL_LOADED = """([table, n]) => {
  const count = document.querySelector(`[data-table="${table}"] .vt-count`);
  return count && count.textContent.startsWith(n.toLocaleString("en") + " ") && performance.now();
}"""


def measure(context: Any, server: ApiServer, counts: dict[str, int], runs: int) -> dict[str, Any]:
    """page -> (best first paint ms, best all-loaded ms) over `runs` fresh loads."""
    page = context.new_page()
    page.goto(f"{server.url}/ui/")
    page.fill("#token", server.token)
    page.click("#login-form button")
    page.locator("#who").filter(has_text="(").wait_for()
    results: dict[str, Any] = {}
    for name, (table, _) in PAGES.items():
        n = counts[table]
        first, loaded = [], []
        for _ in range(runs):
            page.goto("about:blank")
            page.goto(f"{server.url}/ui/#/{name}")
            first.append(
                page.wait_for_function(FIRST_ROWS, arg=[table, n], polling="raf").json_value()
            )
            loaded.append(
                page.wait_for_function(
                    ALL_LOADED, arg=[table, n], polling="raf", timeout=120_000
                ).json_value()
            )
        results[name] = (min(first), min(loaded))
    # Virtual scrolling: jump to the end of the instances and time the frame that draws it.
    table = '[data-table="instances"] .vt-scroll'
    scroll_ms = page.evaluate(
        """(sel) => new Promise((done) => {
            const el = document.querySelector(sel);
            const t0 = performance.now();
            el.scrollTop = el.scrollHeight;
            requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
        })""",
        table,
    )
    drawn = page.locator('[data-table="instances"] .vt-row').count()
    results["scroll"] = (scroll_ms, drawn)
    page.close()
    return results


def benchmark(args: argparse.Namespace) -> int:
    cases = [
        ("empty store", 0, 0),
        (f"{args.nodes:,} nodes, {args.instances:,} instances", args.nodes, args.instances),
    ]
    with tempfile.TemporaryDirectory(prefix="keel-bench-ui-") as tmp:
        states = []
        for i, (label, nodes, instances) in enumerate(cases):
            started = time.perf_counter()
            prepare(Path(tmp) / f"case{i}", nodes, instances)
            states.append(Path(tmp) / f"case{i}")
            print(f"{label}: store filled in {time.perf_counter() - started:.1f}s", flush=True)
        rows = []
        with chromium() as context:
            for (label, nodes, instances), state in zip(cases, states, strict=True):
                server = ApiServer(state)
                try:
                    counts = {"nodes": nodes, "instances": instances}
                    rows.append((label, measure(context, server, counts, args.runs)))
                finally:
                    server.stop()
        print(f"\nfirst paint (best of {args.runs}; ms from the start of the page load)")
        print(f"{'store':<36} {'page':<10} {'first rows':>11} {'all loaded':>11}")
        for label, results in rows:
            for page, (first, loaded) in results.items():
                if page != "scroll":
                    print(f"{label:<36} {page:<10} {first:>9.0f}ms {loaded:>9.0f}ms")
        print("\nscrolling the instances to the end (until the frame after it is drawn)")
        for label, results in rows:
            scroll_ms, drawn = results["scroll"]
            print(f"{label:<36} {scroll_ms:>6.0f}ms, {drawn} rows in the page")
        worst = max(v[0] for _, r in rows for k, v in r.items() if k != "scroll")
        print(f"\nworst first paint: {worst:.0f}ms (goal: under 1000ms)")
    return 0


def screenshots(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keel-shots-") as tmp:
        log = Path(tmp) / "up.log"
        with log.open("wb") as sink:
            up = subprocess.Popen(
                [sys.executable, "-m", "keel", "up", "--listen", "127.0.0.1:0",
                 "--apply", str(ROOT / "examples" / "hello.yaml")],
                cwd=tmp, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "is ready at" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            link = re.search(r"dashboard (\S+)", log.read_text())
            if link is None:
                raise SystemExit(f"keel up printed no dashboard link:\n{log.read_text()}")
            with chromium() as context:
                page = context.new_page()
                page.goto(link.group(1))
                page.locator("#who").filter(has_text="(").wait_for()
                for name in ("overview", "deployments", "instances", "services", "leases",
                             "boundary", "events"):  # fmt: skip
                    page.goto(f"{link.group(1).split('#')[0]}#/{name}")
                    page.wait_for_timeout(2500)  # the live stream's first pushes and a redraw
                    page.screenshot(path=str(out / f"{name}.png"))
                    print(out / f"{name}.png")
        finally:
            up.send_signal(2)
            try:
                up.wait(timeout=40)
            except subprocess.TimeoutExpired:
                up.kill()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=50000)
    parser.add_argument("--runs", type=int, default=3, help="page loads per page (best counts)")
    parser.add_argument("--quick", action="store_true", help="200 nodes, 2,000 instances, 1 run")
    parser.add_argument("--screenshots", type=Path, default=None, metavar="DIR")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"benchmarks/ui.py: {reason}", file=sys.stderr)
        return 1
    if args.screenshots:
        return screenshots(args.screenshots)
    if args.quick:
        args.nodes, args.instances, args.runs = 200, 2000, 1
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
