"""Bearer-token authentication and the role table of DESIGN.md section 4, checked
exhaustively against an independent statement of each role's rights."""

from __future__ import annotations

import itertools
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from keel.api import tls
from keel.api.auth import (
    NODE_LEASE_NAMESPACE,
    Principal,
    Request,
    TokenFile,
    TokenFileError,
    Verb,
    authorize,
)
from keel.api.registry import BY_PLURAL, KINDS, KindInfo

VERBS: tuple[Verb, ...] = ("get", "list", "watch", "create", "update", "patch", "delete", "renew")
PARTS: tuple[str | None, ...] = (None, "status", "binding")
KIND_CHOICES: tuple[KindInfo | None, ...] = (*KINDS, None)  # None: telemetry
NODE = "n1"
OTHER = "n2"

ADMIN = Principal("alice", "admin")
VIEWER = Principal("vic", "viewer")
CONTROLLER = Principal("cm", "controller")
SCHEDULER = Principal("sched", "scheduler")
NODE1 = Principal("agent-n1", "node", NODE)


# --------------------------------------------------------------------------- token file


def test_token_file_maps_tokens_to_principals() -> None:
    tokens = TokenFile.parse(
        "# comment line\n"
        "\n"
        "t-admin,alice,admin\n"
        "  t-view , vic , viewer  \n"
        "t-ctl,cm,controller\n"
        "t-sched,sched,scheduler\n"
        "t-node,agent-n1,node:n1\n"
    )
    assert len(tokens) == 5
    assert tokens.authenticate("Bearer t-admin") == ADMIN
    assert tokens.authenticate("Bearer t-view") == VIEWER
    assert tokens.authenticate("bearer t-ctl") == CONTROLLER
    assert tokens.authenticate("Bearer t-sched") == SCHEDULER
    assert tokens.authenticate("Bearer t-node") == NODE1


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic t-admin", "t-admin", "Bearer t-admi", "Bearer x"],
)
def test_missing_malformed_or_unknown_credentials_authenticate_nobody(
    header: str | None,
) -> None:
    tokens = TokenFile.parse("t-admin,alice,admin\n")
    assert tokens.authenticate(header) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tok,alice\n", r"<tokens>:1: expected 3 comma-separated fields 'token,name,role', got 2"),
        ("# c\ntok,a,admin,extra\n", r"<tokens>:2: expected 3 comma-separated fields"),
        (",alice,admin\n", r"<tokens>:1: expected a non-empty token"),
        ("to k,alice,admin\n", r"<tokens>:1: expected a non-empty token without spaces"),
        ("tok,,admin\n", r"<tokens>:1: expected a non-empty name"),
        ("\n\ntok,alice,root\n", r"<tokens>:3: role 'root': expected one of admin, viewer"),
        ("tok,alice,node\n", r"<tokens>:1: role 'node': expected one of"),
        ("tok,alice,node:\n", r"<tokens>:1: role 'node:': the node name after 'node:'"),
        ("tok,alice,node:N_1\n", r"<tokens>:1: role 'node:N_1': the node name"),
        ("tok,a,admin\ntok,b,viewer\n", r"<tokens>:2: duplicate token"),
    ],
)
def test_token_file_errors_name_the_line_and_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(TokenFileError, match=expected):
        TokenFile.parse(text)


def test_created_token_file_is_private_and_holds_one_admin_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    token = TokenFile.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    tokens = TokenFile.load(path)
    assert len(tokens) == 1
    principal = tokens.authenticate(f"Bearer {token}")
    assert principal is not None and principal.role == "admin"


def test_create_never_overwrites_an_existing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    token = TokenFile.create(path)
    with pytest.raises(FileExistsError):
        TokenFile.create(path)
    assert TokenFile.load(path).authenticate(f"Bearer {token}") is not None


