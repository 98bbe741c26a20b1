"""The ``ipvlan-bgp`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_CONFIG = 2


def _load_or_report(path: Path) -> AgentConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid configuration {exc}", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    print(f"{args.config}: OK ({len(config.networks)} network(s), uplinks {', '.join(config.uplinks)}, "
          f"gobgpd at {config.gobgp.target})")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    print(f"ipvlan-bgp-agent {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipvlan-bgp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("config", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH,
                           help=f"agent config (default {DEFAULT_CONFIG_PATH})")
        p.set_defaults(handler=handler)
        return p

    add("validate", cmd_validate, "check a config file; exit 2 and list every problem if invalid")
    add("version", cmd_version, "print the version", config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
