"""The ``ipvlan-bgp`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, wiring
from .config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, ConfigUnreadable, load_config
from .endpoints import Endpoint, printable
from .logs import setup_logging
from .model import IPAddress
from .netlink_types import Link
from .routes import Desired, Plan

EXIT_OK = 0
EXIT_FAILURE = 1  # status: unhealthy or degraded; run: the agent failed; plan: gobgpd refused a read
EXIT_INVALID_CONFIG = 2
EXIT_UNREACHABLE = 3  # the agent's status socket (status, routes) or gobgpd (plan)
EXIT_CONFIG_UNREADABLE = 4  # the config file is missing, unreadable or not a regular file
EXIT_CHANGES_PENDING = 5  # plan --exit-code: a pass would change gobgpd's paths
EXIT_USAGE = 64  # EX_USAGE (sysexits.h): unknown command or option, bad argument
STUBS_PACKAGE = "agent.gobgpapi"

DESCRIPTION = ("Advertise ipvlan L3/L3S container addresses to the ToR through a local gobgpd, and inspect "
               "the running agent.")
EXIT_CODES = f"""exit codes:
  {EXIT_OK}   ok (status: healthy; plan --exit-code: nothing to change)
  {EXIT_FAILURE}   status: unhealthy, or degraded (no Established BGP peer); run: the agent failed
  {EXIT_INVALID_CONFIG}   the configuration is invalid (every problem is listed)
  {EXIT_UNREACHABLE}   the agent (status, routes) or gobgpd (plan) cannot be reached
  {EXIT_CONFIG_UNREADABLE}   the configuration file is missing or unreadable
  {EXIT_CHANGES_PENDING}   plan --exit-code: the agent would add or withdraw paths
  {EXIT_USAGE}  usage error (unknown command or option)"""

# shtab's completion hint for a file argument (shtab.FILE), spelled out: shtab is needed only to generate
# the completion scripts, never at run time.
FILE_COMPLETION = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}


class Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which here means "invalid configuration": use EX_USAGE (64)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _load_or_report(path: Path) -> AgentConfig | int:
    """The configuration, or the exit code after saying what is wrong with it."""
    try:
        return load_config(path)
    except ConfigUnreadable as exc:
        print(f"cannot use the configuration {exc}", file=sys.stderr)
        return EXIT_CONFIG_UNREADABLE
    except ConfigError as exc:
        print(f"invalid configuration {exc}", file=sys.stderr)
        return EXIT_INVALID_CONFIG


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        code = EXIT_CONFIG_UNREADABLE if isinstance(exc, ConfigUnreadable) else EXIT_INVALID_CONFIG
        if args.json:
            _print_json({"config": str(args.config), "valid": False, "readable": code != EXIT_CONFIG_UNREADABLE,
                         "problems": [{"field": where, "message": what} for where, what in exc.problems]})
        else:
            print(f"{'cannot use the' if code == EXIT_CONFIG_UNREADABLE else 'invalid'} configuration {exc}",
                  file=sys.stderr)
        return code
    if args.json:
        _print_json({"config": str(args.config), "valid": True, "readable": True, "problems": [],
                     "networks": [str(n.prefix) for n in config.networks], "uplinks": list(config.uplinks),
                     "gobgp_target": config.gobgp.target})
    else:
        print(f"{args.config}: OK ({len(config.networks)} network(s), uplinks {', '.join(config.uplinks)}, "
              f"gobgpd at {config.gobgp.target})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if isinstance(config, int):
        return config
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


def _ask_agent(args: argparse.Namespace, request: str) -> Any:
    """The agent's answer, or the exit code after saying why there is none."""
    if args.socket is not None:
        socket = args.socket
    else:
        config = _load_or_report(args.config)
        if isinstance(config, int):
            return config
        socket = config.status.socket
    from .status import query

    try:
        return asyncio.run(query(socket, request))
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"cannot reach the agent at {socket}: {exc} (is it running? are you root?)", file=sys.stderr)
        return EXIT_UNREACHABLE


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days}d" if days else "") + f"{hours:02d}:{minutes:02d}:{s:02d}"