def test_appended_tokens_authenticate_as_their_role(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    admin = TokenFile.create(path)
    node = TokenFile.append(path, "agent-n1", "node:n1")
    sched = TokenFile.append(path, "sched", "scheduler")
    with pytest.raises(ValueError, match="role 'boss'"):
        TokenFile.append(path, "x", "boss")
    tokens = TokenFile.load(path)
    assert len(tokens) == 3 and admin != node != sched
    assert tokens.authenticate(f"Bearer {node}") == NODE1
    assert tokens.authenticate(f"Bearer {sched}") == SCHEDULER


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text("a,b,c,d\n")
    with pytest.raises(TokenFileError, match=rf"^{path}:1: "):
        TokenFile.load(path)


def test_principal_requires_a_node_name_exactly_for_role_node() -> None:
    with pytest.raises(ValueError, match="node"):
        Principal("x", "node")
    with pytest.raises(ValueError, match="node"):
        Principal("x", "admin", "n1")
    assert str(NODE1) == "agent-n1 (node:n1)"


# --------------------------------------------------------------------------- role table


def expected_allowed(principal: Principal, request: Request) -> bool:
    """Each role's rights as DESIGN.md section 4 and the contract state them, in prose order."""
    verb, sub = request.verb, request.subresource
    kind = request.kind.plural if request.kind else "telemetry"
    reads = verb in ("get", "list", "watch")
    writes = verb in ("create", "update", "patch", "delete")
    telemetry_write = kind == "telemetry" and verb in ("create", "update") and sub is None
    if principal.role == "admin":
        return True
    if reads:  # every role reads everything
        return True
    if principal.role == "viewer":
        return False
    if principal.role == "controller":
        if kind == "telemetry":
            return telemetry_write
        return (writes and sub in (None, "status")) or (
            verb == "renew" and kind == "leases" and sub is None
        )
    if principal.role == "scheduler":
        return (
            (kind == "instances" and sub in ("binding", "eviction") and verb == "create")
            or (kind == "instances" and sub == "status" and verb in ("update", "patch"))
            or (kind == "leases" and sub is None and (writes or verb == "renew"))
            or telemetry_write
        )
    assert principal.role == "node"
    own_node = kind == "nodes" and request.name == principal.node
    own_lease = (
        kind == "leases"
        and request.namespace == NODE_LEASE_NAMESPACE
        and request.name == principal.node
    )
    bound = kind == "instances" and request.node_name == principal.node
    return (
        (own_node and sub in (None, "status") and verb in ("create", "update", "patch"))
        or (own_lease and sub is None and (writes or verb == "renew"))
        or (bound and sub == "status" and verb in ("update", "patch"))
        or (telemetry_write and request.telemetry_node == principal.node)
    )


def all_requests() -> list[Request]:
    requests = []
    namespaces = (None, "default", NODE_LEASE_NAMESPACE)
    names = (None, NODE, OTHER)
    node_names = (None, "", NODE, OTHER)
    for verb, kind, part, ns, name in itertools.product(
        VERBS, KIND_CHOICES, PARTS, namespaces, names
    ):
        if kind is None:  # telemetry: the node it is about matters, not nodeName
            for about in (None, NODE, OTHER):
                requests.append(Request(verb, None, ns, name, part, telemetry_node=about))
        else:
            for node_name in node_names:
                requests.append(Request(verb, kind, ns, name, part, node_name=node_name))
    return requests


ALL_REQUESTS = all_requests()


@pytest.mark.parametrize(
    "principal", [ADMIN, VIEWER, CONTROLLER, SCHEDULER, NODE1], ids=lambda p: p.role
)
def test_role_table_matches_the_contract_for_every_combination(principal: Principal) -> None:
    mismatches = []
    for request in ALL_REQUESTS:
        reason = authorize(principal, request)
        if (reason is None) != expected_allowed(principal, request):
            mismatches.append((request, reason))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]}"
    assert len(ALL_REQUESTS) > 5000


def test_admin_may_do_everything() -> None:
    assert all(authorize(ADMIN, r) is None for r in ALL_REQUESTS)


