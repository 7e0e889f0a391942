"""`keel dev ...`: developer tools (local etcd clusters)."""

from __future__ import annotations

import argparse
from typing import Any


def add_dev_commands(commands: Any) -> None:
    dev = commands.add_parser("dev", help="developer tools")
    sub = dev.add_subparsers(dest="dev_command", metavar="TOOL")
    sub.required = True
    etcd = sub.add_parser("etcd", help="run a local etcd cluster on loopback")
    etcd.add_argument("--members", type=int, default=1, help="cluster size (default 1)")
    etcd.add_argument("--dir", required=True, help="data directory for the members")
    etcd.set_defaults(run=run_etcd)


def run_etcd(args: argparse.Namespace) -> int:
    from keel.dev.etcd_cluster import run_foreground

    return run_foreground(args.dir, args.members)
