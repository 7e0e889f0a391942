"""The process `keel verify` deploys: it logs its own start, heartbeats and stop.

`python -m keel.verify.probe --log FILE --workload NAME` appends one JSON line per event to
FILE, outside Keel, with the machine's CLOCK_MONOTONIC (one clock for every namespace), so
the exclusive and duplicate checkers judge what really ran, not what Keel believed. It also
serves HTTP on $PORT when the agent assigned one, so health checks and Endpoints are real.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keel.verify.probe")
    parser.add_argument("--log", required=True, help="JSON-lines file to append to")
    parser.add_argument("--workload", default="exclusive")
    parser.add_argument("--beat", type=float, default=0.2, help="seconds between heartbeats")
    parser.add_argument("--instance", default="", help="instance name (default $KEEL_INSTANCE)")
    args = parser.parse_args(argv)
    node = os.environ.get("KEEL_NODE", "by-hand")
    instance = args.instance or os.environ.get("KEEL_INSTANCE", "unknown")
    uid = os.environ.get("KEEL_INSTANCE_UID", f"by-hand/{instance}")
    copy = f"{node}/{os.getpid()}/{time.monotonic_ns()}"
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(kind: str) -> None:
        line = {
            "workload": args.workload,
            "type": kind,
            "copy": copy,
            "node": node,
            "instance": instance,
            "pid": os.getpid(),
            "uid": uid,
            "time": time.monotonic_ns(),
        }
        # One write(2) per line on an O_APPEND file: lines of concurrent copies never mix.
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = os.environ.get("PORT")
    if port:
        server = ThreadingHTTPServer(("127.0.0.1", int(port)), _Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    emit("start")
    while not stopping.wait(args.beat):
        emit("beat")
    emit("stop")
    os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