def test_every_role_reads_everything() -> None:
    reads = [r for r in ALL_REQUESTS if r.verb in ("get", "list", "watch")]
    for principal in (VIEWER, CONTROLLER, SCHEDULER, NODE1):
        assert all(authorize(principal, r) is None for r in reads)


def test_viewer_writes_nothing_and_is_told_why() -> None:
    reason = authorize(VIEWER, Request("create", BY_PLURAL["deployments"], "default", "web", None))
    assert reason == (
        "vic (viewer) may not create deployments/web in namespace default: "
        "a viewer may only get, list and watch"
    )


def test_controller_may_not_bind_instances() -> None:
    for verb in VERBS:
        request = Request(verb, BY_PLURAL["instances"], "default", "i", "binding")
        assert (authorize(CONTROLLER, request) is None) == (verb in ("get", "list", "watch"))


def test_controller_writes_every_kind_and_its_status() -> None:
    for info in KINDS:
        for verb in ("create", "update", "patch", "delete"):
            assert authorize(CONTROLLER, Request(verb, info, "default", "x", None)) is None
            assert authorize(CONTROLLER, Request(verb, info, "default", "x", "status")) is None


def test_scheduler_binds_instances_writes_their_status_and_its_lease_only() -> None:
    instances, leases = BY_PLURAL["instances"], BY_PLURAL["leases"]
    assert authorize(SCHEDULER, Request("create", instances, "default", "i", "binding")) is None
    assert authorize(SCHEDULER, Request("create", instances, "default", "i", "eviction")) is None
    assert authorize(SCHEDULER, Request("patch", instances, "default", "i", "status")) is None
    assert authorize(SCHEDULER, Request("renew", leases, "keel-system", "sched", None)) is None
    assert authorize(SCHEDULER, Request("update", instances, "default", "i", None)) is not None
    assert authorize(SCHEDULER, Request("delete", instances, "default", "i", None)) is not None
    for info in KINDS:
        if info.plural != "leases":
            assert authorize(SCHEDULER, Request("create", info, "default", "x", None)) is not None


def test_node_writes_only_its_own_node() -> None:
    nodes = BY_PLURAL["nodes"]
    for verb in ("create", "update", "patch"):
        assert authorize(NODE1, Request(verb, nodes, None, NODE, None)) is None
        assert authorize(NODE1, Request(verb, nodes, None, NODE, "status")) is None
        assert authorize(NODE1, Request(verb, nodes, None, OTHER, None)) is not None
        assert authorize(NODE1, Request(verb, nodes, None, OTHER, "status")) is not None
    assert authorize(NODE1, Request("delete", nodes, None, NODE, None)) is not None
    assert authorize(NODE1, Request("create", nodes, None, None, None)) is not None


def test_node_writes_only_the_lease_named_after_it_in_the_node_lease_namespace() -> None:
    leases = BY_PLURAL["leases"]
    for verb in ("create", "update", "patch", "delete", "renew"):
        assert authorize(NODE1, Request(verb, leases, NODE_LEASE_NAMESPACE, NODE, None)) is None
        assert authorize(NODE1, Request(verb, leases, NODE_LEASE_NAMESPACE, OTHER, None))
        assert authorize(NODE1, Request(verb, leases, "default", NODE, None))
        assert authorize(NODE1, Request(verb, leases, "keel-system", NODE, None))


def test_node_writes_status_only_of_instances_bound_to_it() -> None:
    instances = BY_PLURAL["instances"]
    for verb in ("update", "patch"):
        mine = Request(verb, instances, "default", "web-1", "status", node_name=NODE)
        assert authorize(NODE1, mine) is None
        for other in (OTHER, "", None):
            theirs = Request(verb, instances, "default", "web-1", "status", node_name=other)
            assert authorize(NODE1, theirs) is not None
        # never the spec, even of its own instances, nor the binding
        spec = Request(verb, instances, "default", "web-1", None, node_name=NODE)
        assert authorize(NODE1, spec) is not None
    bind = Request("create", instances, "default", "web-1", "binding", node_name=NODE)
    assert authorize(NODE1, bind) is not None


