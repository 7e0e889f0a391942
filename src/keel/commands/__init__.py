"""The client commands a user types every day: apply, get, describe, delete, logs, top.

`add_client_commands(commands)` adds them to the `keel` argparse subparsers; each sets
`run(args) -> int`. They talk to the API server through `keel.client` only.
"""

from __future__ import annotations

from typing import Any

from keel.commands.apply import add_apply_command
from keel.commands.delete import add_delete_command
from keel.commands.describe import add_describe_command
from keel.commands.get import add_get_command
from keel.commands.logs import add_logs_command
from keel.commands.top import add_top_command


def add_client_commands(commands: Any) -> None:
    """Add apply, get, describe, delete, logs and top to argparse subparsers."""
    add_apply_command(commands)
    add_get_command(commands)
    add_describe_command(commands)
    add_delete_command(commands)
    add_logs_command(commands)
    add_top_command(commands)


__all__ = ["add_client_commands"]
