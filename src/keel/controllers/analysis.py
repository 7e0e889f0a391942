"""The shell of canary analysis: samples the canary Instances of a Deployment whose rollout
stands at an analysis step (readiness from the cache, restarts from agent telemetry, the
step's HTTP or exec probe) and asks the pure `progressive.evaluate` for the verdict.

Samples live in memory only (analysis samples are telemetry, never written to the store):
a controller-manager that takes over leadership starts the window again. One run per
Deployment, keyed by its uid, template hash, step and the time the step began, so a new
step or template starts afresh and a finished one is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from keel.api.disruption import is_ready
from keel.api.resources import Analysis, AnalysisProbe, Deployment, Instance
from keel.client import KeelClientError
from keel.controllers.progressive import Sample, Verdict, evaluate
from keel.runtime.controller import Context

__all__ = ["AnalysisRuns", "probe_endpoints", "run_probe"]


@dataclass
class _Run:
    key: tuple[str, str, int, str]
    started: float
    samples: list[Sample] = field(default_factory=list)
    last: float = float("-inf")


class AnalysisRuns:
    """The analysis runs of the Deployments one controller reconciles."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    def forget(self, name: str) -> None:
        self._runs.pop(name, None)

    async def verdict(
        self,
        ctx: Context,
        deployment: Deployment,
        analysis: Analysis,
        canaries: Sequence[Instance],
        now: float,
    ) -> Verdict:
        """The verdict of `analysis` for the step the Deployment's status stands at; takes
        a sample when one is due."""
        meta, status = deployment.metadata, deployment.status
        name = f"{meta.namespace}/{meta.name}"
        key = (meta.uid, status.update_revision, status.current_step, status.step_started_at or "")
        run = self._runs.get(name)
        if run is None or run.key != key:
            run = self._runs[name] = _Run(key, started=now)
        if now >= run.last + analysis.interval_seconds:
            run.last = now
            restarts = await _restarts(ctx, meta.namespace, [i.metadata.name for i in canaries])
            ready = [i for i in canaries if is_ready(i)]
            probe_ok = None
            if analysis.probe is not None:
                probe_ok = await run_probe(analysis.probe, ready, canaries)
            run.samples.append(Sample(now, len(ready), len(canaries), restarts, probe_ok))
        return evaluate(analysis, run.samples, run.started, now)


async def _restarts(ctx: Context, namespace: str, names: Sequence[str]) -> int:
    wanted = set(names)
    try:
        items = await ctx.client.get_telemetry("instanceusages", namespace=namespace)
    except (KeelClientError, OSError):
        return 0
    counts: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        instance, restarts = item.get("instance"), item.get("restarts")
        if instance in wanted and isinstance(instance, str) and isinstance(restarts, int):
            counts[instance] = max(counts.get(instance, 0), restarts)
    return sum(counts.values())


def probe_endpoints(probe: AnalysisProbe, instances: Sequence[Instance]) -> list[str]:
    """host:port of `probe.port` (a name or number; "": the first port) on each Instance."""
    found: list[str] = []
    for instance in instances:
        host = instance.status.host_ip or "127.0.0.1"
        ports: Mapping[str, int] = {p.name: p.port for p in instance.status.ports}
        target = probe.port
        if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
            port: int | None = int(target)
        elif target:
            port = ports.get(target)
        else:
            port = next(iter(ports.values()), None)
        if port:
            found.append(f"{host}:{port}")
    return found


async def run_probe(
    probe: AnalysisProbe, ready: Sequence[Instance], canaries: Sequence[Instance]
) -> bool:
    """One probe sample: every Ready canary answers the HTTP probe with 2xx or 3xx (and
    one at least is Ready), or the exec probe's command exits 0."""
    endpoints = probe_endpoints(probe, ready)
    if probe.type == "exec":
        env = {
            **os.environ,
            "KEEL_CANARY_INSTANCES": " ".join(i.metadata.name for i in canaries),
            "KEEL_CANARY_ENDPOINTS": " ".join(endpoints),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *probe.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return False
        try:
            return await asyncio.wait_for(process.wait(), probe.timeout_seconds) == 0
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return False
    if not endpoints:
        return False
    results = await asyncio.gather(*(_http_ok(e, probe) for e in endpoints))
    return all(results)


async def _http_ok(endpoint: str, probe: AnalysisProbe) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        async with asyncio.timeout(probe.timeout_seconds):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                request = f"GET {probe.path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
    fields = line.split()
    return len(fields) >= 2 and fields[1][:1] in (b"2", b"3")
