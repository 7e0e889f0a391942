"""The `keel` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keel", description="Keel: a consensus-backed control plane."
    )
    parser.add_argument("--version", action="version", version="keel 0.1.0")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    from keel.agent_cli import add_agent_commands
    from keel.apiserver_cli import add_apiserver_commands
    from keel.commands import add_client_commands
    from keel.controller_manager_cli import add_controller_manager_commands
    from keel.dev.cli import add_dev_commands
    from keel.scheduler_cli import add_scheduler_commands
    from keel.store_cli import add_store_commands

    add_apiserver_commands(commands)
    add_controller_manager_commands(commands)
    add_scheduler_commands(commands)
    add_agent_commands(commands)
    add_client_commands(commands)
    add_store_commands(commands)
    add_dev_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
