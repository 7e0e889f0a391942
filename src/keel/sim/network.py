"""The simulated network between one process and the API server: a `keel.client.HttpTransport`
that wraps `AppTransport` with the process's pause gate and the seeded faults of
`FaultScheduler` (latency, stalled writes, lost answers, dropped, delayed, rewound and
expired watch streams), and records every mutating request as the server answered it.

Everything above it is the real client (retries, ambiguity, watch resumption); everything
below is the real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec

from keel.api.registry import KindInfo
from keel.api.resources import API_GROUP, BindingPlan, PlanResult, Resource, Status
from keel.api.server import parse_path
from keel.api.storage import ApiError
from keel.api.watchcache import expired_line
from keel.client import HttpRequest, HttpResponse, ResponseStream, TransportError
from keel.sim.faults import FaultScheduler
from keel.sim.trace import Trace
from keel.sim.transport import AppTransport

__all__ = ["Mutation", "MutationLog", "ProcessNetwork"]

Gate = Callable[[], Awaitable[None]]
Reachable = Callable[[], Awaitable[object]]  # returns once the API server can be reached
Stall = Callable[[float], None]
Revision = Callable[[], Awaitable[int]]

_RESOURCE_PREFIX = f"/apis/{API_GROUP}/v1/"
_PLANS_PATH = f"{_RESOURCE_PREFIX}bindingplans"
# How long a request to an unreachable server takes to fail (the client's connect timeout).
CONNECT_TIMEOUT = 1.0
_FENCING_HEADER = "keel-fencing-token"


@dataclass(frozen=True)
class Mutation:
    """One mutating request as the server answered it. `outcome` is "ok", "noop" (accepted,
    nothing written) or the error reason; `revision` is the write's revision (0 if none)."""

    seq: int
    time: float
    caller: str
    verb: str
    kind: str
    namespace: str
    name: str
    fencing: tuple[str, int] | None  # ("ns/lease", token) carried by the request
    outcome: str
    revision: int
    obj: Resource | None  # the object as written (the last state for a delete)
    uid: str = ""  # the object's, when known without `obj` (a binding of a plan)

    @property
    def accepted(self) -> bool:
        return self.outcome == "ok"


class _Meta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""
    resource_version: str = ""


class _Head(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)


class _WatchLine(msgspec.Struct):
    type: str
    object: _Head = msgspec.field(default_factory=_Head)


_head_decoder = msgspec.json.Decoder(_Head)
_line_decoder = msgspec.json.Decoder(_WatchLine)
_status_decoder = msgspec.json.Decoder(Status)
_plan_decoder = msgspec.json.Decoder(BindingPlan)
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _verb(method: str, subresource: str | None) -> str | None:
    """The mutation a request makes, or None (reads, lease renewals: keep-alives)."""
    if subresource == "renew":
        return None
    if subresource == "binding":
        return "bind"
    if subresource == "eviction":
        return "evict"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update_status" if subresource == "status" else "replace"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete"
    return None


def _refusal(response: HttpResponse) -> str:
    """Why the server refused a request: its Status reason, else the HTTP status."""
    try:
        return _status_decoder.decode(response.body).reason or str(response.status)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return str(response.status)


def _fencing(headers: Mapping[str, str] | None) -> tuple[str, int] | None:
    for name, value in (headers or {}).items():
        if name.lower() == _FENCING_HEADER:
            lease, _, token = value.rpartition("=")
            return (lease, int(token)) if token.isdigit() else None
    return None


