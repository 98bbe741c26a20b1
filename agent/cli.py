"""The ``ipvlan-bgp`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from .discovery import Discovery
from .endpoints import Endpoint
from .gobgp import GobgpClient, GobgpError
from .reconciler import Reconciler
from .routes import Desired, Plan

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


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    _setup_logging(args.log_level)
    from .daemon import run_daemon

    asyncio.run(run_daemon(config))
    return EXIT_OK


async def _discover(config: AgentConfig) -> tuple[Endpoint, ...]:
    discovery = Discovery(config.uplinks, config.netns_dirs, config.timers.netns_rescan)
    task = asyncio.create_task(discovery.run())
    try:
        await discovery.synced.wait()
        return discovery.snapshot()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _endpoint_json(e: Endpoint) -> dict[str, object]:
    return {"netns": e.netns, "ifname": e.ifname, "ifindex": e.ifindex, "mode": e.mode.name,
            "parent": e.parent, "addresses": [str(a) for a in e.addresses], "ready": e.ready}


def cmd_endpoints(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    endpoints = asyncio.run(_discover(config))
    if args.json:
        print(json.dumps([_endpoint_json(e) for e in endpoints], indent=2))
        return EXIT_OK
    rows = [(e.netns or "(host)", e.ifname, e.mode.name, e.parent, "yes" if e.ready else "no",
             " ".join(str(a) for a in e.addresses) or "-") for e in endpoints]
    print(_table(("NAMESPACE", "IFACE", "MODE", "PARENT", "READY", "ADDRESSES"), rows))
    print(f"{len(endpoints)} endpoint(s) on uplink(s) {', '.join(config.uplinks)}")
    return EXIT_OK


async def _plan(config: AgentConfig) -> tuple[Desired, Plan]:
    endpoints = await _discover(config)
    async with GobgpClient(config.gobgp.target, config.ownership_community, tls_ca_file=config.gobgp.tls_ca_file,
                           tls_server_name=config.gobgp.tls_server_name,
                           rpc_timeout=config.gobgp.rpc_timeout) as client:
        await client.connect(config.gobgp.connect_timeout)
        reconciler = Reconciler(client, config)
        return reconciler.compute(endpoints, await reconciler.read_actual())


def cmd_plan(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    try:
        desired, p = asyncio.run(_plan(config))
    except GobgpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    rows = [("+", str(r.prefix), ", ".join(desired.sources.get(r.prefix, ()))) for r in p.add]
    rows += [("-", str(r.prefix), "no longer wanted") for r in p.withdraw]
    rows += [("!", str(r.prefix), "refused: max_prefixes") for r in p.over_cap]
    rows += [("!", str(prefix), "refused: outside every network (" + ", ".join(src) + ")")
             for prefix, src in desired.outside.items()]
    if rows:
        print(_table(("", "PREFIX", "WHY"), rows))
    print(f"{len(p.add)} to add, {len(p.withdraw)} to withdraw, {len(p.keep)} unchanged (dry run: nothing sent)")
    return EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
                     for row in (header, *rows))


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

    run = add("run", cmd_run, "run the agent (until SIGTERM/SIGINT)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add("validate", cmd_validate, "check a config file; exit 2 and list every problem if invalid")
    endpoints = add("endpoints", cmd_endpoints, "show the endpoints discovery sees now (no gobgpd needed)")
    endpoints.add_argument("--json", action="store_true")
    add("plan", cmd_plan, "show what the agent would add and withdraw now (dry run, changes nothing)")
    add("version", cmd_version, "print the version", config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