def _status_text(status: dict[str, Any]) -> str:
    g, e, p, r = status["gobgpd"], status["endpoints"], status["prefixes"], status["reconcile"]
    last = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_at"])) if r["last_at"] else "never"
    verdict = status["state"]
    lines = [
        f"agent:      {verdict if verdict == 'healthy' else verdict.upper() + ': ' + str(status['reason'])}",
        f"gobgpd:     {g['target']} {'reachable' if g['reachable'] else 'UNREACHABLE'}, "
        f"{g['restarts_seen']} restart(s) seen",
    ]
    if g["peers"] is None:
        lines.append("peers:      unknown (gobgpd did not list them)")
    elif not g["peers"]:
        lines.append("peers:      none configured in gobgpd")
    else:
        rows = [(peer["address"], f"AS{peer['asn']}", peer["state"] + (
                     " (held back for the agent)" if peer.get("held_back") else
                     " (admin down)" if peer.get("admin_down") else ""),
                 _duration(peer["uptime_s"]) if peer["state"] == "established" else "-",
                 str(peer["prefixes_advertised"]), str(peer["prefixes_accepted"])) for peer in g["peers"]]
        table = _table(("PEER", "AS", "STATE", "UP", "SENT", "ACCEPTED"), rows)
        lines += ["  " + line for line in table.split("\n")]
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
    lines += [f"WARNING: uplink {printable(name)} does not exist in this host" for name in status["missing_uplinks"]]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    status = _ask_agent(args, "status")
    if isinstance(status, int):
        return status
    if args.json:
        _print_json(status)
    else:
        print(_status_text(status))
    return EXIT_OK if status["state"] == "healthy" else EXIT_FAILURE


def cmd_routes(args: argparse.Namespace) -> int:
    routes = _ask_agent(args, "routes")
    if isinstance(routes, int):
        return routes
    if args.json:
        _print_json(routes)
        return EXIT_OK
    rows = [(r["prefix"], r["kind"], r["next_hop"], " ".join(r["communities"] + r["large_communities"]),
             ", ".join(r["sources"])) for r in routes]
    print(_table(("PREFIX", "KIND", "NEXT HOP", "COMMUNITIES", "FROM"), rows))
    print(f"{len(routes)} prefix(es) advertised through gobgpd")
    return EXIT_OK


@dataclass(frozen=True)
class Discovered:
    endpoints: tuple[Endpoint, ...]
    host_addresses: frozenset[IPAddress]  # never advertised
    ignored: list[tuple[str, Link, str]]  # (namespace, link, reason)
    missing_uplinks: tuple[str, ...]


