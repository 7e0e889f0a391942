"""Failover: how long after a fault the platform runs a replacement, with DEFAULT settings.

Node failover: a platform of real processes (`keel apiserver` on sqlite, a controller-manager,
the scheduler and three `keel agent`s in one cluster, each agent in a network namespace of its
own so that it can be cut off); a Deployment of HTTP servers (health-checked every second). One
agent holding a replica is killed (SIGKILL), paused (SIGSTOP) or cut off from the API server
(tc drops its packets); the figure is the time from the fault until the Deployment again has
every replica Running and Ready on other nodes. Ordinary and `exclusive` instances are measured
separately: an exclusive one moves only once its old node is certainly fenced.
Baseline in the same run: the time from deleting one Instance by hand until its replacement is
Running and Ready (scheduling, start and first health check, without any detection).

Cluster failover (Immediate and Graceful, against a node failover baseline) and registration
expiry (SIGKILL of `keel register` until its address leaves Endpoints, against a SIGINT
deregistration baseline) are measured by benchmarks/cluster_failover.py and
benchmarks/registration.py, which build platforms of their own; they run here as sections.
Each section is a function in SECTIONS; add one there.

    python benchmarks/failover.py [--trials N] [--quick] [--sections node,cluster,registration]
                                  [--faults kill,pause,partition]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.api.auth import TokenFile
from keel.cli._state_dir import write_kubeconfig
from keel.verify.hosts import Fabric, Host, new_prefix

V1 = "/apis/keel.dev/v1"
CLUSTER = "cluster-1"
NODES = ("node-1", "node-2", "node-3")
REPLICAS = 2
CONTROLLERS = "namespace,gc,deployment,endpoints,nodelifecycle"
FAULTS = ("kill", "pause", "partition")
SETTLE_TIMEOUT = 90.0
FAILOVER_TIMEOUT = 60.0


def deployment(name: str, *, exclusive: bool) -> dict[str, Any]:
    """`REPLICAS` HTTP servers, ready once they answer (checked every second)."""
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": REPLICAS,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "command": ["sh", "-c", 'exec python3 -m http.server "$PORT" --bind 127.0.0.1'],
                    "exclusive": exclusive,
                    "resources": {"cpu": "100m", "memory": "64Mi"},
                    "ports": [{"name": "http", "port": 0}],
                    "healthCheck": {
                        "type": "http",
                        "port": "http",
                        "path": "/",
                        "periodSeconds": 1,
                    },
                    "restartPolicy": "Always",
                    "terminationGracePeriodSeconds": 2,
                },
            },
        },
    }


@dataclass
class Proc:
    """A `python -m keel ...` child, its output in `log`; signalled only by its own pid."""

    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )
        return self

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.popen = None

    def kill(self) -> None:
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait()
            self.popen = None


@dataclass
class Platform:
    """The whole platform as real processes, agents inside network namespaces (`fabric`)."""

    work: Path
    fabric: Fabric
    url: str = ""
    admin: str = ""
    procs: list[Proc] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)

    @classmethod
    @contextmanager
    def running(cls, work: Path) -> Iterator[Platform]:
        fabric = Fabric.create(new_prefix(), len(NODES), run_dir=work)
        plat = cls(work, fabric)
        try:
            plat._start()
            yield plat
        finally:
            for proc in [*plat.agents.values(), *reversed(plat.procs)]:
                proc.stop()
            fabric.destroy()

    def keel(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "keel", *args]

    def _start(self) -> None:
        tokens = self.work / "tokens.csv"
        self.admin = TokenFile.create(tokens)
        roles = {"controller": "controller", "scheduler": "scheduler"}
        roles |= {node: f"node:{node}" for node in NODES}
        issued = {name: TokenFile.append(tokens, name, role) for name, role in roles.items()}
        api = Proc(
            self.keel(
                "apiserver", "--state-dir", str(self.work / "api"), "--token-file", str(tokens),
                "--listen", f"{self.fabric.gateway}:0", "--insecure",
            ),
            self.work / "apiserver.log",
        ).start()  # fmt: skip
        self.procs.append(api)
        kubeconfig = self.work / "api" / "kubeconfig"
        wait("the API server", lambda: kubeconfig.exists() and self._readyz(kubeconfig), 60)
        for name, token in issued.items():
            write_kubeconfig(self.work / f"kubeconfig-{name}", self.url, token)
        self.procs.append(
            Proc(
                self.keel(
                    "controller-manager", "--kubeconfig", str(self.work / "kubeconfig-controller"),
                    "--identity", "bench", "--controllers", CONTROLLERS,
                ),
                self.work / "controller-manager.log",
            ).start()
        )  # fmt: skip
        self.procs.append(
            Proc(
                self.keel(
                    "scheduler", "--kubeconfig", str(self.work / "kubeconfig-scheduler"),
                    "--identity", "bench",
                ),
                self.work / "scheduler.log",
            ).start()
        )  # fmt: skip
        self.request("POST", f"{V1}/clusters", {"metadata": {"name": CLUSTER}})
        for node, host in zip(NODES, self.fabric.hosts, strict=True):
            self.hosts[node] = host
            self.start_agent(node)
        wait("every node Ready", lambda: len(self.ready_nodes()) == len(NODES), 60)

    def _readyz(self, kubeconfig: Path) -> bool:
        import yaml

        self.url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def start_agent(self, node: str) -> None:
        """`keel agent` with its defaults, inside `node`'s namespace."""
        argv = self.keel(
            "agent", "--node", node, "--cluster", CLUSTER,
            "--kubeconfig", str(self.work / f"kubeconfig-{node}"),
            "--state-dir", str(self.work / "agents" / node),
            "--host-ip", self.hosts[node].address,
        )  # fmt: skip
        proc = Proc(self.hosts[node].command(argv), self.work / f"agent-{node}.log").start()
        assert proc.popen is not None
        self.fabric.record_pid(proc.popen.pid)
        self.agents[node] = proc

    # -- the API, as a user sees it

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 409):
                return None
            raise

    def ready_nodes(self) -> list[str]:
        listed = self.request("GET", f"{V1}/nodes")
        return [
            n["metadata"]["name"]
            for n in listed["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]

    def ready_instances(self, app: str) -> dict[str, str]:
        """Running and Ready Instances of `app` (`NAME/UID`: names are reused), with their
        nodes."""
        listed = self.request("GET", f"{V1}/namespaces/default/instances?labelSelector=app%3D{app}")
        ready = {}
        for inst in listed["items"]:
            status = inst.get("status", {})
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            if status.get("phase") == "Running" and conditions.get("Ready") == "True":
                meta = inst["metadata"]
                ready[f"{meta['name']}/{meta['uid']}"] = inst["spec"]["nodeName"]
        return ready


def wait(what: str, condition: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


# ------------------------------------------------------------------------------ node


def settle(plat: Platform, app: str) -> dict[str, str]:
    """Every node Ready and every replica Running and Ready; where they run."""
    wait("every node Ready", lambda: len(plat.ready_nodes()) == len(NODES), SETTLE_TIMEOUT)
    return wait(  # type: ignore[no-any-return]
        f"{REPLICAS} ready replicas of {app}",
        lambda: len(r := plat.ready_instances(app)) == REPLICAS and r,
        SETTLE_TIMEOUT,
    )


def inject(plat: Platform, fault: str, node: str) -> None:
    if fault == "kill":
        plat.agents[node].kill()
    elif fault == "pause":
        plat.agents[node].signal(signal.SIGSTOP)
    else:
        plat.fabric.isolate_from_runner(plat.hosts[node])


def heal(plat: Platform, fault: str, node: str) -> None:
    if fault == "kill":
        plat.start_agent(node)
    elif fault == "pause":
        plat.agents[node].signal(signal.SIGCONT)
    else:
        plat.fabric.heal()


def failover_once(plat: Platform, app: str, fault: str) -> float:
    """Seconds from `fault` on a node holding a replica until every replica again runs
    Ready elsewhere."""
    placed = settle(plat, app)
    victim = sorted(placed.values())[0]
    started = time.monotonic()
    inject(plat, fault, victim)
    try:
        wait(
            "the replicas Running and Ready on other nodes",
            lambda: len(r := plat.ready_instances(app)) == REPLICAS and victim not in r.values(),
            FAILOVER_TIMEOUT,
        )
        return time.monotonic() - started
    finally:
        heal(plat, fault, victim)


def replacement_once(plat: Platform, app: str) -> float:
    """The baseline: delete one Instance by hand; seconds until it is replaced and Ready."""
    placed = settle(plat, app)
    old = sorted(placed)[0]
    started = time.monotonic()
    plat.request("DELETE", f"{V1}/namespaces/default/instances/{old.split('/')[0]}")
    wait(
        "the replacement Running and Ready",
        lambda: len(r := plat.ready_instances(app)) == REPLICAS and old not in r,
        FAILOVER_TIMEOUT,
    )
    return time.monotonic() - started


def figures(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):5.2f} s  worst {max(samples):5.2f} s  "
        f"(n={len(samples)})"
    )


def node_failover(plat: Platform, trials: int, faults: tuple[str, ...] = FAULTS) -> list[str]:
    """Node failover, ordinary then exclusive instances, for every fault of `faults`."""
    lines = []
    for exclusive in (False, True):
        kind = "exclusive" if exclusive else "ordinary"
        app = f"bench-{kind}"
        plat.request(
            "POST", f"{V1}/namespaces/default/deployments", deployment(app, exclusive=exclusive)
        )
        baseline = [replacement_once(plat, app) for _ in range(max(1, min(trials, 3)))]
        base = statistics.median(baseline)
        lines.append(f"{kind:9} replacement of a deleted instance (baseline): {figures(baseline)}")
        print(lines[-1], flush=True)
        for fault in faults:
            samples = []
            for _ in range(trials):
                samples.append(failover_once(plat, app, fault))
                print(f"  {kind} {fault}: {samples[-1]:.2f} s", flush=True)
            lines.append(
                f"{kind:9} node failover after {fault:9}: {figures(samples)}  "
                f"({statistics.median(samples) / base:.1f}x the baseline)"
            )
            print(lines[-1], flush=True)
        plat.request("DELETE", f"{V1}/namespaces/default/deployments/{app}")
        wait("the deployment's instances gone", lambda: not plat.ready_instances(app), 60)  # noqa: B023
    return lines


def sibling(script: str, *args: str) -> Callable[[Platform, int], list[str]]:
    """A section measured by a sibling benchmark that builds its own platform (cluster
    failover needs two clusters; registration expiry, `keel register` processes): it runs as a
    subprocess and its summary lines are kept."""

    def section(plat: Platform, trials: int) -> list[str]:
        argv = [sys.executable, str(Path(__file__).with_name(script)), *args]
        argv += ["--quick"] if trials == 1 else ["--trials", str(trials)]
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        print(done.stdout, flush=True)
        return [line for line in done.stdout.splitlines() if ": median" in line or " s (" in line]

    return section


SECTIONS: dict[str, Callable[[Platform, int], list[str]]] = {
    "node": node_failover,
    "cluster": sibling("cluster_failover.py"),
    "registration": sibling("registration.py"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per fault (default 10)")
    parser.add_argument("--quick", action="store_true", help="one trial per fault (smoke run)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"node section, comma-separated: {', '.join(FAULTS)} (default all)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("failover benchmark: needs root (network namespaces for partitions)", file=sys.stderr)
        return 2
    trials = 1 if args.quick else args.trials
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    wrong = [f for f in faults if f not in FAULTS]
    if wrong or not faults:
        known = ", ".join(FAULTS)
        parser.error(f"--faults: unknown {', '.join(wrong) or '(none)'}; known: {known}")
    summary: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-failover-") as tmp:
        work = Path(tmp)
        with Platform.running(work) as plat:
            for section in chosen:
                if section == "node":
                    summary += node_failover(plat, trials, faults)
                else:
                    summary += SECTIONS[section](plat, trials)
    print("\nfailover figures (default settings, this machine, "
          f"{os.cpu_count()} cores):")  # fmt: skip
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
