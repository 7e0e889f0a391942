"""`keel boundary`: the store writes per kind an API server has counted since it started,
read from its /metrics, beside the registry's storage class and the reason for each kind.
"""

from __future__ import annotations

import argparse
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from keel.api.registry import KINDS, TELEMETRY_KINDS
from keel.cli._state_dir import DEFAULT_STATE_DIR, KUBECONFIG, load_kubeconfig
from keel.cli.apiserver import guarded


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
        context = ssl.create_default_context(cadata=ca.decode()) if ca else None
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            text = response.read().decode()
        writes = parse_store_writes(text)
        if args.output == "json":
            print(json.dumps(writes, indent=2, sort_keys=True))
        else:
            print(boundary_report(writes))
        return 0

    return guarded("boundary", body)


def add_boundary_command(commands: Any) -> None:
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
