"""`keel node revoke NAME`: take a node's credentials away. Every token of role `node:NAME`
leaves the token file (rewritten atomically); API servers reading that file reread it within
a second and refuse the agent's every request from then on (401), renewals of its node lease
included, so the node turns NotReady and its instances move while it stays shut out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from keel.cli._state_dir import DEFAULT_STATE_DIR, TOKEN_FILE

__all__ = ["add_node_commands"]


def add_node_commands(commands: Any) -> None:
    node = commands.add_parser("node", help="node credentials: keel node revoke NAME")
    actions = node.add_subparsers(dest="node_command", metavar="ACTION")
    actions.required = True
    revoke = actions.add_parser(
        "revoke",
        help="remove every token of node:NAME from the token file; API servers refuse the "
        "node's agent within a second",
    )
    revoke.add_argument("name", metavar="NAME", help="the Node whose credentials go")
    where = revoke.add_mutually_exclusive_group()
    where.add_argument("--token-file", type=Path, default=None, help="the API servers' token file")
    where.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"use STATE_DIR/{TOKEN_FILE} (default {DEFAULT_STATE_DIR})",
    )
    revoke.set_defaults(run=cmd_revoke)


def cmd_revoke(args: argparse.Namespace) -> int:
    from keel.api.auth import replace_private, revoke_role

    path: Path = args.token_file or (args.state_dir or Path(DEFAULT_STATE_DIR)) / TOKEN_FILE
    role = f"node:{args.name}"
    try:
        text = path.read_text(encoding="utf-8")
        kept, removed = revoke_role(text, role)
        if removed:
            replace_private(path, kept)
    except OSError as exc:
        print(f"keel node revoke: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"keel node revoke: {path} holds no token of {role}", file=sys.stderr)
        return 1
    print(
        f"node {args.name}: revoked {removed} token(s) of {role} in {path}; API servers "
        "reading it refuse them within a second"
    )
    return 0