async def _discover(config: AgentConfig) -> Discovered:
    """What discovery sees once synced: endpoints, the host's own addresses (never advertised), the links
    it ignores and why, the configured uplinks the host lacks."""
    discovery = wiring.discovery(config)
    task = asyncio.create_task(discovery.run())
    synced = asyncio.create_task(discovery.synced.wait())
    try:
        await asyncio.wait([task, synced], return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # discovery crashed before its first dump: say why, never wait forever
            task.result()
        return Discovered(discovery.snapshot(), discovery.host_addresses(), discovery.ignored(),
                          discovery.stats().missing_uplinks)
    finally:
        synced.cancel()
        task.cancel()
        await asyncio.gather(task, synced, return_exceptions=True)
        await discovery.close()


def _warn_missing_uplinks(missing: Sequence[str]) -> None:
    for name in missing:
        print(f"warning: uplink {printable(name)} does not exist in this host: no endpoint can be found on it",
              file=sys.stderr)


def _endpoint_json(e: Endpoint) -> dict[str, object]:
    return {"netns": e.netns, "ifname": e.ifname, "ifindex": e.ifindex, "mode": e.mode.name,
            "parent": e.parent, "addresses": [str(a) for a in e.addresses], "ready": e.ready}


def _not_routed(config: AgentConfig, endpoints: Sequence[Endpoint]) -> list[tuple[str, str, str]]:
    """(namespace, ifname, reason) for endpoints that will not be advertised as they are: not ready, or an
    address outside every configured network."""
    found = []
    for e in endpoints:
        if not e.ready:
            found.append((e.netns, e.ifname, "endpoint not ready: " + ("link down" if e.addresses
                                                                         else "no usable global address")))
        for address in e.addresses:
            if not any(address.ip in n.prefix for n in config.networks):
                found.append((e.netns, e.ifname, f"address {address.ip} outside every [[networks]] prefix"))
    return found


def cmd_endpoints(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if isinstance(config, int):
        return config
    seen = asyncio.run(_discover(config))
    _warn_missing_uplinks(seen.missing_uplinks)
    endpoints = seen.endpoints
    ignored = [(netns, link.ifname, link.ifindex, link.kind, why) for netns, link, why in seen.ignored]
    ignored += [(netns, ifname, next(e.ifindex for e in endpoints if (e.netns, e.ifname) == (netns, ifname)),
                 "ipvlan", why) for netns, ifname, why in _not_routed(config, endpoints)]
    if args.json:
        data: dict[str, object] = {"uplinks": list(config.uplinks), "missing_uplinks": list(seen.missing_uplinks),
                                   "endpoints": [_endpoint_json(e) for e in endpoints]}
        if args.all:
            data["ignored"] = [{"netns": netns, "ifname": ifname, "ifindex": ifindex, "kind": kind, "reason": why}
                               for netns, ifname, ifindex, kind, why in ignored]
        _print_json(data)
        return EXIT_OK
    rows = [(e.netns or "(host)", e.ifname, e.mode.name, e.parent, "yes" if e.ready else "no",
             " ".join(str(a) for a in e.addresses) or "-") for e in endpoints]
    print(_table(("NAMESPACE", "IFACE", "MODE", "PARENT", "READY", "ADDRESSES"), rows))
    print(f"{len(endpoints)} endpoint(s) on uplink(s) {', '.join(config.uplinks)}")
    if args.all:
        print()
        print(_table(("NAMESPACE", "IFACE", "KIND", "IGNORED BECAUSE"),
                     [(netns or "(host)", ifname, kind, why) for netns, ifname, _, kind, why in ignored]))
        print(f"{len(ignored)} link(s) or address(es) not advertised")
    return EXIT_OK


async def _plan(config: AgentConfig) -> tuple[Desired, Plan]:
    from .reconciler import Reconciler

    seen = await _discover(config)
    _warn_missing_uplinks(seen.missing_uplinks)
    async with wiring.gobgp_client(config) as client:
        await client.connect(config.gobgp.connect_timeout)
        reconciler = Reconciler(client, config)
        reconciler.host_addresses = seen.host_addresses
        return reconciler.compute(seen.endpoints, await reconciler.read_actual())


def _plan_rows(desired: Desired, p: Plan) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(action, prefix, reason, sources): action "+" add, "-" withdraw, "!" refused."""
    rows = [("+", str(r.prefix), "wanted", tuple(desired.sources.get(r.prefix, ()))) for r in p.add]
    rows += [("-", str(r.prefix), "no longer wanted", ()) for r in p.withdraw]
    rows += [("!", str(r.prefix), "max_prefixes", tuple(desired.sources.get(r.prefix, ()))) for r in p.over_cap]
    rows += [("!", str(r.prefix), "namespace_quota", tuple(desired.sources.get(r.prefix, ())))
             for r in p.over_quota]
    rows += [("!", str(prefix), why.value, tuple(src)) for prefix, (why, src) in desired.refused.items()]
    return rows


def cmd_plan(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if isinstance(config, int):
        return config
    from .gobgp import GobgpError, GobgpNotReady, GobgpUnavailable

    try:
        desired, p = asyncio.run(_plan(config))
    except GobgpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, GobgpUnavailable | GobgpNotReady) else EXIT_FAILURE
    rows = _plan_rows(desired, p)
    pending = not p.empty
    if args.json:
        names = {"+": "add", "-": "withdraw", "!": "refused"}
        _print_json({"changes_pending": pending, "unchanged": len(p.keep),
                     **{name: [{"prefix": prefix, "reason": why, "sources": list(src)}
                               for action, prefix, why, src in rows if action == sign]
                        for sign, name in names.items()}})
    else:
        if rows:
            print(_table(("", "PREFIX", "WHY"),
                         [(action, prefix, ", ".join(src) if action == "+" else
                           why if action == "-" else f"refused: {why}" + (f" ({', '.join(src)})" if src else ""))
                          for action, prefix, why, src in rows]))
        print(f"{len(p.add)} to add, {len(p.withdraw)} to withdraw, {len(p.keep)} unchanged "
              "(dry run: nothing sent)")
    return EXIT_CHANGES_PENDING if args.exit_code and pending else EXIT_OK


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [[printable(str(c)) for c in row] for row in (header, *rows)]  # names come from containers
    widths = [max(len(c) for c in col) for col in zip(*cells, strict=False)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells)


def cmd_version(args: argparse.Namespace) -> int:
    print(f"ipvlan-bgp-agent {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ipvlan-bgp", description=DESCRIPTION, epilog=EXIT_CODES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ipvlan-bgp-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str, exits: str = "",
            config: bool = True, json_output: bool = True) -> argparse.ArgumentParser:
        config_exits = (f"; {EXIT_INVALID_CONFIG}: invalid config, {EXIT_CONFIG_UNREADABLE}: config missing or "
                        "unreadable") if config else ""
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. Exit {EXIT_OK}: ok"
                           + (f", {exits}" if exits else "") + config_exits + f"; {EXIT_USAGE}: usage error.")
        if config:
            action = p.add_argument("config", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH,
                                    help=f"agent config (default {DEFAULT_CONFIG_PATH})")
            action.complete = FILE_COMPLETION  # type: ignore[attr-defined]
        if json_output:
            p.add_argument("--json", action="store_true", help="print JSON (field names: docs/cli.md)")
        p.set_defaults(handler=handler)
        return p

    run = add("run", cmd_run, "run the agent (until SIGTERM/SIGINT)", f"{EXIT_FAILURE}: the agent failed",
              json_output=False)
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [log] level")
    for name, handler, text, exits in (
            ("status", cmd_status, "the running agent's health, gobgpd and its peers",
             f"{EXIT_FAILURE}: unhealthy or degraded (no Established BGP peer), {EXIT_UNREACHABLE}: agent "
             "unreachable"),
            ("routes", cmd_routes, "every prefix the running agent advertises, and why",
             f"{EXIT_UNREACHABLE}: agent unreachable")):
        p = add(name, handler, text, exits)
        action = p.add_argument("--socket", type=Path, metavar="PATH",
                                help="the agent's status socket (no config file is read then)")
        action.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    add("validate", cmd_validate, "check a config file and list every problem")
    endpoints = add("endpoints", cmd_endpoints, "show the endpoints discovery sees now (no gobgpd needed)")
    endpoints.add_argument("--all", action="store_true",
                           help="also list the links (and addresses) that are not advertised, with the reason")
    plan = add("plan", cmd_plan, "show what the agent would add and withdraw now (dry run, changes nothing)",
               f"{EXIT_CHANGES_PENDING}: changes pending (with --exit-code), {EXIT_UNREACHABLE}: gobgpd "
               f"unreachable, {EXIT_FAILURE}: gobgpd refused a read")
    plan.add_argument("--exit-code", action="store_true",
                      help=f"exit {EXIT_CHANGES_PENDING} when paths would be added or withdrawn, 0 when none")
    add("version", cmd_version, "print the version", config=False, json_output=False)
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
