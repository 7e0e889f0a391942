"""`keel apiserver`, `keel up` and `keel boundary`: run the API server over a store, run the
one-machine platform (for now: the API server and its Cluster objects; agents come later),
and report store writes per kind against the registry's consensus boundary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from keel.api import tls
from keel.api.admission import TokenBucketAdmission
from keel.api.auth import TokenFile
from keel.api.registry import KINDS, TELEMETRY_KINDS
from keel.api.storage import ApiError

DEFAULT_LISTEN = "127.0.0.1:7070"
DEFAULT_STATE_DIR = ".keel"
TOKEN_FILE = "tokens.csv"
KUBECONFIG = "kubeconfig"
# Roles given a token when a state dir is first used; `keel up` hands them to components.
DEFAULT_PRINCIPALS = (
    ("controller", "controller"),
    ("scheduler", "scheduler"),
    ("viewer", "viewer"),
)

log = logging.getLogger("keel.apiserver")


# ------------------------------------------------------------------------- state dir


def read_tokens(path: Path) -> dict[str, tuple[str, str]]:
    """token -> (name, role) from a token file (the server itself only keeps digests)."""
    tokens: dict[str, tuple[str, str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            tokens[parts[0]] = (parts[1], parts[2])
    return tokens


def ensure_tokens(path: Path) -> str:
    """Create the token file on first use (admin, controller, scheduler, viewer), reuse it
    afterwards; returns an admin token."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        admin = TokenFile.create(path)
        for name, role in DEFAULT_PRINCIPALS:
            TokenFile.append(path, name, role)
        return admin
    for token, (_, role) in read_tokens(path).items():
        if role == "admin":
            return token
    raise ValueError(f"{path}: no admin token in the token file")


def write_kubeconfig(path: Path, server: str, token: str, ca_file: str | None = None) -> None:
    cluster: dict[str, Any] = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = str(Path(ca_file).resolve())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keel", "cluster": cluster}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "keel", "context": {"cluster": "keel", "user": "admin"}}],
        "current-context": "keel",
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    tmp.replace(path)


def _sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if str(path.parent) not in ("", "."):
            path.parent.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class ServeOptions:
    store: str
    listen: str
    state_dir: Path
    token_file: Path | None
    tls_cert: str | None
    tls_key: str | None
    insecure: bool
    max_object_bytes: int
    admission_rate: float = 200.0
    admission_burst: int = 400
    clusters: int = 0
    command: str = "apiserver"


