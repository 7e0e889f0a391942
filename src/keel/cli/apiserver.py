"""`keel apiserver`: serve the Keel API over a store until SIGINT/SIGTERM, after writing the
state dir's token file and admin kubeconfig. `keel up` runs the same `serve` in its own
process, with the same options (`add_serve_arguments`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.api import tls
from keel.api.admission import TokenBucketAdmission
from keel.api.auth import WatchedTokenFile
from keel.cli._state_dir import (
    DEFAULT_STATE_DIR,
    KUBECONFIG,
    TOKEN_FILE,
    ensure_tokens,
    write_kubeconfig,
)

DEFAULT_LISTEN = "127.0.0.1:7070"

log = logging.getLogger("keel.apiserver")


def _sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if str(path.parent) not in ("", "."):
            path.parent.mkdir(parents=True, exist_ok=True)


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
    compaction_interval: float = 60.0
    compaction_retention: float = 300.0
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
    options.state_dir.mkdir(parents=True, exist_ok=True)
    cert, key, ca_pem = serving_tls(options, host)
    token_path = options.token_file or options.state_dir / TOKEN_FILE
    admin = ensure_tokens(token_path)
    tokens = WatchedTokenFile(token_path)  # `keel node revoke` edits it while we serve

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    scheme = "https" if cert else "http"
    shown_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"{scheme}://{shown_host}:{bound}"
    write_kubeconfig(options.state_dir / KUBECONFIG, url, admin, ca_pem)

    _sqlite_dir(options.store)
    store = await open_store(options.store)
    api = ApiServer(
        store,
        tokens,
        max_object_bytes=options.max_object_bytes,
        admission=TokenBucketAdmission(options.admission_rate, options.admission_burst),
        compaction_interval=options.compaction_interval,
        compaction_retention=options.compaction_retention,
    )
    config = uvicorn.Config(
        api.app,
        loop="none",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=cert,
        ssl_keyfile=key,
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


def serving_tls(options: ServeOptions, host: str) -> tuple[str | None, str | None, bytes | None]:
    """(certificate file, key file, CA PEM for kubeconfigs) to serve with; (None, None, None)
    for plain HTTP, which only `--insecure` without certificate files asks for.

    Without `--tls-cert-file`/`--tls-key-file` the state dir's own CA signs a serving
    certificate (`keel.api.certs`), made on first start: a state dir from an older keel,
    which served plain HTTP, upgrades to TLS on its next start."""
    tls.check_pair(options.tls_cert, options.tls_key)
    if options.tls_cert and options.tls_key:
        tls.load_context(options.tls_cert, options.tls_key)
        # A certificate of one's own: the kubeconfig trusts it (or the chain it holds).
        return options.tls_cert, options.tls_key, Path(options.tls_cert).read_bytes()
    if options.insecure:
        if not tls.is_loopback(host):
            print(
                f"keel {options.command}: --insecure: serving plain HTTP on "
                f"{host or 'all interfaces'}; bearer tokens cross the network in clear text",
                file=sys.stderr,
                flush=True,
            )
        return None, None, None
    from keel.api.certs import ensure_serving_certificate

    files = ensure_serving_certificate(options.state_dir, host)
    if files.created_ca:
        print(
            f"keel {options.command}: created a certificate authority {files.ca_cert}", flush=True
        )
    elif files.issued:
        print(f"keel {options.command}: issued a serving certificate {files.cert}", flush=True)
    return str(files.cert), str(files.key), files.ca_pem


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


def run_server(coro: Coroutine[Any, Any, int]) -> int:
    """Run `serve(...)` on uvloop (asyncio's own loop if uvloop is missing)."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.run(coro)


def serve_options(args: argparse.Namespace, command: str) -> ServeOptions:
    """ServeOptions from the options `add_serve_arguments` declares."""
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
        compaction_interval=args.compaction_interval,
        compaction_retention=args.compaction_retention,
        clusters=getattr(args, "clusters", 0),
        command=command,
    )


def guarded(command: str, body: Callable[[], int]) -> int:
    """Run a serving command's body: an expected failure is one `keel COMMAND: ...` line and
    exit code 1, Ctrl-C before the server handles signals is 130."""
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
    return guarded("apiserver", lambda: run_server(serve(serve_options(args, "apiserver"))))


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `keel apiserver` and `keel up` share."""
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
    parser.add_argument(
        "--tls-cert",
        "--tls-cert-file",
        dest="tls_cert",
        default=None,
        help="serving certificate (default: STATE_DIR/tls/server.crt, signed by the state "
        "dir's own CA, made on first start)",
    )
    parser.add_argument("--tls-key", "--tls-key-file", dest="tls_key", default=None)
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plain HTTP instead of TLS (trusted networks only: kubectl sends no "
        "bearer token over plain HTTP)",
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
    parser.add_argument(
        "--compaction-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how often the store revision is sampled for compaction (default 60)",
    )
    parser.add_argument(
        "--compaction-retention",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="store history kept for watch resumes and paging (default 300); a watch from an "
        "older resourceVersion gets 410 Expired",
    )


def add_apiserver_command(commands: Any) -> None:
    apiserver = commands.add_parser(
        "apiserver", help="serve the Keel API over a store (one of many stateless replicas)"
    )
    add_serve_arguments(apiserver)
    apiserver.set_defaults(run=cmd_apiserver)
