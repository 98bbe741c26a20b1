"""The ``ipvlan-bgp`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, wiring
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from .endpoints import Endpoint, printable
from .logs import setup_logging
from .model import IPAddress
from .routes import Desired, Plan

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_CONFIG = 2
EXIT_UNREACHABLE = 3
STUBS_PACKAGE = "agent.gobgpapi"


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


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    setup_logging(args.log_level or config.log.level, config.log.format)
    from .daemon import AgentFailed, run_daemon
    from .status import StatusSocketError

    try:
        asyncio.run(run_daemon(config, args.config))
    except StatusSocketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except AgentFailed:
        return EXIT_FAILURE  # already logged; systemd (Restart=on-failure) starts a fresh agent
    return EXIT_OK


def _ask_agent(config: AgentConfig, request: str) -> Any:
    from .status import query

    try:
        return asyncio.run(query(config.status.socket, request))
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"cannot reach the agent at {config.status.socket}: {exc} (is it running? are you root?)",
              file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    status = _ask_agent(config, "status")
    if status is None:
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        g, e, p, r = status["gobgpd"], status["endpoints"], status["prefixes"], status["reconcile"]
        last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_at"])) if r["last_at"] else "never"
        lines = [
            f"agent:      {'healthy' if status['healthy'] else 'NOT HEALTHY: ' + str(status.get('unhealthy_reason'))}",
            f"gobgpd:     {g['target']} {'reachable' if g['reachable'] else 'UNREACHABLE'}, "
            f"{g['restarts_seen']} restart(s) seen",
        ]
        for peer in g["peers"] or []:
            admin = (" (held back until the agent has pushed its table)" if peer.get("held_back")
                     else " (administratively down)" if peer.get("admin_down") else "")
            lines.append(f"  peer {peer['address']} AS{peer['asn']}: {peer['state']}{admin}")
        lines += [
            f"endpoints:  {e['total']} ({e['ready']} ready, {e['held_down']} held down) "
            f"in {status['namespaces']} namespace(s)",
            f"prefixes:   {p['advertised']} advertised, "
            + (", ".join(f"{len(found)} refused ({reason})" for reason, found in p.get("refused", {}).items()
                         if found) or "none refused"),
            f"reconcile:  {r['passes']} passes, {r['failures']} failed, last {last} "
            f"({r['last_duration_s'] * 1e3:.1f} ms)",
            f"netlink:    {status['netlink_resyncs']} resync(s), "
            f"{sum(status.get('netlink_dropped', {}).values())} datagram(s) dropped (forged or truncated)",
        ]
        print("\n".join(lines))
    return EXIT_OK if status["healthy"] else EXIT_FAILURE


def cmd_routes(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    routes = _ask_agent(config, "routes")
    if routes is None:
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(routes, indent=2))
        return EXIT_OK
    rows = [(r["prefix"], r["kind"], r["next_hop"], " ".join(r["communities"] + r["large_communities"]),
             ", ".join(r["sources"])) for r in routes]
    print(_table(("PREFIX", "KIND", "NEXT HOP", "COMMUNITIES", "FROM"), rows))
    print(f"{len(routes)} prefix(es) advertised through gobgpd")
    return EXIT_OK


async def _discover(config: AgentConfig) -> tuple[tuple[Endpoint, ...], frozenset[IPAddress]]:
    """The endpoints, and the host's own addresses (never advertised)."""
    discovery = wiring.discovery(config)
    task = asyncio.create_task(discovery.run())
    try:
        await discovery.synced.wait()
        return discovery.snapshot(), discovery.host_addresses()
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
    endpoints, _ = asyncio.run(_discover(config))
    if args.json:
        print(json.dumps([_endpoint_json(e) for e in endpoints], indent=2))
        return EXIT_OK
    rows = [(e.netns or "(host)", e.ifname, e.mode.name, e.parent, "yes" if e.ready else "no",
             " ".join(str(a) for a in e.addresses) or "-") for e in endpoints]
    print(_table(("NAMESPACE", "IFACE", "MODE", "PARENT", "READY", "ADDRESSES"), rows))
    print(f"{len(endpoints)} endpoint(s) on uplink(s) {', '.join(config.uplinks)}")
    return EXIT_OK


async def _plan(config: AgentConfig) -> tuple[Desired, Plan]:
    from .reconciler import Reconciler

    endpoints, host_addresses = await _discover(config)
    async with wiring.gobgp_client(config) as client:
        await client.connect(config.gobgp.connect_timeout)
        reconciler = Reconciler(client, config)
        reconciler.host_addresses = host_addresses
        return reconciler.compute(endpoints, await reconciler.read_actual())


def cmd_plan(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID_CONFIG
    from .gobgp import GobgpError

    try:
        desired, p = asyncio.run(_plan(config))
    except GobgpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    rows = [("+", str(r.prefix), ", ".join(desired.sources.get(r.prefix, ()))) for r in p.add]
    rows += [("-", str(r.prefix), "no longer wanted") for r in p.withdraw]
    rows += [("!", str(r.prefix), "refused: max_prefixes") for r in p.over_cap]
    rows += [("!", str(r.prefix), "refused: max_prefixes_per_namespace") for r in p.over_quota]
    rows += [("!", str(prefix), f"refused: {why} (" + ", ".join(src) + ")")
             for prefix, (why, src) in desired.refused.items()]
    if rows:
        print(_table(("", "PREFIX", "WHY"), rows))
    print(f"{len(p.add)} to add, {len(p.withdraw)} to withdraw, {len(p.keep)} unchanged (dry run: nothing sent)")
    return EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [[printable(str(c)) for c in row] for row in (header, *rows)]  # names come from containers
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=False)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"ipvlan-bgp-agent {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipvlan-bgp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ipvlan-bgp-agent {__version__}")
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
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [log] level")
    for name, handler, text in (("status", cmd_status, "the running agent's health, gobgpd and its peers"),
                                ("routes", cmd_routes, "every prefix the running agent advertises, and why")):
        sub_parser = add(name, handler, text + " (exit 1: unhealthy, 3: agent unreachable)")
        sub_parser.add_argument("--json", action="store_true")
    add("validate", cmd_validate, "check a config file; exit 2 and list every problem if invalid")
    endpoints = add("endpoints", cmd_endpoints, "show the endpoints discovery sees now (no gobgpd needed)")
    endpoints.add_argument("--json", action="store_true")
    add("plan", cmd_plan, "show what the agent would add and withdraw now (dry run, changes nothing)")
    add("version", cmd_version, "print the version", config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ModuleNotFoundError as exc:
        # Modules that talk to gobgpd import the generated stubs lazily, so --help, --version and validate work
        # without them; a command that needs them says what to do instead of printing a traceback.
        if not (exc.name or "").startswith(STUBS_PACKAGE):
            raise
        print(f"error: the GoBGP API stubs ({STUBS_PACKAGE}) are missing: run `make stubs` in a source checkout, "
              "or install the wheel or .deb, which ship them", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