async def serve(
    options: ServeOptions,
    after_ready: Callable[[Any], Coroutine[Any, Any, None]] | None = None,
    before_stop: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. `after_ready(api)` runs once the API is up;
    `before_stop()` runs on the signal, while the API still serves (`keel up` stops its
    agents there, so they can still report and release their leases)."""
    import uvicorn

    from keel.api.server import ApiServer
    from keel.store import open_store

    host, port = tls.split_listen(options.listen)
    tls.check_listen(host, options.tls_cert, options.tls_key, options.insecure)
    if options.tls_cert and options.tls_key:
        tls.load_context(options.tls_cert, options.tls_key)
    options.state_dir.mkdir(parents=True, exist_ok=True)
    token_path = options.token_file or options.state_dir / TOKEN_FILE
    admin = ensure_tokens(token_path)
    tokens = TokenFile.load(token_path)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    scheme = "https" if options.tls_cert else "http"
    shown_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"{scheme}://{shown_host}:{bound}"
    write_kubeconfig(options.state_dir / KUBECONFIG, url, admin, options.tls_cert)

    _sqlite_dir(options.store)
    store = await open_store(options.store)
    api = ApiServer(
        store,
        tokens,
        max_object_bytes=options.max_object_bytes,
        admission=TokenBucketAdmission(options.admission_rate, options.admission_burst),
    )
    config = uvicorn.Config(
        api.app,
        loop="none",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=options.tls_cert,
        ssl_keyfile=options.tls_key,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    ending: list[asyncio.Task[None]] = []

    async def shut_down() -> None:
        if before_stop is not None:
            try:
                await before_stop()
            except Exception:
                log.exception("stopping components failed")
        await api.end_watches()

    def on_signal() -> None:
        if ending:  # a second Ctrl-C: stop now
            server.request_exit()
            return
        task = asyncio.create_task(shut_down())
        # Streams still open when uvicorn's grace ends are cancelled on purpose; that is
        # not an error worth a traceback on the user's terminal.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        task.add_done_callback(lambda _: server.request_exit())
        ending.append(task)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    extra: asyncio.Task[None] | None = None
    try:
        await api.start()
        print(
            f"keel {options.command} listening on {url} (store {options.store}; "
            f"kubeconfig {options.state_dir / KUBECONFIG})",
            flush=True,
        )
        if after_ready is not None:
            extra = asyncio.create_task(after_ready(api))
        await server.serve(sockets=[sock])
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if extra is not None:
            extra.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await extra
        await api.stop()
        await store.close()
        sock.close()
    print(f"keel {options.command} stopped", flush=True)
    return 0


class _Server:
    """uvicorn without its own signal handling: ours stops it, then closes the store."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        self._server = Quiet(config)

    def request_exit(self) -> None:
        if self._server.should_exit:
            self._server.force_exit = True
        self._server.should_exit = True

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self._server.serve(sockets=sockets)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(coro)


def _options(args: argparse.Namespace, command: str) -> ServeOptions:
    state_dir = Path(args.state_dir)
    store = args.store or f"sqlite:///{state_dir / 'keel.db'}"
    return ServeOptions(
        store=store,
        listen=args.listen,
        state_dir=state_dir,
        token_file=Path(args.token_file) if args.token_file else None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        max_object_bytes=args.max_object_bytes,
        admission_rate=args.admission_rate,
        admission_burst=args.admission_burst,
        clusters=getattr(args, "clusters", 0),
        command=command,
    )


def _guarded(command: str, body: Callable[[], int]) -> int:
    from keel.store import StoreError

    logging.basicConfig(level=logging.WARNING, format=f"keel {command}: %(message)s")
    try:
        return body()
    except (ValueError, OSError, StoreError) as exc:
        print(f"keel {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def cmd_apiserver(args: argparse.Namespace) -> int:
    return _guarded("apiserver", lambda: _run(serve(_options(args, "apiserver"))))


def component_tokens(token_path: Path, items: list[Any]) -> dict[str, str]:
    """A token of its role for every component, added to the token file on first use and
    reused afterwards. Must run before the server loads the file."""
    by_name = {(name, role): token for token, (name, role) in read_tokens(token_path).items()}
    tokens: dict[str, str] = {}
    for item in items:
        name = item.name.split("/")[-1]
        token = by_name.get((name, item.role)) or by_name.get((item.role, item.role))
        if token is None:
            token = TokenFile.append(token_path, name, item.role)
        tokens[name] = token
    return tokens


def component_kubeconfigs(
    state_dir: Path, url: str, tokens: dict[str, str], ca_file: str | None
) -> None:
    """A kubeconfig per component: STATE/kubeconfigs/NAME."""
    directory = state_dir / "kubeconfigs"
    directory.mkdir(parents=True, exist_ok=True)
    for name, token in tokens.items():
        write_kubeconfig(directory / name, url, token, ca_file)


def cmd_up(args: argparse.Namespace) -> int:
    from keel.cli.up import Supervisor, components

    if args.clusters < 0 or args.nodes_per_cluster < 0:
        print("keel up: --clusters and --nodes-per-cluster must be >= 0", file=sys.stderr)
        return 1
    options = _options(args, "up")
    items = components(options.state_dir, options.clusters, args.nodes_per_cluster)
    supervisor = Supervisor(items, options.state_dir / "logs")
    token_path = options.token_file or options.state_dir / TOKEN_FILE
    ensure_tokens(token_path)
    tokens = component_tokens(token_path, items)  # before the server loads the file

    async def start_platform(api: Any) -> None:
        from keel.api.registry import BY_KIND
        from keel.api.resources import Cluster, ObjectMeta

        await api.ready.wait()
        info = BY_KIND["Cluster"]
        for i in range(1, options.clusters + 1):
            name = f"cluster-{i}"
            if await api.storage.read(info, "", name) is not None:
                continue
            with contextlib.suppress(ApiError):
                await api.storage.create(
                    info, Cluster(metadata=ObjectMeta(name=name)), namespace=""
                )
        url = load_kubeconfig(options.state_dir / KUBECONFIG)[0]
        component_kubeconfigs(options.state_dir, url, tokens, options.tls_cert)
        await supervisor.start()
        print(
            f"keel up: {options.clusters} cluster(s), {len(items) - 2} node agent(s), "
            f"controller-manager and scheduler started (logs in {options.state_dir / 'logs'})",
            flush=True,
        )
        if args.apply:
            await apply_and_report(args.apply, options.state_dir / KUBECONFIG)

    return _guarded("up", lambda: _run(serve(options, start_platform, supervisor.stop)))


async def apply_and_report(path: str, kubeconfig: Path) -> None:
    """`keel up --apply FILE`: apply it, then say how to reach its Services."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keel", "apply", "-f", path, "--kubeconfig", str(kubeconfig)
    )
    if await proc.wait() != 0:
        print(f"keel up: applying {path} failed (see above)", flush=True)
        return
    from keel.cli.up import report_services

    await report_services(path, kubeconfig)


# ------------------------------------------------------------------------- boundary


def parse_store_writes(metrics_text: str) -> dict[str, dict[str, int]]:
    """kind -> verb -> count from `keel_store_writes_total` samples."""
    writes: dict[str, dict[str, int]] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("keel_store_writes_total{"):
            continue
        labels_text, _, value = line[len("keel_store_writes_total{") :].rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
        kind = labels.get("kind", "").strip('"')
        verb = labels.get("verb", "").strip('"')
        writes.setdefault(kind, {})[verb] = int(float(value))
    return writes


def boundary_report(writes: dict[str, dict[str, int]]) -> str:
    """The per-kind write report: storage class, why it needs consensus, writes per verb."""
    rows = [("KIND", "STORAGE", "WRITES", "BY VERB", "WHY")]
    for info in KINDS:
        verbs = writes.get(info.kind, {})
        by_verb = " ".join(f"{v}={n}" for v, n in sorted(verbs.items())) or "-"
        rows.append((info.kind, info.storage.value, str(sum(verbs.values())), by_verb, info.why))
    for name, why in TELEMETRY_KINDS.items():
        rows.append((name, "memory", "0", "-", why + " (never stored)"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row))
        for row in rows
    ]
    total = sum(sum(v.values()) for v in writes.values())
    lines.append(f"\ntotal store writes by this API server since it started: {total}")
    return "\n".join(lines)


def load_kubeconfig(path: Path) -> tuple[str, str, str | None]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        cluster = config["clusters"][0]["cluster"]
        token = config["users"][0]["user"]["token"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{path}: not a kubeconfig with clusters[0] and users[0]") from None
    return str(cluster["server"]), str(token), cluster.get("certificate-authority")


def cmd_boundary(args: argparse.Namespace) -> int:
    def body() -> int:
        kubeconfig = Path(args.kubeconfig or Path(DEFAULT_STATE_DIR) / KUBECONFIG)
        server, token, ca = (None, None, None)
        if kubeconfig.exists():
            server, token, ca = load_kubeconfig(kubeconfig)
        server = args.server or server
        token = args.token or token
        if not server:
            raise ValueError(f"no --server given and no kubeconfig at {kubeconfig}")
        request = urllib.request.Request(
            server.rstrip("/") + "/metrics",
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        context = ssl.create_default_context(cafile=ca) if ca else None
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            text = response.read().decode()
        writes = parse_store_writes(text)
        if args.output == "json":
            print(json.dumps(writes, indent=2, sort_keys=True))
        else:
            print(boundary_report(writes))
        return 0

    return _guarded("boundary", body)


# ------------------------------------------------------------------------- argparse


def _serve_arguments(parser: argparse.ArgumentParser, *, up: bool) -> None:
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"tokens, kubeconfig and (by default) the sqlite store (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT (default {DEFAULT_LISTEN}; port 0: any)",
    )
    parser.add_argument(
        "--store", default=None, help="store URL (default sqlite:///STATE_DIR/keel.db)"
    )
    parser.add_argument(
        "--token-file", default=None, help="token file (default STATE_DIR/tokens.csv)"
    )
    parser.add_argument("--tls-cert", "--tls-cert-file", dest="tls_cert", default=None)
    parser.add_argument("--tls-key", "--tls-key-file", dest="tls_key", default=None)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (trusted networks only)",
    )
    parser.add_argument(
        "--max-object-bytes",
        type=int,
        default=1024 * 1024,
        help="largest encoded object accepted (default 1 MiB); larger writes get 413",
    )
    parser.add_argument(
        "--admission-rate",
        type=float,
        default=200.0,
        help="requests per second admitted per principal (default 200); beyond: 429",
    )
    parser.add_argument(
        "--admission-burst", type=int, default=400, help="burst per principal (default 400)"
    )
    if up:
        parser.add_argument("--clusters", type=int, default=2, help="clusters (default 2)")
        parser.add_argument(
            "--nodes-per-cluster", type=int, default=2, help="node agents per cluster (default 2)"
        )
        parser.add_argument(
            "--apply", default=None, metavar="FILE", help="apply FILE once the platform is up"
        )


def add_apiserver_commands(commands: Any) -> None:
    apiserver = commands.add_parser(
        "apiserver", help="serve the Keel API over a store (one of many stateless replicas)"
    )
    _serve_arguments(apiserver, up=False)
    apiserver.set_defaults(run=cmd_apiserver)

    up = commands.add_parser(
        "up",
        help="the platform on one machine: API server over an embedded store, "
        "controller-manager, scheduler and node agents",
    )
    _serve_arguments(up, up=True)
    up.set_defaults(run=cmd_up)

    boundary = commands.add_parser(
        "boundary", help="store writes per kind, against the registry's consensus boundary"
    )
    boundary.add_argument("--server", default=None, help="API server URL")
    boundary.add_argument("--token", default=None, help="bearer token")
    boundary.add_argument(
        "--kubeconfig", default=None, help=f"kubeconfig (default {DEFAULT_STATE_DIR}/{KUBECONFIG})"
    )
    boundary.add_argument("-o", "--output", choices=("table", "json"), default="table")
    boundary.set_defaults(run=cmd_boundary)
