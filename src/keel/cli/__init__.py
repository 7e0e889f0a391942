"""The `keel` command line: `build_parser()` gathers every subcommand, `main()` runs one.

One module per command or command family (`apiserver`, `up`, `controller-manager`, `agent`,
`get`, ...), each adding its parser with a `run(args) -> int`. This package sits on top of
every other layer and nothing below imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keel", description="Keel: a consensus-backed control plane."
    )
    parser.add_argument("--version", action="version", version="keel 0.1.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    from keel.cli.agent import add_agent_command
    from keel.cli.apiserver import add_apiserver_command
    from keel.cli.apply import add_apply_command
    from keel.cli.boundary import add_boundary_command
    from keel.cli.controller_manager import add_controller_manager_command
    from keel.cli.delete import add_delete_command
    from keel.cli.describe import add_describe_command
    from keel.cli.dev import add_dev_commands
    from keel.cli.drain import add_drain_commands
    from keel.cli.get import add_get_command
    from keel.cli.logs import add_logs_command
    from keel.cli.node import add_node_commands
    from keel.cli.register import add_register_commands
    from keel.cli.rollout import add_rollout_commands
    from keel.cli.scheduler import add_scheduler_command
    from keel.cli.store import add_store_commands
    from keel.cli.top import add_top_command
    from keel.cli.ui import add_ui_command
    from keel.cli.up import add_up_command
    from keel.cli.verify import add_verify_command

    # Server side first, then what a user types every day, then operations and tools.
    add_apiserver_command(commands)
    add_up_command(commands)
    add_boundary_command(commands)
    add_ui_command(commands)
    add_controller_manager_command(commands)
    add_scheduler_command(commands)
    add_agent_command(commands)
    add_apply_command(commands)
    add_get_command(commands)
    add_describe_command(commands)
    add_delete_command(commands)
    add_logs_command(commands)
    add_top_command(commands)
    add_rollout_commands(commands)
    add_drain_commands(commands)
    add_register_commands(commands)
    add_node_commands(commands)
    add_store_commands(commands)
    add_verify_command(commands)
    add_dev_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result
