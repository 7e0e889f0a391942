"""The dashboard's routes on a real `keel apiserver`, on the wire: its files, logging in with
a token or a one-time code, the session's role, and the live stream."""

from __future__ import annotations

import time
from typing import Any

from support import V1, ApiServer, HttpClient

from keel.api.sessions import login_link


def session_for(
    apiserver: ApiServer, body: object, token: str | None
) -> tuple[int, dict[str, Any]]:
    client = HttpClient(apiserver.url, token, apiserver.ssl_context)
    answer = client.request("POST", "/ui/api/session", body)
    return answer.status, answer.json


def test_the_pages_are_served_without_a_token_and_without_outside_sources(
    apiserver: ApiServer,
) -> None:
    anonymous = apiserver.http(None)
    page = anonymous.get("/ui/")
    assert page.status == 200
    assert b'<script type="module" src="js/app.js">' in page.body
    headers = {k.lower(): v for k, v in page.headers.items()}
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    script = anonymous.get("/ui/js/app.js")
    assert script.status == 200
    assert {k.lower(): v for k, v in script.headers.items()}["content-type"].startswith(
        "text/javascript"
    )
    assert b"http://" not in script.body and b"https://" not in script.body, "relative URLs"
    assert anonymous.get("/ui/../tokens.csv").status == 404
    assert anonymous.get("/ui/js/nothing.js").status == 404


def test_a_pasted_token_becomes_a_session_with_the_tokens_role(apiserver: ApiServer) -> None:
    status, answer = session_for(apiserver, {}, apiserver.token("viewer"))
    assert status == 200, answer
    assert answer["role"] == "viewer" and answer["canAct"] is False
    session = HttpClient(apiserver.url, answer["token"], apiserver.ssl_context)
    assert session.get(f"{V1}/nodes").status == 200
    assert session.get("/ui/api/whoami").json["name"] == "viewer"
    refused = session.post(f"{V1}/namespaces/default/services", {"metadata": {"name": "s"}})
    assert refused.status == 403
    assert "may only get, list and watch" in refused.json["message"]
    status, answer = session_for(apiserver, {}, "not-a-token")
    assert status == 401


def test_a_login_code_works_once(apiserver: ApiServer) -> None:
    link = login_link(apiserver.url, apiserver.token("admin"), time.time())
    code = link.split("#login=")[1]
    status, answer = session_for(apiserver, {"code": code}, None)
    assert status == 200, answer
    assert answer["role"] == "admin" and answer["canAct"] is True
    status, answer = session_for(apiserver, {"code": code}, None)
    assert status == 401
    assert "used already" in answer["message"]
    expired = login_link(apiserver.url, apiserver.token("admin"), time.time() - 3600)
    status, answer = session_for(apiserver, {"code": expired.split("#login=")[1]}, None)
    assert status == 401 and "expired" in answer["message"]
    status, answer = session_for(apiserver, {"code": 5}, None)
    assert status == 400 and "code" in answer["message"]


def test_the_live_stream_pushes_the_boundary_and_names_bad_topics(apiserver: ApiServer) -> None:
    admin = apiserver.http("admin")
    assert admin.get("/ui/api/live?topics=weather").status == 400
    assert apiserver.http(None).get("/ui/api/live").status == 401
    admin.post(f"{V1}/namespaces/default/services", {"metadata": {"name": "live-svc"}})
    stream = admin.watch("/ui/api/live?topics=boundary")
    try:
        storage = stream.next()
        assert storage["type"] == "storage"
        assert {"kind": "Lease", "storage": "consensus-leased"}.items() <= next(
            row for row in storage["items"] if row["kind"] == "Lease"
        ).items()
        boundary = stream.until(lambda m: m["type"] == "boundary")
        assert boundary["totals"]["Service"]["create"] >= 1
        assert boundary["perMinute"]["Service"]["create"] >= 1
        assert stream.until(lambda m: m["type"] == "tick")["now"] > 0
    finally:
        stream.close()


def test_keel_ui_prints_a_link_whose_code_logs_in(apiserver: ApiServer) -> None:
    import subprocess
    import sys

    printed = subprocess.run(
        [sys.executable, "-m", "keel", "ui", "--kubeconfig", str(apiserver.kubeconfig)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    link = printed.stdout.strip()
    assert link.startswith(f"{apiserver.url}/ui/#login=kl1."), link
    status, answer = session_for(apiserver, {"code": link.split("#login=")[1]}, None)
    assert status == 200 and answer["role"] == "admin"
    missing = subprocess.run(
        [sys.executable, "-m", "keel", "ui", "--kubeconfig", "/nonexistent/kubeconfig"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "no kubeconfig at /nonexistent/kubeconfig" in missing.stderr


def test_the_live_stream_pushes_lease_renewals_as_they_happen(apiserver: ApiServer) -> None:
    admin = apiserver.http("admin")
    path = f"{V1}/namespaces/default/leases"
    lease = {"metadata": {"name": "ui-lease"}, "spec": {"holderIdentity": "me",
             "leaseDurationSeconds": 30}}  # fmt: skip
    created = admin.post(path, lease)
    assert created.status == 201, created.body
    token = created.json["status"]["fencingToken"]
    stream = admin.watch("/ui/api/live?topics=leases")
    try:
        assert stream.next()["type"] == "renewals"  # what was renewed before, maybe nothing
        before = time.time()
        renewal = {"holderIdentity": "me", "fencingToken": token}
        assert admin.post(f"{path}/ui-lease/renew", renewal).status == 200
        pushed = stream.until(
            lambda m: m["type"] == "renewals" and "default/ui-lease" in m["items"]
        )
        assert pushed["items"]["default/ui-lease"] >= before - 1
    finally:
        stream.close()
