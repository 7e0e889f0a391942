"""`python -m keel.commands ...`: the client commands alone, until `keel` itself has them."""

from __future__ import annotations

import argparse
import sys

from keel.commands import add_client_commands


def main() -> int:
    parser = argparse.ArgumentParser(prog="keel", description="Keel client commands.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_client_commands(commands)
    args = parser.parse_args()
    result: int = args.run(args)
    return result


sys.exit(main())