def test_a_node_named_like_an_instance_gains_nothing() -> None:
    # the instance is named NODE but bound elsewhere: the name is not what counts
    instances = BY_PLURAL["instances"]
    request = Request("patch", instances, "default", NODE, "status", node_name=OTHER)
    assert authorize(NODE1, request) is not None


def test_node_writes_telemetry_only_about_itself() -> None:
    for verb in ("create", "update"):
        assert authorize(NODE1, Request(verb, None, None, NODE, None, telemetry_node=NODE)) is None
        assert authorize(NODE1, Request(verb, None, None, NODE, None, telemetry_node=OTHER))
        assert authorize(NODE1, Request(verb, None, None, NODE, None, telemetry_node=None))


def test_node_may_not_write_other_kinds() -> None:
    for info in KINDS:
        if info.plural in ("nodes", "leases", "instances"):
            continue
        for verb in ("create", "update", "patch", "delete"):
            reason = authorize(NODE1, Request(verb, info, "default", NODE, None))
            assert reason is not None and "a node may write only its own Node" in reason


# --------------------------------------------------------------------------- TLS listen policy
# (keel.api.tls: TLS by default; plain HTTP only with --insecure)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::1%lo"]
)
def test_loopback_addresses_are_recognised(host: str) -> None:
    assert tls.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.5", "192.168.1.2", "api.example"])
def test_other_addresses_are_not_loopback(host: str) -> None:
    # serving them without TLS (--insecure) is warned about
    assert not tls.is_loopback(host)


def test_a_certificate_needs_its_key_and_the_key_its_certificate() -> None:
    with pytest.raises(ValueError, match="--tls-cert-file was given without --tls-key-file"):
        tls.check_pair("cert.pem", None)
    with pytest.raises(ValueError, match="--tls-key-file was given without --tls-cert-file"):
        tls.check_pair(None, "key.pem")
    tls.check_pair(None, None)
    tls.check_pair("cert.pem", "key.pem")
    with pytest.raises(ValueError, match="both"):
        tls.uvicorn_ssl_kwargs("cert.pem", None)


def test_uvicorn_kwargs_serve_tls_only_when_files_are_given() -> None:
    assert tls.uvicorn_ssl_kwargs(None, None) == {}
    assert tls.uvicorn_ssl_kwargs(Path("/c.pem"), "/k.pem") == {
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
    }


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        ("[::1]:7070", ("::1", 7070)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        (":8080", ("", 8080)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses_split_into_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert tls.split_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:http", "expected HOST:PORT"),
        ("127.0.0.1:70000", "port must be"),
        ("::1:7070", "IPv6 host in brackets"),
    ],
)
def test_bad_listen_addresses_are_explained(listen: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tls.split_listen(listen)


def handshake(server: ssl.SSLContext, cafile: Path) -> str:
    """A TLS handshake in memory with a client trusting `cafile`; the server's common name."""
    client = ssl.create_default_context(cafile=str(cafile))
    pipes = (ssl.MemoryBIO(), ssl.MemoryBIO())  # client -> server, server -> client
    near = client.wrap_bio(pipes[1], pipes[0], server_hostname="localhost")
    far = server.wrap_bio(pipes[0], pipes[1], server_side=True)
    for _ in range(10):
        done = True
        for side in (near, far):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        if done:
            break
    subject = dict(field[0] for field in near.getpeercert()["subject"])
    return str(subject["commonName"])


def test_certificate_files_are_checked_at_start_up(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert handshake(tls.load_context(cert, key), cafile=cert) == "localhost"
    with pytest.raises(ValueError, match="no such file"):
        tls.load_context(tmp_path / "missing.pem", key)
    with pytest.raises(ValueError, match="not a matching PEM certificate and private key"):
        tls.load_context(key, key)


def test_tokens_are_held_only_as_digests() -> None:
    tokens = TokenFile.parse("t-secret-admin,alice,admin\n")
    assert "t-secret-admin" not in repr(vars(tokens))
    assert tokens.authenticate("Bearer t-secret-admin") == ADMIN
