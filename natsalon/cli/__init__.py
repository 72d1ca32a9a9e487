"""The ``natsalon`` command: one-shot client tools.

    natsalon probe   --server HOST[:PORT] ...   classify this host's NAT
    natsalon connect --server HOST[:PORT] ...   meet a peer and punch through

Each subcommand lives in its own module (``natsalon.cli.probe``,
``natsalon.cli.connect``) exposing ``add_arguments(parser)`` and
``run(args) -> int``; this module only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from natsalon import __version__

SUBCOMMANDS = {
    "probe": ("natsalon.cli.probe", "classify this host's NAT against a STUN server"),
    "connect": ("natsalon.cli.connect", "meet a peer in a room and punch a direct UDP path"),
    "status": ("natsalon.cli.status", "show a running salon's or natclient's status from its metrics"),
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="natsalon", description="NAT probing and hole punching over UDP.")
    parser.add_argument("--version", action="version", version="natsalon %s" % __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("natsalon: error: a command is required (%s)" % ", ".join(modules), file=sys.stderr)
        return 2
    return modules[args.command].run(args)

