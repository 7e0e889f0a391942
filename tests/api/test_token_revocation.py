"""Token files follow their file without a restart, and `keel node revoke NAME` takes a node's
credentials away: the file is rewritten atomically, the API server rereads it within a second,
and from then on every request of that node's agent is refused, watches included."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import V1, ApiServer, wait_for

from keel.api.auth import TokenFile, WatchedTokenFile, revoke_role

NODE = "n1"


def bearer(token: str) -> str:
    return f"Bearer {token}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def token_file(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "tokens.csv"
    admin = TokenFile.create(path)
    node = TokenFile.append(path, f"agent-{NODE}", f"node:{NODE}")
    return path, admin, node


def test_a_changed_token_file_is_reread_at_most_a_second_later(tmp_path: Path) -> None:
    path, admin, node = token_file(tmp_path)
    clock = Clock()
    tokens = WatchedTokenFile(path, clock=clock)
    assert tokens.authenticate(bearer(node)) is not None
    kept, removed = revoke_role(path.read_text(), f"node:{NODE}")
    assert removed == 1
    path.write_text(kept)
    clock.now = 0.5
    assert tokens.authenticate(bearer(node)) is not None  # not looked at yet
    clock.now = 1.0
    assert tokens.authenticate(bearer(node)) is None
    assert tokens.authenticate(bearer(admin)) is not None


def test_a_broken_or_missing_token_file_keeps_the_old_tokens_and_logs_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, admin, node = token_file(tmp_path)
    clock = Clock()
    tokens = WatchedTokenFile(path, clock=clock)
    with caplog.at_level(logging.ERROR, logger="keel.api.auth"):
        path.write_text("garbage without commas\n")
        clock.now = 1.0
        assert tokens.authenticate(bearer(node)) is not None
        assert "keeping the tokens read before" in caplog.text
        caplog.clear()
        clock.now = 2.0
        tokens.authenticate(bearer(node))
        assert caplog.text == ""  # said once per bad version of the file
        path.unlink()
        clock.now = 3.0
        assert tokens.authenticate(bearer(admin)) is not None
        assert "keeping the tokens read before" in caplog.text
    path.write_text(f"{admin},admin,admin\n")
    clock.now = 4.0
    assert tokens.authenticate(bearer(node)) is None
    assert tokens.authenticate(bearer(admin)) is not None


def test_revoke_role_keeps_every_other_line_as_it_was() -> None:
    text = "# comment\nt1,admin,admin\n\nt2,agent-n1,node:n1\nt3,agent-n10,node:n10\nt4,x,node:n1\n"
    kept, removed = revoke_role(text, "node:n1")
    assert removed == 2
    assert kept == "# comment\nt1,admin,admin\n\nt3,agent-n10,node:n10\n"


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel", *args], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_keel_node_revoke_refuses_every_request_of_the_node_within_a_second(
    tmp_path: Path,
) -> None:
    with ApiServer(tmp_path / "server", nodes=(NODE, "n2")) as server:
        agent = server.http(f"node:{NODE}")
        other = server.http("node:n2")
        assert agent.get(f"{V1}/nodes").status == 200
        listed = agent.get(f"{V1}/nodes").json
        watch = agent.watch(
            f"{V1}/nodes?watch=true&resourceVersion={listed['metadata']['resourceVersion']}"
        )
        done = keel("node", "revoke", NODE, "--token-file", str(server.token_file))
        assert done.returncode == 0, done.stderr
        assert f"revoked 1 token(s) of node:{NODE}" in done.stdout
        assert stat.S_IMODE(os.stat(server.token_file).st_mode) == 0o600
        revoked_at = time.monotonic()
        wait_for("the node's requests refused", lambda: agent.get(f"{V1}/nodes").status == 401)
        assert time.monotonic() - revoked_at < 2.5
        lease = {"metadata": {"name": NODE}, "spec": {"holderIdentity": NODE}}
        assert agent.post(f"{V1}/namespaces/keel-node-lease/leases", lease).status == 401
        assert other.get(f"{V1}/nodes").status == 200  # the other node is untouched
        assert server.http("admin").get(f"{V1}/nodes").status == 200
        # A watch opened before the revocation ends instead of delivering the next change.
        node = {"metadata": {"name": "after-revocation"}, "spec": {"cluster": "c1"}}
        assert server.http("admin").post(f"{V1}/nodes", node).status == 201
        with pytest.raises(EOFError):
            watch.next()
        watch.close()
        # Nothing left to revoke: says so and fails.
        again = keel("node", "revoke", NODE, "--state-dir", str(server.state_dir))
        assert again.returncode == 1 and "holds no token of node:n1" in again.stderr
