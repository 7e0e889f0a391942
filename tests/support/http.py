"""A small urllib client for tests that look at the API on the wire: status codes, headers,
raw bodies and watch lines, exactly as a user's HTTP client would see them."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

V1 = "/apis/keel.dev/v1"
TIMEOUT = 30.0


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpClient:
    """Requests to `base` with a bearer token (none when `token` is None)."""

    base: str
    token: str | None
    context: ssl.SSLContext | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = TIMEOUT,
    ) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as answer:
                return Response(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read(), dict(exc.headers))

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("DELETE", path, body, **kw)

    def patch(self, path: str, body: Any, content_type: str, **kw: Any) -> Response:
        return self.request("PATCH", path, body, content_type=content_type, **kw)

    def object(self, path: str) -> dict[str, Any] | None:
        """The object at `path` as JSON, or None if it does not exist (404)."""
        answer = self.get(path)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise AssertionError(f"GET {path}: {answer.status} {answer.body!r}")
        found: dict[str, Any] = answer.json
        return found

    def watch(self, path: str, timeout: float = 10.0) -> WatchStream:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        return WatchStream(urllib.request.urlopen(request, timeout=timeout, context=self.context))


@dataclass
class WatchStream:
    """A streaming watch response, read one JSON line at a time."""

    response: Any
    seen: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        if not line:
            raise EOFError("the watch stream ended")
        event: dict[str, Any] = json.loads(line)
        self.seen.append(event)
        return event

    def until(self, matches: Callable[[dict[str, Any]], bool], limit: int = 1000) -> dict[str, Any]:
        for _ in range(limit):
            event = self.next()
            if matches(event):
                return event
        raise AssertionError(f"no matching event among {limit}")

    def close(self) -> None:
        self.response.close()


def lease_of(client: HttpClient, name: str = "controller-manager") -> dict[str, Any] | None:
    """The Lease `keel-system/NAME` as JSON, or None if there is none."""
    return client.object(f"{V1}/namespaces/keel-system/leases/{name}")
