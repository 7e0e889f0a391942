"""Client behaviour under faults a real server cannot be made to produce on cue: dropped
streams, 410 mid-watch, throttling, lost answers to writes. The server here is aiohttp.web
on loopback (real HTTP), scripted per test; time is virtual (no test waits on a clock)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from client_fakes import (
    BASE,
    bookmark_line,
    drop,
    event_line,
    node,
    node_json,
    open_stream,
    serve,
    status_body,
    status_response,
)

from keel.api.resources import Instance, InstanceSpec, Node, ObjectMeta
from keel.client import (
    ApiUnavailable,
    Backoff,
    Conflict,
    Expired,
    FencingTokenRejected,
    Forbidden,
    KeelClient,
    NotFound,
    Preconditions,
    RetryPolicy,
    TooManyRequests,
    WatchEvent,
)
from keel.clock import ManualClock

NODES = f"{BASE}/nodes"


def client_for(url: str, clock: ManualClock, **kwargs: Any) -> KeelClient:
    return KeelClient(url, token="t", clock=clock, timeout=5.0, **kwargs)


def list_response(items: list[Any], rv: int, cont: str = "") -> web.Response:
    body = {
        "apiVersion": "keel.dev/v1",
        "kind": "NodeList",
        "items": items,
        "metadata": {"resourceVersion": str(rv), "continue": cont},
    }
    return web.json_response(body)


async def take(watch: Any, count: int) -> list[WatchEvent[Node]]:
    events = []
    async for event in watch:
        events.append(event)
        if len(events) == count:
            break
    return events


def summary(events: list[WatchEvent[Node]]) -> list[tuple[str, str, str]]:
    return [
        (e.type, e.object.metadata.name if e.object else "-", e.resource_version) for e in events
    ]


# ----------------------------------------------------------------------------------- watch


async def test_watch_resumes_from_the_last_seen_version_after_a_dropped_stream(
    virtual_sleep: ManualClock,
) -> None:
    asked: list[str] = []

    async def nodes(request: web.Request) -> web.StreamResponse:
        rv = request.query["resourceVersion"]
        asked.append(rv)
        response = await open_stream(request)
        if rv == "10":
            await response.write(event_line("ADDED", node_json("a", 11)))
            await response.write(event_line("MODIFIED", node_json("a", 12)))
            drop(request)  # the connection dies mid-stream
        elif rv == "12":
            await response.write(event_line("DELETED", node_json("a", 13)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node, resource_version="10")
        events = await take(watch, 3)
        await watch.aclose()
    assert summary(events) == [
        ("ADDED", "a", "11"),
        ("MODIFIED", "a", "12"),
        ("DELETED", "a", "13"),
    ]
    assert asked == ["10", "12"]
    assert watch.resource_version == "13"


async def test_watch_resumes_from_a_bookmark_version(virtual_sleep: ManualClock) -> None:
    asked: list[str] = []

    async def nodes(request: web.Request) -> web.StreamResponse:
        asked.append(request.query["resourceVersion"])
        assert request.query["allowWatchBookmarks"] == "true"
        response = await open_stream(request)
        if len(asked) == 1:
            await response.write(event_line("ADDED", node_json("a", 11)))
            await response.write(bookmark_line(20))  # nothing of ours changed up to 20
        else:
            await response.write(event_line("ADDED", node_json("b", 21)))
        return response  # a clean end of the stream also makes the client resume

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node, resource_version="10")
        events = await take(watch, 2)
        await watch.aclose()
    assert summary(events) == [("ADDED", "a", "11"), ("ADDED", "b", "21")]
    assert asked == ["10", "20"]
    assert virtual_sleep.slept == []  # progress was made: resumed without backoff


async def test_bookmarks_are_emitted_only_when_asked(virtual_sleep: ManualClock) -> None:
    async def nodes(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        await response.write(bookmark_line(20))
        await response.write(event_line("ADDED", node_json("b", 21)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node, resource_version="10", emit_bookmarks=True)
        events = await take(watch, 2)
        await watch.aclose()
    assert summary(events) == [("BOOKMARK", "-", "20"), ("ADDED", "b", "21")]


@pytest.mark.parametrize("how", ["410 response", "ERROR event"])
async def test_watch_relists_on_expiry_and_continues_from_the_list_version(
    virtual_sleep: ManualClock, how: str
) -> None:
    watches: list[str] = []
    lists = 0

    async def nodes(request: web.Request) -> web.StreamResponse:
        nonlocal lists
        if request.query.get("watch") != "true":
            lists += 1
            return list_response([node_json("a", 30), node_json("c", 40)], 50)
        rv = request.query["resourceVersion"]
        watches.append(rv)
        if rv == "10":
            if how == "410 response":
                return status_response(410, "Expired", "too old")
            response = await open_stream(request)
            await response.write(event_line("ERROR", json.loads(status_body(410, "Expired"))))
            return response
        response = await open_stream(request)
        await response.write(event_line("MODIFIED", node_json("c", 51)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node, resource_version="10")
        events = await take(watch, 4)
        await watch.aclose()
    assert summary(events) == [
        ("RELIST", "-", "50"),
        ("ADDED", "a", "30"),
        ("ADDED", "c", "40"),
        ("MODIFIED", "c", "51"),
    ]
    assert [o.metadata.name for o in events[0].objects] == ["a", "c"]
    assert watches == ["10", "50"]
    assert lists == 1


async def test_watch_without_a_version_starts_at_the_current_list_version(
    virtual_sleep: ManualClock,
) -> None:
    watched: list[str] = []

    async def nodes(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            assert request.query["limit"] == "1"
            return list_response([node_json("a", 3)], 77, cont="more")
        watched.append(request.query["resourceVersion"])
        response = await open_stream(request)
        await response.write(event_line("ADDED", node_json("z", 78)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node)
        events = await take(watch, 1)
        await watch.aclose()
    assert summary(events) == [("ADDED", "z", "78")]
    assert watched == ["77"]


async def test_watch_backs_off_exponentially_while_the_server_is_unreachable(
    virtual_sleep: ManualClock,
) -> None:
    calls = 0

    async def nodes(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls <= 4:
            drop(request)  # accepted, then cut before any answer
            return web.Response()
        response = await open_stream(request)
        await response.write(event_line("ADDED", node_json("a", 11)))
        return response

    policy = RetryPolicy(backoff=Backoff(initial=0.5, maximum=2.0, jitter=0.0))
    async with (
        serve({("GET", NODES): nodes}) as url,
        client_for(url, virtual_sleep, retry=policy) as client,
    ):
        watch = client.watch(Node, resource_version="10")
        events = await take(watch, 1)
        await watch.aclose()
    assert summary(events) == [("ADDED", "a", "11")]
    assert virtual_sleep.slept == [0.5, 1.0, 2.0, 2.0]


async def test_a_silent_watch_connection_is_abandoned_after_the_idle_timeout(
    virtual_sleep: ManualClock,
) -> None:
    asked: list[str] = []
    never = asyncio.Event()

    async def nodes(request: web.Request) -> web.StreamResponse:
        asked.append(request.query["resourceVersion"])
        response = await open_stream(request)
        if len(asked) == 1:
            await response.write(event_line("ADDED", node_json("a", 11)))
            await never.wait()  # half-open: the connection stays up but nothing more comes
        await response.write(event_line("ADDED", node_json("b", 12)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        watch = client.watch(Node, resource_version="10", idle_timeout=0.3)
        events = await take(watch, 2)
        await watch.aclose()
    assert summary(events) == [("ADDED", "a", "11"), ("ADDED", "b", "12")]
    assert asked == ["10", "11"]


async def test_watch_stops_with_the_error_when_access_is_denied(
    virtual_sleep: ManualClock,
) -> None:
    async def nodes(request: web.Request) -> web.StreamResponse:
        return status_response(403, "Forbidden", "viewer may not")

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        with pytest.raises(Forbidden):
            await take(client.watch(Node, resource_version="10"), 1)


async def test_watch_waits_for_retry_after_when_throttled(virtual_sleep: ManualClock) -> None:
    calls = 0

    async def nodes(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return status_response(429, "TooManyRequests", headers={"Retry-After": "4"})
        response = await open_stream(request)
        await response.write(event_line("ADDED", node_json("a", 11)))
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        events = await take(client.watch(Node, resource_version="10"), 1)
    assert summary(events) == [("ADDED", "a", "11")]
    assert 4.0 in virtual_sleep.slept


async def test_watch_lines_longer_than_aiohttp_buffers_arrive_whole(
    virtual_sleep: ManualClock,
) -> None:
    big = node_json("big", 11)
    big["metadata"]["annotations"] = {"blob": "x" * 600_000}

    async def nodes(request: web.Request) -> web.StreamResponse:
        response = await open_stream(request)
        line = event_line("ADDED", big) + event_line("ADDED", node_json("small", 12))
        for start in range(0, len(line), 7_000):  # odd chunk boundaries
            await response.write(line[start : start + 7_000])
        return response

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        events = await take(client.watch(Node, resource_version="10"), 2)
    assert summary(events) == [("ADDED", "big", "11"), ("ADDED", "small", "12")]
    assert events[0].object is not None
    assert len(events[0].object.metadata.annotations["blob"]) == 600_000


# ----------------------------------------------------------------------------------- retries


async def test_reads_are_retried_after_a_dropped_connection(virtual_sleep: ManualClock) -> None:
    calls = 0

    async def get(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls < 3:
            drop(request)
            return web.Response()
        return web.json_response(node_json("a", 5))

    async with serve({("GET", f"{NODES}/a"): get}) as url, client_for(url, virtual_sleep) as client:
        got = await client.get(Node, "a")
    assert (got.metadata.name, got.metadata.resource_version, calls) == ("a", "5", 3)
    assert len(virtual_sleep.slept) == 2


async def test_reads_give_up_after_the_retry_budget(virtual_sleep: ManualClock) -> None:
    async def get(request: web.Request) -> web.StreamResponse:
        return status_response(503, "ServiceUnavailable")

    policy = RetryPolicy(max_unavailable_retries=3)
    async with (
        serve({("GET", f"{NODES}/a"): get}) as url,
        client_for(url, virtual_sleep, retry=policy) as client,
    ):
        with pytest.raises(Exception, match="503") as caught:
            await client.get(Node, "a")
    assert len(virtual_sleep.slept) == 3
    assert type(caught.value).__name__ == "ServerError"


async def test_a_write_whose_answer_is_lost_is_not_repeated_and_is_ambiguous(
    virtual_sleep: ManualClock,
) -> None:
    calls = 0

    async def create(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        await request.read()
        drop(request)  # the write may have been applied; the answer is lost
        return web.Response()

    async with serve({("POST", NODES): create}) as url, client_for(url, virtual_sleep) as client:
        with pytest.raises(ApiUnavailable) as caught:
            await client.create(node("a", ""))
    assert caught.value.ambiguous
    assert calls == 1


async def test_a_write_that_never_connected_is_retried_then_reported_unambiguous(
    virtual_sleep: ManualClock,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = RetryPolicy(max_unavailable_retries=2)
    async with client_for(f"http://127.0.0.1:{port}", virtual_sleep, retry=policy) as client:
        with pytest.raises(ApiUnavailable) as caught:
            await client.create(node("a", ""))
    assert not caught.value.ambiguous
    assert len(virtual_sleep.slept) == 2


async def test_throttled_writes_are_retried_after_retry_after(virtual_sleep: ManualClock) -> None:
    calls = 0

    async def create(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls < 3:
            return status_response(429, "TooManyRequests", headers={"Retry-After": "2"})
        return web.json_response(node_json("a", 9), status=201)

    async with serve({("POST", NODES): create}) as url, client_for(url, virtual_sleep) as client:
        created = await client.create(node("a", ""))
    assert created.metadata.resource_version == "9"
    assert virtual_sleep.slept == [2.0, 2.0]


async def test_throttling_retries_are_bounded(virtual_sleep: ManualClock) -> None:
    async def create(request: web.Request) -> web.StreamResponse:
        return status_response(429, "TooManyRequests", headers={"Retry-After": "1"})

    policy = RetryPolicy(max_throttle_retries=3)
    async with (
        serve({("POST", NODES): create}) as url,
        client_for(url, virtual_sleep, retry=policy) as client,
    ):
        with pytest.raises(TooManyRequests) as caught:
            await client.create(node("a", ""))
    assert caught.value.retry_after == 1.0
    assert virtual_sleep.slept == [1.0, 1.0, 1.0]


async def test_a_retry_after_beyond_the_limit_is_raised_not_waited_for(
    virtual_sleep: ManualClock,
) -> None:
    async def create(request: web.Request) -> web.StreamResponse:
        return status_response(429, "TooManyRequests", headers={"Retry-After": "600"})

    async with serve({("POST", NODES): create}) as url, client_for(url, virtual_sleep) as client:
        with pytest.raises(TooManyRequests):
            await client.create(node("a", ""))
    assert virtual_sleep.slept == []


# ----------------------------------------------------------------------------------- lists


async def test_list_follows_continue_tokens_and_keeps_the_first_version(
    virtual_sleep: ManualClock,
) -> None:
    pages = {"": (["a", "b"], "p2"), "p2": (["c", "d"], "p3"), "p3": (["e"], "")}

    async def nodes(request: web.Request) -> web.StreamResponse:
        assert request.query["limit"] == "2"
        assert request.query["labelSelector"] == "tier=web,zone=a"
        names, cont = pages[request.query.get("continue", "")]
        return list_response([node_json(n, 5) for n in names], 100, cont)

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        items, rv = await client.list(Node, label_selector={"tier": "web", "zone": "a"}, limit=2)
        paged = [
            [n.metadata.name for n in page.items]
            async for page in client.pages(Node, label_selector="tier=web,zone=a", limit=2)
        ]
    assert [n.metadata.name for n in items] == ["a", "b", "c", "d", "e"]
    assert rv == "100"
    assert paged == [["a", "b"], ["c", "d"], ["e"]]


async def test_list_starts_over_when_a_continue_token_expires(virtual_sleep: ManualClock) -> None:
    expired_once = False

    async def nodes(request: web.Request) -> web.StreamResponse:
        nonlocal expired_once
        cont = request.query.get("continue", "")
        if cont == "old" and not expired_once:
            expired_once = True
            return status_response(410, "Expired", "continue token expired")
        if cont == "":
            return list_response([node_json("a", 1)], 200 if expired_once else 100, "old")
        return list_response([node_json("b", 2)], 200, "")

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        items, rv = await client.list(Node, limit=1)
    assert ([n.metadata.name for n in items], rv) == (["a", "b"], "200")


async def test_a_first_page_that_is_expired_is_raised(virtual_sleep: ManualClock) -> None:
    async def nodes(request: web.Request) -> web.StreamResponse:
        return status_response(410, "Expired")

    async with serve({("GET", NODES): nodes}) as url, client_for(url, virtual_sleep) as client:
        with pytest.raises(Expired):
            await client.list(Node)


# ----------------------------------------------------------------------------------- writes


class Recorder:
    def __init__(self, answer: Callable[[web.Request, bytes], web.StreamResponse]) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.answer = answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        return self.answer(request, body)


def echo(request: web.Request, body: bytes) -> web.StreamResponse:
    if request.method == "GET":
        return web.json_response(
            {
                "kind": "Instance",
                "apiVersion": "keel.dev/v1",
                "metadata": {"name": "i", "namespace": "prod", "resourceVersion": "3"},
                "spec": {"command": ["true"]},
            }
        )
    if request.method == "DELETE":
        return web.Response(body=status_body(200, "", ""), content_type="application/json")
    data = json.loads(body) if body else {}
    if isinstance(data, dict) and "target" in data:  # a Binding
        return web.Response(body=status_body(201, "", ""), content_type="application/json")
    if request.headers.get("Content-Type", "").endswith("patch+json"):
        return web.json_response(
            {
                "kind": "Instance",
                "metadata": {"name": "i", "namespace": "prod", "resourceVersion": "4"},
                "spec": {"command": ["true"]},
            }
        )
    data.setdefault("metadata", {})["resourceVersion"] = "4"
    return web.json_response(data)


def instance(name: str = "i", namespace: str = "", rv: str = "") -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, namespace=namespace, resource_version=rv),
        spec=InstanceSpec(command=["true"]),
    )


async def test_fenced_view_adds_the_token_to_every_write_and_to_no_read(
    virtual_sleep: ManualClock,
) -> None:
    recorder = Recorder(echo)
    path = f"{BASE}/namespaces/{{ns}}/instances"
    routes = {
        ("POST", path): recorder.handle,
        ("GET", path + "/{name}"): recorder.handle,
        ("PUT", path + "/{name}"): recorder.handle,
        ("PATCH", path + "/{name}"): recorder.handle,
        ("DELETE", path + "/{name}"): recorder.handle,
        ("PUT", path + "/{name}/status"): recorder.handle,
        ("POST", path + "/{name}/binding"): recorder.handle,
    }
    async with serve(routes) as url, client_for(url, virtual_sleep) as client:
        async with client.fenced("keel-system", "scheduler", 42) as fenced:
            created = await fenced.create(instance(namespace="prod"))
            await fenced.get(Instance, "i", namespace="prod")
            await fenced.replace(created)
            await fenced.update_status(created)
            await fenced.patch(Instance, "i", {"spec": {"priority": 1}}, namespace="prod")
            await fenced.bind("prod", "i", "node-1", resource_version="4")
            await fenced.delete(Instance, "i", namespace="prod")
        with pytest.raises(RuntimeError, match="fenced"):
            await fenced.create(instance(namespace="prod"))
        await client.create(instance(namespace="prod"))  # the client itself is not fenced
    tokens = [(m, h.get("Keel-Fencing-Token")) for m, _, h, _ in recorder.seen]
    assert tokens == [
        ("POST", "keel-system/scheduler=42"),
        ("GET", None),
        ("PUT", "keel-system/scheduler=42"),
        ("PUT", "keel-system/scheduler=42"),
        ("PATCH", "keel-system/scheduler=42"),
        ("POST", "keel-system/scheduler=42"),
        ("DELETE", "keel-system/scheduler=42"),
        ("POST", None),
    ]
    assert all(h["Authorization"] == "Bearer t" for _, _, h, _ in recorder.seen)


async def test_write_requests_carry_the_wire_format_of_the_contract(
    virtual_sleep: ManualClock,
) -> None:
    recorder = Recorder(echo)
    path = f"{BASE}/namespaces/{{ns}}/instances"
    routes = {
        ("POST", path): recorder.handle,
        ("PATCH", path + "/{name}"): recorder.handle,
        ("DELETE", path + "/{name}"): recorder.handle,
        ("POST", path + "/{name}/binding"): recorder.handle,
    }
    async with serve(routes) as url, client_for(url, virtual_sleep, namespace="prod") as client:
        created = await client.create(instance())
        await client.patch(
            Instance, "i", [{"op": "replace", "path": "/spec/priority", "value": 2}], type="json"
        )
        await client.patch(Instance, "i", {"spec": {"priority": 3}})
        bound = await client.bind("prod", "i", "node-1", resource_version="4")
        deleted = await client.delete(
            Instance, "i", preconditions=Preconditions(uid="u1", resource_version="4")
        )
    assert created.metadata.namespace == "prod" and created.kind == "Instance"
    assert bound is None and deleted is None
    (_, create_path, create_headers, create_body), json_patch, merge_patch, binding, delete = (
        recorder.seen
    )
    assert create_path == f"{BASE}/namespaces/prod/instances"
    assert create_headers["Content-Type"] == "application/json"
    assert json.loads(create_body)["kind"] == "Instance"
    assert json.loads(create_body)["metadata"]["namespace"] == "prod"
    assert json_patch[2]["Content-Type"] == "application/json-patch+json"
    assert merge_patch[2]["Content-Type"] == "application/merge-patch+json"
    assert binding[1] == f"{BASE}/namespaces/prod/instances/i/binding"
    assert json.loads(binding[3]) == {
        "apiVersion": "keel.dev/v1",
        "kind": "Binding",
        "target": {"name": "node-1", "kind": "Node"},
        "metadata": {"name": "i", "namespace": "prod", "resourceVersion": "4"},
    }
    assert json.loads(delete[3]) == {"preconditions": {"uid": "u1", "resourceVersion": "4"}}


async def test_error_answers_raise_typed_errors(virtual_sleep: ManualClock) -> None:
    answers = {
        "gone": status_response(404, "NotFound", 'nodes "gone" not found'),
        "stale": status_response(409, "Conflict", "the object has been modified"),
        "fenced": status_response(409, "FencingTokenRejected", "token 3 is stale"),
    }

    async def put(request: web.Request) -> web.StreamResponse:
        return answers[request.match_info["name"]]

    async with (
        serve({("PUT", NODES + "/{name}"): put}) as url,
        client_for(url, virtual_sleep) as client,
    ):
        with pytest.raises(NotFound, match="not found"):
            await client.replace(node("gone", 1))
        with pytest.raises(Conflict):
            await client.replace(node("stale", 1))
        with pytest.raises(FencingTokenRejected):
            await client.replace(node("fenced", 1))


async def test_a_cluster_scoped_kind_refuses_a_namespace(virtual_sleep: ManualClock) -> None:
    async with client_for("http://127.0.0.1:9", virtual_sleep) as client:
        with pytest.raises(ValueError, match="cluster-scoped"):
            await client.get(Node, "a", namespace="prod")
        with pytest.raises(ValueError, match="unknown kind"):
            await client.get("gadgets", "a")


async def test_concurrent_requests_share_one_session(virtual_sleep: ManualClock) -> None:
    peers: set[Any] = set()

    async def get(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response(node_json(request.match_info["name"], 1))

    async with (
        serve({("GET", NODES + "/{name}"): get}) as url,
        client_for(url, virtual_sleep, connections=4) as client,
    ):
        for _ in range(5):
            got = await asyncio.gather(*(client.get(Node, f"n{i}") for i in range(20)))
            assert [n.metadata.name for n in got] == [f"n{i}" for i in range(20)]
    assert len(peers) <= 4  # keep-alive: connections are reused, never more than the limit
