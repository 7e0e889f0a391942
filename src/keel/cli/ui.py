"""`keel ui`: print a fresh link to the web dashboard, carrying a one-time login code for the
token of a kubeconfig (the state dir's admin by default); `keel up` prints one at start.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from keel.api.sessions import LOGIN_TTL, login_link
from keel.cli._state_dir import DEFAULT_STATE_DIR, KUBECONFIG, load_kubeconfig
from keel.cli.apiserver import guarded


def cmd_ui(args: argparse.Namespace) -> int:
    def body() -> int:
        kubeconfig = Path(args.kubeconfig or Path(DEFAULT_STATE_DIR) / KUBECONFIG)
        if not kubeconfig.exists():
            raise ValueError(f"no kubeconfig at {kubeconfig} (start `keel up`, or --kubeconfig)")
        server, token, _ = load_kubeconfig(kubeconfig)
        if args.ttl <= 0:
            raise ValueError(f"--ttl: expected a positive number of seconds, got {args.ttl}")
        print(login_link(server, token, time.time(), args.ttl))
        return 0

    return guarded("ui", body)


def add_ui_command(commands: Any) -> None:
    ui = commands.add_parser(
        "ui", help="print a link to the web dashboard with a one-time login code"
    )
    ui.add_argument(
        "--kubeconfig", default=None, help=f"kubeconfig (default {DEFAULT_STATE_DIR}/{KUBECONFIG})"
    )
    ui.add_argument(
        "--ttl",
        type=float,
        default=LOGIN_TTL,
        help=f"seconds the code stays valid (default {LOGIN_TTL:.0f}); it works once",
    )
    ui.set_defaults(run=cmd_ui)