class MutationLog:
    """Every mutating request of a run, in the order the server answered them."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.mutations: list[Mutation] = []
        self._seq = itertools.count(1)

    def record(
        self, caller: str, request: HttpRequest, response: HttpResponse | None, before: int
    ) -> None:
        path = request.url.split("://", 1)[-1]
        path = path[path.find("/") :] if "/" in path else "/"
        if request.method not in _MUTATING or not path.startswith(_RESOURCE_PREFIX):
            return
        if request.method == "POST" and path.split("?", 1)[0] == _PLANS_PATH:
            self._record_plan(caller, request, response)
            return
        try:
            target = parse_path(path[len(_RESOURCE_PREFIX) :])
        except ApiError:
            return
        verb = _verb(request.method, target.subresource)
        if verb is None:
            return
        info: KindInfo = target.info
        namespace, name = target.namespace or "", target.name or ""
        if not name and request.body:
            # A create names its object in the body: a rejected one is logged by that name
            # (an accepted one by the name the server answered, e.g. for generateName).
            try:
                name = _head_decoder.decode(request.body).metadata.name
            except (msgspec.DecodeError, msgspec.ValidationError):
                name = ""
        obj: Resource | None = None
        revision = 0
        if response is None:
            outcome = "lost"
        elif response.status < 400:
            outcome = "ok"
            try:
                obj = msgspec.json.decode(response.body, type=info.model)
            except (msgspec.DecodeError, msgspec.ValidationError):
                obj = None  # a Status (e.g. a delete that only marked the object)
            if obj is not None:
                name = name or obj.metadata.name
                namespace = namespace or obj.metadata.namespace
                revision = int(obj.metadata.resource_version or 0)
                if revision <= before:
                    outcome = "noop"  # nothing was written: the object is as it was
        else:
            outcome = _refusal(response)
        loop = asyncio.get_running_loop()
        fencing = _fencing(request.headers)
        mutation = Mutation(
            next(self._seq),
            loop.time(),
            caller,
            verb,
            info.kind,
            namespace,
            name,
            fencing,
            outcome,
            revision,
            obj,
        )
        self.mutations.append(mutation)
        where = f"{namespace}/{name}" if namespace else name
        token = f" fenced={fencing[0]}={fencing[1]}" if fencing else ""
        self.trace.record(
            loop.time(), caller, f"{verb} {info.kind} {where}{token} -> {outcome} rv={revision}"
        )

    def _record_plan(
        self, caller: str, request: HttpRequest, response: HttpResponse | None
    ) -> None:
        """A binding plan: one "bind" mutation per binding, as the server answered each."""
        try:
            plan = _plan_decoder.decode(request.body or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        results: list[PlanResult] = []
        failed = "lost"
        if response is not None and response.status < 400:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                results = _plan_decoder.decode(response.body).results
        elif response is not None:
            failed = _refusal(response)
        loop = asyncio.get_running_loop()
        fencing = _fencing(request.headers)
        answers = {(r.namespace, r.name): r for r in results}
        for binding in plan.bindings:
            result = answers.get((binding.namespace, binding.name))
            if result is None:
                outcome, revision, uid = failed, 0, ""
            elif result.bound:
                outcome, revision, uid = "ok", int(result.resource_version or 0), result.uid
            else:
                outcome, revision, uid = result.reason or str(result.code), 0, ""
            self.mutations.append(
                Mutation(
                    next(self._seq),
                    loop.time(),
                    caller,
                    "bind",
                    "Instance",
                    binding.namespace,
                    binding.name,
                    fencing,
                    outcome,
                    revision,
                    None,
                    uid,
                )
            )
            token = f" fenced={fencing[0]}={fencing[1]}" if fencing else ""
            self.trace.record(
                loop.time(),
                caller,
                f"bind Instance {binding.namespace}/{binding.name} to {binding.node} (plan)"
                f"{token} -> {outcome} rv={revision}",
            )


@dataclass
class _WatchMemory:
    """What the network remembers of one watch (by caller and query) across reconnects:
    recent resourceVersions, for a rewound resume, and a pending 410."""

    seen: deque[str]
    rewind: int = 0
    expire: bool = False


class _Lines:
    """A `ResponseStream` delivered line by line, each line passing the fault scheduler."""

    def __init__(
        self,
        inner: ResponseStream,
        network: ProcessNetwork,
        memory: _WatchMemory,
        what: str,
    ) -> None:
        self._inner = inner
        self._network = network
        self._memory = memory
        self._what = what
        self._pending: deque[bytes] = deque()
        self._buffer = b""
        self._ended = False
        self.status = inner.status
        self.headers = inner.headers

    async def read(self) -> bytes:
        return await self._inner.read()

    async def readany(self) -> bytes:
        network = self._network
        await network.gate()
        while not self._pending:
            if self._ended:
                return b""
            chunk = await self._inner.readany()
            await network.gate()
            if not chunk:
                self._ended = True
                return b""
            data = self._buffer + chunk
            *lines, self._buffer = data.split(b"\n")
            self._pending.extend(line + b"\n" for line in lines if line.strip())
        await network.silent_while_cut_off()
        line = self._pending[0]
        decision = network.faults.on_watch_event()
        trace, now = network.trace, asyncio.get_running_loop().time()
        if decision.action == "drop":
            trace.record(now, network.caller, f"watch {self._what}: connection dropped")
            raise TransportError("simulated: the watch connection dropped", sent=True)
        if decision.action == "expire":
            trace.record(now, network.caller, f"watch {self._what}: history expired")
            self._memory.expire = True
            raise TransportError("simulated: the watch connection dropped", sent=True)
        if decision.action == "delay":
            await asyncio.sleep(decision.delay)
            await network.gate()
        self._pending.popleft()
        try:
            rv = _line_decoder.decode(line).object.metadata.resource_version
        except (msgspec.DecodeError, msgspec.ValidationError):
            rv = ""
        if rv:
            self._memory.seen.append(rv)
        if decision.action == "duplicate":
            # Deliver this event, then break the connection; the resume is served from an
            # older resourceVersion, so the client sees events it already has again.
            trace.record(
                now, network.caller, f"watch {self._what}: resume rewound {decision.rewind}"
            )
            self._memory.rewind = decision.rewind
            self._pending.clear()
            self._ended = True
        return line


class ProcessNetwork:
    """The transport of one process incarnation (see module docstring)."""

    def __init__(
        self,
        app: AppTransport,
        caller: str,
        *,
        faults: FaultScheduler,
        log: MutationLog,
        revision: Revision,
        gate: Gate | None = None,
        stall: Stall | None = None,
        cut_off: Callable[[], bool] | None = None,
        reachable: Reachable | None = None,
    ) -> None:
        self.app = app
        self._cut_off = cut_off
        self._reachable = reachable
        self.caller = caller
        self.faults = faults
        self.log = log
        self.trace = log.trace
        self._revision = revision
        self._gate = gate
        self._stall = stall
        self._watches: dict[str, _WatchMemory] = {}

    async def gate(self) -> None:
        if self._gate is not None:
            await self._gate()

    async def connect(self) -> None:
        """A partitioned process's requests fail, after a connect timeout, unsent."""
        if self._cut_off is not None and self._cut_off():
            await asyncio.sleep(CONNECT_TIMEOUT)
            await self.gate()
            raise TransportError("simulated partition: the API server is unreachable", sent=False)

    async def silent_while_cut_off(self) -> None:
        """An open stream says nothing while its process is cut off."""
        if self._reachable is not None:
            await self._reachable()
            await self.gate()

    async def _latency(self) -> None:
        delay = self.faults.latency()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.gate()

    async def send(self, request: HttpRequest) -> HttpResponse:
        await self.gate()
        mutating = request.method in _MUTATING
        if mutating and self._stall is not None:
            pause = self.faults.stall_write()
            if pause > 0:
                self.trace.record(
                    asyncio.get_running_loop().time(), self.caller, f"stall {pause:.3f}s"
                )
                self._stall(pause)
                await self.gate()
        await self._latency()
        await self.connect()
        before = await self._revision() if mutating else 0
        response = await self.app.send(request)
        if mutating:
            self.log.record(self.caller, request, response, before)
        if self.faults.lose_answer() or (self._cut_off is not None and self._cut_off()):
            self.trace.record(
                asyncio.get_running_loop().time(), self.caller, f"answer lost: {request.method}"
            )
            raise TransportError("simulated: the answer was lost", sent=True)
        await self._latency()
        return response

    @asynccontextmanager
    async def stream(
        self, request: HttpRequest, *, idle_timeout: float | None
    ) -> AsyncIterator[ResponseStream]:
        await self._latency()
        await self.connect()
        params = dict(request.params or {})
        rv = params.pop("resourceVersion", "")
        what = request.url.rsplit("/", 1)[-1]
        key = request.url + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        memory = self._watches.setdefault(key, _WatchMemory(deque(maxlen=64)))
        if memory.expire:
            memory.expire = False
            yield _Canned(expired_line(f"too old resource version: {rv} (simulated)"))
            return
        if memory.rewind and rv in memory.seen:
            seen = list(memory.seen)
            older = seen[max(0, seen.index(rv) - memory.rewind)]
            if older != rv:
                params["resourceVersion"] = older
                request = HttpRequest(request.method, request.url, params, request.headers)
        memory.rewind = 0
        if rv:
            params.setdefault("resourceVersion", rv)
        async with self.app.stream(request, idle_timeout=idle_timeout) as inner:
            yield _Lines(inner, self, memory, what)

    async def aclose(self) -> None:
        return None


class _Canned:
    """A complete streaming answer made up by the network (a 410 for an expired resume)."""

    status = 200
    headers: Mapping[str, str] = {"content-type": "application/json"}

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        body, self._body = self._body, b""
        return body

    async def readany(self) -> bytes:
        return await self.read()
