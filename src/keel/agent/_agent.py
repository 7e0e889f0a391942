"""The node agent's asyncio shell: registers the Node, holds and renews the node lease,
watches the Instances bound here, and executes what `plan` decides (start, stop, probe,
report a status transition) while usage and events go to telemetry, never to the store.

Time comes only from its `Clock`, processes only through its `ProcessDriver`, and what
survives a restart only through its `AgentState`, so a simulation runs this same shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgspec.structs import replace

from keel.agent._metrics import AgentStats
from keel.agent._plan import (
    Action,
    Forget,
    Kill,
    Probe,
    Record,
    Report,
    Start,
    Stop,
    View,
    instance_key,
    iso_time,
    new_record,
    next_wakeup,
    observe_exit,
    observe_liveness,
    observe_probe,
    observe_start_failed,
    observe_started,
    observe_stopping,
    plan,
)
from keel.agent._processes import (
    LocalProcessDriver,
    ProcessDriver,
    StartFailed,
    Workload,
)
from keel.agent._state import AgentState, LeaseMemo, StateDir
from keel.api.resources import (
    Instance,
    Lease,
    Node,
    NodeAddress,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    ResourceList,
)
from keel.client import (
    AlreadyExists,
    Backoff,
    Conflict,
    FencingTokenRejected,
    Invalid,
    KeelClient,
    KeelClientError,
    NotFound,
)
from keel.clock import Clock, SystemClock
from keel.runtime.leaderelection import first_of, within

log = logging.getLogger("keel.agent")

NODE_LEASE_NAMESPACE = "keel-node-lease"
CLUSTER_LABEL = "keel.dev/cluster"
# The node lease is the agent's heartbeat, renewed by keep-alives (never store writes). Its
# duration bounds failure detection: the node lifecycle controller acts a grace period after
# it ran out (see keel.controllers.nodelifecycle). Four renewals per lease mean a lease is
# lost only when about four in a row fail or come late, which a busy machine does not do.
DEFAULT_LEASE_DURATION = 4
RENEWALS_PER_LEASE = 4


@dataclass(frozen=True)
class AgentConfig:
    node: str
    cluster: str
    state_dir: Path
    capacity: ResourceList = field(default_factory=ResourceList)
    lease_duration: int = DEFAULT_LEASE_DURATION
    fence_margin: float = 2.0  # stop exclusive instances this long before the lease ends
    host_ip: str = "127.0.0.1"
    heartbeat_interval: float = 5.0
    leave_running: bool = False  # on shutdown, leave workloads running (re-adopted later)
    tick: float = 0.25  # how often exits of adopted processes are polled
    reconnect: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0, 2.0, 0.5))


class Agent:
    """The agent of one node. `clock` defaults to the system clock, `driver` to real
    processes (`LocalProcessDriver`), `state` to files under `config.state_dir`."""

    def __init__(
        self,
        client: KeelClient,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        driver: ProcessDriver | None = None,
        state: AgentState | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.driver: ProcessDriver = driver or LocalProcessDriver(
            fence_file=config.state_dir / "fence-deadline"
        )
        self.rng = rng or random.Random()
        self.state: AgentState = state if state is not None else StateDir(config.state_dir)
        self.records: dict[str, Record] = {}
        self._saved: dict[str, Record] = {}
        self.desired: dict[str, Instance] = {}
        self.synced = False
        self.watch_rv = 0
        self.lease: Lease | None = None
        self.lease_ok_at = 0.0  # monotonic send time of the last successful renewal
        self.stopping_all = False
        self._wake = asyncio.Event()
        self._reporting: set[str] = set()
        self._report_retry: dict[str, float] = {}
        self._probing: set[Probe] = set()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._usage: dict[str, tuple[float, float]] = {}  # key -> (time, cpu seconds)
        self._log_path_accepted = True
        self._adopted_lease = False
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = AgentStats()  # counts for /metrics (keel.agent._metrics)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop the workloads (unless `leave_running`)."""
        self._adopt()
        background: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._register_loop,
            self._lease_loop,
            self._watch_loop,
            self._telemetry_loop,
            self._event_loop,
        ]
        self._tasks = [asyncio.create_task(fn(), name=fn.__name__) for fn in background]
        try:
            while not stop.is_set():
                try:
                    await self._reconcile_once()
                except Exception:
                    log.exception("reconcile failed")  # keep going: workloads depend on it
                await self._sleep_until_due(stop)
            if not self.config.leave_running:
                await self._stop_everything()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._persist()
            await self._flush_events()

    async def _stop_everything(self) -> None:
        log.info("stopping %d workload(s)", sum(r.running for r in self.records.values()))
        self.stopping_all = True
        longest = max(
            (r.spec.termination_grace_period_seconds for r in self.records.values()), default=0
        )
        deadline = self.clock.now() + longest + 10.0  # SIGKILL was sent long before this
        while any(r.running for r in self.records.values()) and self.clock.now() < deadline:
            await self._reconcile_once()
            await first_of(self.clock, self.config.tick, self._wake.wait())
            self._wake.clear()
        lease = self.lease
        if lease is not None:
            self.lease = None
            self.state.save_lease(None)
            with contextlib.suppress(KeelClientError, OSError, TimeoutError):
                await within(self.clock, 2.0, self.client.release_lease(lease))

    async def _sleep_until_due(self, stop: asyncio.Event) -> None:
        now = self.clock.wall()
        delay = min(self.config.tick, next_wakeup(self.records.values(), now) - now)
        await first_of(self.clock, max(0.0, delay), self._wake.wait(), stop.wait())
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ adoption

    def _adopt(self) -> None:
        """Take over what an earlier agent started: live processes keep running, and a
        recently renewed node lease is renewed again rather than waited out."""
        now = self.clock.wall()
        memo = self.state.load_lease()
        age = now - memo.renewed_at if memo is not None else -1.0
        duration = min(
            self.config.lease_duration,
            memo.lease.spec.lease_duration_seconds if memo is not None else 0,
        )
        if memo is not None and 0 <= age < duration:
            self.lease = memo.lease
            self.lease_ok_at = self.clock.now() - age
            self._adopted_lease = True
            self._publish_fence()
        for key, loaded in self.state.load().items():
            record = loaded
            if record.running and not self.driver.alive(record.pid, record.proc_start):
                log.info("%s: process %d ended while the agent was away", key, record.pid)
                self.driver.kill_leftovers(record.pid)
                record = observe_exit(record, None, now)
                self._event(record, "Exited", record.message or "exited", warning=True)
            elif record.running:
                log.info("%s: re-adopted running process %d", key, record.pid)
            self.records[key] = record
            self._saved[key] = loaded

    # ------------------------------------------------------------------ reconcile

    @property
    def lease_fresh(self) -> bool:
        """Renewed recently enough that exclusive instances may keep running: the lease
        cannot expire (and the control plane move them) within `fence_margin` seconds."""
        if self.lease is None:
            return False
        fresh_until = self.lease_ok_at + self.config.lease_duration - self.config.fence_margin
        return self.clock.now() < fresh_until

    @property
    def bindings_fresh(self) -> bool:
        """The watched bindings are at least as new as the lease's acquisition."""
        lease = self.lease
        return lease is not None and self.watch_rv >= _rv(lease.metadata.resource_version)

    def view(self) -> View:
        return View(
            node=self.config.node,
            host_ip=self.config.host_ip,
            synced=self.synced,
            exclusive_ok=self.lease_fresh,
            bindings_fresh=self.bindings_fresh,
            fence_grace=max(0.0, self.config.fence_margin - 0.5),
            stopping_all=self.stopping_all,
        )

    async def _reconcile_once(self) -> None:
        now = self.clock.wall()
        self._observe_exits(now)
        for action in plan(self.desired, self.records, now, self.view()):
            try:
                self._execute(action, now)
            except Exception:
                log.exception("executing %s failed", action)
        self._persist()

    def _observe_exits(self, now: float) -> None:
        for key, record in list(self.records.items()):
            if not record.running:
                continue
            exited = self.driver.poll(record.pid, record.proc_start)
            if exited is None:
                continue
            code = exited.code
            self.driver.kill_leftovers(record.pid)
            after = observe_exit(record, code, now)
            self.records[key] = after
            if not record.stopping:
                text = after.message or "exited with code 0"
                if after.next_start_at:
                    text += f" in {after.next_start_at - now:g}s"
                self._event(after, "Exited", text, warning=code != 0)
            else:
                text = after.message or "stopped"
                if after.next_start_at:
                    text += f" in {after.next_start_at - now:g}s"
                self._event(after, "Stopped", text, warning=record.stopping == "liveness")

    def _execute(self, action: Action, now: float) -> None:
        if isinstance(action, Start):
            self._start(action, now)
        elif isinstance(action, Stop):
            record = self.records[action.key]
            if action.reason == "liveness":
                reason = record.liveness_failure
                self._event(
                    record, "Unhealthy", f"Killing: liveness check failed: {reason}", warning=True
                )
            self.driver.signal(record.pid, "TERM")
            self.records[action.key] = observe_stopping(record, action.reason, action.grace, now)
            self._event(
                record,
                "Stopping",
                f"SIGTERM ({action.reason}), grace {action.grace:g}s",
                warning=action.reason in ("fenced", "liveness"),
            )
        elif isinstance(action, Kill):
            record = self.records[action.key]
            self.driver.signal(record.pid, "KILL")
            self.records[action.key] = replace(record, killed=True)
            self._event(record, "Killed", "grace period over: SIGKILL", warning=True)
        elif isinstance(action, Probe):
            if action not in self._probing:
                self._probing.add(action)
                self._spawn(self._probe(action))
        elif isinstance(action, Report):
            self._report(action, now)
        elif isinstance(action, Forget):
            record = self.records.pop(action.key)
            self._saved.pop(action.key, None)
            self._usage.pop(action.key, None)
            self.state.remove(record)

    def _start(self, action: Start, now: float) -> None:
        record = self.records.get(action.key)
        if record is None:
            assert action.instance is not None
            meta = action.instance.metadata
            taken = {p for r in self.records.values() for p in r.ports.values()}
            ports = self.driver.assign_ports(action.instance.spec, taken)
            log_path = self.state.log_path(meta.namespace, meta.name)
            record = new_record(action.instance, ports, str(log_path))
        started = self.driver.start(self._workload(record))
        if isinstance(started, StartFailed):
            after = observe_start_failed(record, started.message, now)
            self.records[action.key] = after
            self._event(after, "FailedStart", after.message, warning=True)
            return
        after = observe_started(record, started.pid, started.proc_start, now)
        self.records[action.key] = after
        what = "Started" if after.starts == 1 else "Restarted"
        if after.starts > 1:
            self.stats.restarts += 1
        self._event(after, what, f"pid {started.pid}, ports {after.ports or {}}")
        log.info("%s: %s pid %d", action.key, what.lower(), started.pid)

    def _workload(self, record: Record) -> Workload:
        env = {
            "KEEL_NODE": self.config.node,
            "KEEL_NAMESPACE": record.namespace,
            "KEEL_INSTANCE": record.name,
            # Names are reused (a Deployment's slot keeps its name across replacements); the
            # uid tells one Instance object from its successor.
            "KEEL_INSTANCE_UID": record.uid,
        }
        return Workload(
            namespace=record.namespace,
            name=record.name,
            spec=record.spec,
            ports=record.ports,
            log_path=record.log_path,
            env=env,
        )

    def _persist(self) -> None:
        for key, record in self.records.items():
            if self._saved.get(key) is not record:
                try:
                    self.state.save(record)
                    self._saved[key] = record
                except OSError as exc:
                    log.warning("cannot save state of %s: %s", key, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ health

    async def _probe(self, probe: Probe) -> None:
        key = probe.key
        try:
            record = self.records.get(key)
            if record is None:
                return
            spec = record.spec
            check = spec.liveness_check if probe.check == "liveness" else spec.health_check
            if check is None:
                return
            result = await self.driver.check_health(self._workload(record), check)
            self.stats.checks[probe.check, "success" if result.ok else "failure"] += 1
            current = self.records.get(key)
            if current is None or current.pid != record.pid or not current.running:
                return
            now = self.clock.wall()
            if probe.check == "liveness":
                # A failure reaching the threshold is acted on (and told) by the Stop.
                self.records[key] = observe_liveness(current, result.ok, result.reason, now)
            else:
                after = observe_probe(current, result.ok, now)
                self.records[key] = after
                if after.ready != current.ready:
                    if after.ready:
                        self._event(after, "Ready", "health check passed")
                    else:
                        text = f"health check failing: {result.reason}"
                        self._event(after, "Unhealthy", text, warning=True)
            self.wake()
        finally:
            self._probing.discard(probe)

    # ------------------------------------------------------------------ status

    def _report(self, action: Report, now: float) -> None:
        lease = self.lease
        if lease is None or action.key in self._reporting:
            return
        if now < self._report_retry.get(action.key, 0.0):
            return
        instance = self.desired.get(action.key)
        if instance is None:
            return
        self._reporting.add(action.key)
        self._spawn(self._write_status(action.key, replace(instance, status=action.status), lease))

    async def _write_status(self, key: str, instance: Instance, lease: Lease) -> None:
        token = lease.status.fencing_token
        try:
            async with self.client.fenced(NODE_LEASE_NAMESPACE, self.config.node, token) as api:
                written = await within(self.clock, 10.0, api.update_status(instance))
            self._observe_instance(written)
            self._report_retry.pop(key, None)
        except Conflict:
            with contextlib.suppress(KeelClientError, OSError, TimeoutError):
                meta = instance.metadata
                fresh = await self.client.get(Instance, meta.name, namespace=meta.namespace)
                self._observe_instance(fresh)
        except FencingTokenRejected:
            log.warning("status of %s rejected: node lease token %d is stale", key, token)
            if self.lease is lease:
                self.lease = None  # re-acquire
            self._report_retry[key] = self.clock.wall() + 1.0
        except NotFound:
            pass  # deleted; the watch says so
        except (KeelClientError, OSError, TimeoutError) as exc:
            log.info("status of %s not written: %s", key, exc)
            self._report_retry[key] = self.clock.wall() + 1.0 + self.rng.random()
        finally:
            self._reporting.discard(key)
            self.wake()

    def _observe_instance(self, instance: Instance) -> None:
        key = instance_key(instance)
        known = self.desired.get(key)
        if known is not None and _rv(known.metadata.resource_version) > _rv(
            instance.metadata.resource_version
        ):
            return
        if instance.spec.node_name == self.config.node:
            self.desired[key] = instance
        else:
            self.desired.pop(key, None)

    # ------------------------------------------------------------------ control plane

    async def _retrying(self, what: str, attempt: int) -> None:
        delay = self.config.reconnect.delay(min(attempt, 30), self.rng)
        log.debug("%s: retrying in %.2fs", what, delay)
        await self.clock.sleep(delay)

    async def _register_loop(self) -> None:
        attempt = 0
        while True:
            try:
                await self._register()
                return
            except (KeelClientError, OSError, TimeoutError) as exc:
                log.warning("registering node %s: %s", self.config.node, exc)
                await self._retrying("register", attempt)
                attempt += 1

    async def _register(self) -> None:
        cfg = self.config
        spec = NodeSpec(cluster=cfg.cluster, capacity=cfg.capacity)
        try:
            node = await self.client.get(Node, cfg.node)
        except NotFound:
            meta = ObjectMeta(name=cfg.node, labels={CLUSTER_LABEL: cfg.cluster})
            node = await self.client.create(Node(kind="Node", metadata=meta, spec=spec))
        else:
            if node.spec.cluster != cfg.cluster or node.spec.capacity != cfg.capacity:
                labels = {**node.metadata.labels, CLUSTER_LABEL: cfg.cluster}
                updated = replace(
                    node,
                    metadata=replace(node.metadata, labels=labels),
                    spec=replace(node.spec, cluster=cfg.cluster, capacity=cfg.capacity),
                )
                node = await self.client.replace(updated)
        addresses = [NodeAddress(type="InternalIP", address=cfg.host_ip)]
        if node.status.addresses != addresses or node.status.allocatable != cfg.capacity:
            status: NodeStatus = replace(node.status, addresses=addresses, allocatable=cfg.capacity)
            await self.client.update_status(replace(node, status=status))
        log.info("node %s registered in cluster %s", cfg.node, cfg.cluster)

    async def _lease_loop(self) -> None:
        cfg = self.config
        interval = max(0.5, cfg.lease_duration / RENEWALS_PER_LEASE)
        attempt = 0
        while True:
            lease = self.lease
            sent = self.clock.now()
            try:
                if lease is None:
                    self.lease = await within(self.clock, interval, self._acquire())
                    self.stats.lease_acquisitions += 1
                    self.lease_ok_at = sent
                    self._publish_fence()
                    self._remember_lease(self.lease, sent)
                    log.info("node lease acquired (token %d)", self.lease.status.fencing_token)
                else:
                    renewed = await within(self.clock, interval, self.client.renew_lease(lease))
                    self.stats.lease_renewals += 1
                    if self._adopted_lease:
                        self._adopted_lease = False
                        log.info(
                            "renewed the saved node lease (token %d)", lease.status.fencing_token
                        )
                    if self.lease is lease:
                        self.lease = renewed
                        self.lease_ok_at = sent
                        self._publish_fence()
                        self._remember_lease(renewed, sent)
                attempt = 0
                self.wake()
                await self.clock.sleep(max(0.0, interval - (self.clock.now() - sent)))
            except (NotFound, Conflict, _LeaseHeld):
                self._adopted_lease = False
                if lease is not None:
                    self.stats.lease_losses += 1
                    log.warning("node lease lost; re-acquiring")
                    if self.lease is lease:
                        self.lease = None
                    self.wake()
                else:
                    await self._retrying("lease", attempt)
                    attempt += 1
            except (KeelClientError, OSError, TimeoutError) as exc:
                log.info("node lease: %s", exc)
                if lease is not None:
                    self.stats.lease_misses += 1
                # A renewal failed: try again soon, the lease may still be saved.
                await self.clock.sleep(
                    min(interval / 2, self.config.reconnect.delay(attempt, self.rng))
                )
                attempt += 1

    def _publish_fence(self) -> None:
        """Tell the fence watchdogs of exclusive processes how long they may run without
        us: the same instant at which `lease_fresh` turns false."""
        until = self.lease_ok_at + self.config.lease_duration - self.config.fence_margin
        try:
            self.driver.fence(until)
        except OSError as exc:
            log.warning("cannot publish the fence deadline: %s", exc)

    def _remember_lease(self, lease: Lease, sent: float) -> None:
        renewed_at = self.clock.wall() - (self.clock.now() - sent)
        try:
            self.state.save_lease(LeaseMemo(lease=lease, renewed_at=renewed_at))
        except OSError as exc:
            log.warning("cannot save the node lease: %s", exc)

    async def _acquire(self) -> Lease:
        cfg = self.config
        try:
            return await self.client.acquire_lease(
                NODE_LEASE_NAMESPACE, cfg.node, cfg.node, cfg.lease_duration
            )
        except AlreadyExists:
            # Held under our own name: an earlier run of this agent (killed, or restarted
            # for an upgrade). Renewing it with its token continues it.
            held = await self.client.get(Lease, cfg.node, namespace=NODE_LEASE_NAMESPACE)
            if held.spec.holder_identity != cfg.node:
                raise _LeaseHeld(held.spec.holder_identity) from None
            return await self.client.renew_lease(held)

    async def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.config.node}"
        attempt = 0
        while True:
            try:
                listed = await self.client.list(Instance, field_selector=selector)
                self.desired = {instance_key(i): i for i in listed.items}
                self.synced = True
                self.watch_rv = _rv(listed.resource_version)
                self.wake()
                watch = self.client.watch(
                    Instance,
                    resource_version=listed.resource_version,
                    field_selector=selector,
                    emit_bookmarks=True,
                    idle_timeout=15.0,
                )
                async with watch:
                    async for event in watch:
                        attempt = 0
                        if event.type == "RELIST":
                            self.desired = {instance_key(i): i for i in event.objects}
                        elif event.type == "DELETED" and event.object is not None:
                            self.desired.pop(instance_key(event.object), None)
                        elif event.object is not None:
                            self._observe_instance(event.object)
                        self.watch_rv = max(self.watch_rv, _rv(event.resource_version))
                        self.wake()
            except (KeelClientError, OSError, TimeoutError) as exc:
                log.info("watching instances: %s", exc)
                await self._retrying("watch", attempt)
                attempt += 1

    # ------------------------------------------------------------------ telemetry

    def _event(self, record: Record, reason: str, message: str, *, warning: bool = False) -> None:
        event = {
            "involvedObject": {
                "kind": "Instance",
                "name": record.name,
                "namespace": record.namespace,
            },
            "reason": reason,
            "message": message[:4096],
            "type": "Warning" if warning else "Normal",
            "time": iso_time(self.clock.wall()),
            "source": f"keel-agent/{self.config.node}",
            "node": self.config.node,
        }
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(event)

    async def _event_loop(self) -> None:
        while True:
            event = await self._events.get()
            await self._send_event(event)

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await within(self.clock, 5.0, self.client.record_event(event))
        except (KeelClientError, OSError, TimeoutError) as exc:
            log.debug("event not recorded: %s", exc)

    async def _flush_events(self) -> None:
        deadline = self.clock.now() + 2.0
        while not self._events.empty() and self.clock.now() < deadline:
            await self._send_event(self._events.get_nowait())

    async def _telemetry_loop(self) -> None:
        while True:
            try:
                await self._report_usage()
            except Exception:
                log.exception("telemetry failed")
            await self.clock.sleep(self.config.heartbeat_interval)

    async def _report_usage(self) -> None:
        now = self.clock.now()
        stamp = iso_time(self.clock.wall())
        sends = []
        total_cpu = 0.0
        total_mem = 0
        for key, record in list(self.records.items()):
            self.driver.rotate_log(record.log_path)
            cpu = 0.0
            mem = 0
            if record.running:
                usage = self.driver.usage(record.pid)
                mem = usage.memory_bytes
                previous = self._usage.get(key)
                if previous is not None and now > previous[0] and usage.cpu_seconds >= previous[1]:
                    cpu = (usage.cpu_seconds - previous[1]) / (now - previous[0])
                self._usage[key] = (now, usage.cpu_seconds)
            total_cpu += cpu
            total_mem += mem
            body: dict[str, Any] = {
                "instance": record.name,
                "node": self.config.node,
                "cpu": round(cpu, 4),
                "memory": mem,
                "restarts": record.restarts,
                "time": stamp,
            }
            sends.append(self._put_usage(body, record))
        heartbeat = {
            "node": self.config.node,
            "cpuUsage": round(total_cpu, 4),
            "memoryUsage": total_mem,
            "time": stamp,
        }
        sends.append(self._put_telemetry("nodeheartbeats", heartbeat, None))
        await asyncio.gather(*sends)

    async def _put_usage(self, body: dict[str, Any], record: Record) -> None:
        # `logPath` tells `keel logs` where the output is; a server whose telemetry schema
        # does not know the field yet answers 422, and then gets the record without it.
        if self._log_path_accepted:
            try:
                full = {**body, "logPath": record.log_path}
                await within(
                    self.clock,
                    5.0,
                    self.client.put_telemetry("instanceusages", full, namespace=record.namespace),
                )
                return
            except Invalid:
                self._log_path_accepted = False
            except (KeelClientError, OSError, TimeoutError) as exc:
                log.debug("usage of %s not sent: %s", record.key, exc)
                return
        await self._put_telemetry("instanceusages", body, record.namespace)

    async def _put_telemetry(self, kind: str, body: dict[str, Any], namespace: str | None) -> None:
        try:
            await within(
                self.clock, 5.0, self.client.put_telemetry(kind, body, namespace=namespace)
            )
        except (KeelClientError, OSError, TimeoutError) as exc:
            log.debug("%s not sent: %s", kind, exc)


class _LeaseHeld(Exception):
    """The node lease is held by someone else under another name."""


def _rv(value: str) -> int:
    return int(value) if value.isdigit() else 0
