"""`sami config show [CONFIG]`: print the resolved config, every default filled in."""

from __future__ import annotations

import argparse

from sami.run_config import config_to_yaml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print the resolved config (default: the bundled CPU demo)")
    show.add_argument("config", nargs="?", help="run config (YAML)")


def run(args: argparse.Namespace) -> int:

    print(config_to_yaml(load_config(args.config)), end="")
    return 0
