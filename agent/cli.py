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

from . import __version__
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from .discovery import Discovery
from .endpoints import Endpoint
from .gobgp import GobgpClient, GobgpError
from .logs import setup_logging
from .reconciler import Reconciler
from .routes import Desired, Plan
from .status import query

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_CONFIG = 2
EXIT_UNREACHABLE = 3


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
    from .daemon import run_daemon

    asyncio.run(run_daemon(config, args.config))
    return EXIT_OK


def _ask_agent(config: AgentConfig, request: str) -> Any:
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
            f"agent:      {'healthy' if status['healthy'] else 'NOT HEALTHY'}",
            f"gobgpd:     {g['target']} {'reachable' if g['reachable'] else 'UNREACHABLE'}, "
            f"{g['restarts_seen']} restart(s) seen",
        ]
        for peer in g["peers"] or []:
            lines.append(f"  peer {peer['address']} AS{peer['asn']}: {peer['state']}")
        lines += [
            f"endpoints:  {e['total']} ({e['ready']} ready, {e['held_down']} held down) "
            f"in {status['namespaces']} namespace(s)",
            f"prefixes:   {p['advertised']} advertised, {len(p['refused_outside_networks'])} refused "
            f"(outside networks), {len(p['refused_max_prefixes'])} refused (max_prefixes)",
            f"reconcile:  {r['passes']} passes, {r['failures']} failed, last {last} "
            f"({r['last_duration_s'] * 1e3:.1f} ms)",
            f"netlink:    {status['netlink_resyncs']} resync(s)",
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


async def _discover(config: AgentConfig) -> tuple[Endpoint, ...]:
    discovery = Discovery(config.uplinks, config.netns_dirs, config.timers.netns_rescan)
    task = asyncio.create_task(discovery.run())
    synced = asyncio.create_task(discovery.synced.wait())
    try:
        await asyncio.wait([task, synced], return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # discovery crashed before its first dump: say why, never wait forever
            task.result()
        return discovery.snapshot()
    finally:
        synced.cancel()
        task.cancel()
        await asyncio.gather(task, synced, return_exceptions=True)


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


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab import demo
    from .lab.embedded import EmbeddedLab, LabError
    from .lab.topology import load_topology

    topology_path = args.topology.resolve()
    if args.action == "demo":
        return demo.main(["--topology", str(topology_path)])
    lab = EmbeddedLab(load_topology(topology_path))
    try:
        if args.action == "up":
            if not demo.kernel_has_ipvlan():
                print("this kernel has no ipvlan, so the lab cannot stay up here; `ipvlan-bgp lab demo` runs it "
                      "(up, show, down) inside a VM", file=sys.stderr)
                return EXIT_FAILURE
            lab.up()
            return EXIT_OK if demo.show(lab) else EXIT_FAILURE
        if args.action == "status":
            if not lab.state.namespaces:
                print(f"lab {lab.topology.name} is not up", file=sys.stderr)
                return EXIT_FAILURE
            return EXIT_OK if demo.show(lab, timeout=0.0) else EXIT_FAILURE
        lab.down()
        print(f"lab {lab.topology.name} is down")
        return EXIT_OK
    except (LabError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


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
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [log] level")
    for name, handler, text in (("status", cmd_status, "the running agent's health, gobgpd and its peers"),
                                ("routes", cmd_routes, "every prefix the running agent advertises, and why")):
        sub_parser = add(name, handler, text + " (exit 1: unhealthy, 3: agent unreachable)")
        sub_parser.add_argument("--json", action="store_true")
    add("validate", cmd_validate, "check a config file; exit 2 and list every problem if invalid")
    endpoints = add("endpoints", cmd_endpoints, "show the endpoints discovery sees now (no gobgpd needed)")
    endpoints.add_argument("--json", action="store_true")
    add("plan", cmd_plan, "show what the agent would add and withdraw now (dry run, changes nothing)")
    lab = add("lab", cmd_lab, "the embedded lab: a containerlab topology on network namespaces", config=False)
    lab.add_argument("action", choices=["up", "status", "down", "demo"])
    lab.add_argument("topology", type=Path, nargs="?", default=Path("containerlab/rack.clab.yml"))
    add("version", cmd_version, "print the version", config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
