"""Agent configuration: a strict pydantic model loaded from TOML.

Unknown keys are rejected and values are not coerced (``max_prefixes = "10"`` is an error), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from .model import Attributes, Community, IPAddress, IPNetwork, LargeCommunity

DEFAULT_CONFIG_PATH = Path("/etc/ipvlan-bgp/agent.toml")
MAX_PREFIXES_LIMIT = 1_000_000  # gobgpd holds this many paths in a few GB; far beyond one host's containers
MIN_PREFIXLEN = {4: 8, 6: 16}  # a wider network would let nearly any address through the allow-list
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


class ConfigError(Exception):
    """The configuration file cannot be used. ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {where}: {what}" if where else f"  {what}" for where, what in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class ConfigUnreadable(ConfigError):
    """The file itself cannot be read: missing, no permission, or not a regular file."""


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("must be a prefix string such as '10.1.100.0/24'")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network prefix ({exc})") from None


def _next_hop(value: Any) -> IPAddress | None:
    if value == "unspecified":
        return None
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is neither 'unspecified' nor an IP address")


def _from_text(parse: Callable[[str], object]) -> PlainValidator:
    def validate(value: Any) -> object:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return parse(value)

    return PlainValidator(validate, json_schema_input_type=str)


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"{name!r} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    return name


NetworkPrefix = Annotated[IPNetwork, PlainValidator(_network, json_schema_input_type=str)]
NextHop = Annotated[IPAddress | None, PlainValidator(_next_hop, json_schema_input_type=str)]
CommunityValue = Annotated[Community, _from_text(Community.parse)]
LargeCommunityValue = Annotated[LargeCommunity, _from_text(LargeCommunity.parse)]
InterfaceName = Annotated[str, AfterValidator(_ifname)]
U32 = Annotated[int, Field(ge=0, le=0xFFFFFFFF)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class Advertise(StrEnum):
    HOST = "host"
    AGGREGATE = "aggregate"
    BOTH = "both"


class AggregateWhen(StrEnum):
    USED = "used"  # while at least one ready endpoint lies in the network
    ALWAYS = "always"


class OnShutdown(StrEnum):
    RETAIN = "retain"
    WITHDRAW = "withdraw"


UNIT_WATCHDOG_SEC = 90  # WatchdogSec in config/ipvlan-bgp-agent.service


class GobgpConfig(_Strict):
    target: str = Field(default="127.0.0.1:50051", min_length=1)
    tls_ca_file: Path | None = None
    tls_server_name: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    # Below half the shipped unit's WatchdogSec: a frozen gobgpd is reported (STATUS=, status, metric)
    # within one watchdog period, and a shutdown withdraw's first call ends before systemd gives up.
    rpc_timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _rpc_timeout_fits_the_watchdog(self) -> Self:
        if not self.rpc_timeout < UNIT_WATCHDOG_SEC / 2:
            raise ValueError(f"rpc_timeout must be below {UNIT_WATCHDOG_SEC / 2:g} s (half of WatchdogSec="
                             f"{UNIT_WATCHDOG_SEC} in the shipped systemd unit), got {self.rpc_timeout:g}")
        return self

    @model_validator(mode="after")
    def _tls_needs_tcp(self) -> Self:
        if self.tls_ca_file is not None and self.target.startswith("unix:"):
            raise ValueError("TLS (tls_ca_file) cannot be used with a unix: socket target")
        return self


class NextHopConfig(_Strict):
    ipv4: NextHop = None
    ipv6: NextHop = None

    @model_validator(mode="after")
    def _families_match(self) -> Self:
        if self.ipv4 is not None and self.ipv4.version != 4:
            raise ValueError(f"ipv4 next hop {self.ipv4} is not an IPv4 address")
        if self.ipv6 is not None and self.ipv6.version != 6:
            raise ValueError(f"ipv6 next hop {self.ipv6} is not an IPv6 address")
        return self

    def for_version(self, version: int) -> IPAddress | None:
        return self.ipv4 if version == 4 else self.ipv6


class NetworkConfig(_Strict):
    prefix: NetworkPrefix
    exclude: tuple[NetworkPrefix, ...] = Field(default=(), max_length=1024, description="prefixes inside this "
                                               "network never advertised from a container (e.g. the gateway)")
    name: str = Field(default="", max_length=64)
    advertise: Advertise = Advertise.BOTH
    aggregate_when: AggregateWhen = AggregateWhen.USED
    anycast: bool = Field(default=False, description="service addresses that may be held by containers on "
                          "several hosts, and by several namespaces on one host: each host that has one "
                          "advertises its /32 (/128) once, and the routers spread flows over them (ECMP)")
    communities: tuple[CommunityValue, ...] = ()
    large_communities: tuple[LargeCommunityValue, ...] = ()
    local_pref: U32 | None = None
    med: U32 | None = None

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.prefix.prefixlen < MIN_PREFIXLEN[self.prefix.version]:
            raise ValueError(f"{self.prefix} is wider than /{MIN_PREFIXLEN[self.prefix.version]}: it would let "
                             "nearly any address through the allow-list (a container could claim any address)")
        if self.anycast and self.advertise == Advertise.AGGREGATE:
            raise ValueError("anycast = true needs host routes (advertise = \"host\" or \"both\"): it decides "
                             "how an address held by several namespaces is advertised as a host route, and "
                             "advertise = \"aggregate\" sends none")
        for excluded in self.exclude:
            if excluded.version != self.prefix.version or not excluded.subnet_of(self.prefix):  # type: ignore[arg-type]
                raise ValueError(f"exclude {excluded} is not inside {self.prefix}")
        return self

    @property
    def label(self) -> str:
        return self.name or str(self.prefix)

    def excludes(self, address: IPAddress) -> bool:
        return any(address in excluded for excluded in self.exclude)

    def attributes(self, owner: LargeCommunity) -> Attributes:
        return Attributes(
            communities=self.communities,
            large_communities=(*self.large_communities, owner),
            local_pref=self.local_pref,
            med=self.med,
        )


class TimersConfig(_Strict):
    settle: float = Field(default=0.02, ge=0, le=5, description="minimum seconds between passes: the first change "
                          "after a quiet period is handled at once, later ones coalesce")
    full_reconcile: float = Field(default=300.0, ge=1, le=86_400,
                                  description="seconds between unconditional full re-reads of gobgpd (they repair "
                                  "any drift)")
    rib_check: float = Field(default=30.0, ge=0.1, le=86_400,
                             description="seconds between cheap checks of gobgpd's path counts; a change the agent "
                             "did not make triggers a full re-read at once")
    netns_rescan: float = Field(default=10.0, ge=0.1, le=3600,
                                description="seconds between namespace directory rescans")
    namespace_interval: float = Field(default=0.1, ge=0, le=5,
                                      description="a namespace that keeps changing is handled at most once per "
                                      "this many seconds (its first change after quiet at once), so one "
                                      "churning container cannot slow every other one's changes")


class DampeningConfig(_Strict):
    enabled: bool = True
    max_flaps: int = Field(default=6, ge=1, le=10_000,
                           description="transitions within `window` that trigger a hold-down")
    window: float = Field(default=30.0, gt=0, le=86_400)
    hold_down: float = Field(default=30.0, gt=0, le=86_400,
                             description="seconds of stability needed to advertise again")


class DrainConfig(_Strict):
    withdraw_after: float = Field(default=0.0, ge=0, le=86_400, description="seconds after `ipvlan-bgp drain` "
                                  "to withdraw every path (0: never; the paths stay with GRACEFUL_SHUTDOWN)")
    state_file: Path = Path("/var/lib/ipvlan-bgp/drained")
    as_path_prepend: int = Field(default=0, ge=0, le=8, description="while drained, put gobgpd's AS this many "
                                 "more times on each path's AS_PATH (for routers that ignore GRACEFUL_SHUTDOWN)")

    @model_validator(mode="after")
    def _absolute(self) -> Self:
        if not self.state_file.is_absolute():
            raise ValueError(f"state_file {str(self.state_file)!r} must be an absolute path")
        return self


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class MetricsConfig(_Strict):
    listen: str = Field(default="127.0.0.1:9474", description='HOST:PORT for Prometheus; "" turns it off')

    @model_validator(mode="after")
    def _host_port(self) -> Self:
        if self.listen:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"listen {self.listen!r} must be HOST:PORT (or \"\" to turn metrics off)")
        return self


class StatusConfig(_Strict):
    socket: Path = Path("/run/ipvlan-bgp/agent.sock")

    @model_validator(mode="after")
    def _absolute(self) -> Self:
        if not self.socket.is_absolute() or len(str(self.socket).encode()) > 107:
            raise ValueError(f"socket {str(self.socket)!r} must be an absolute path of at most 107 bytes")
        return self


class DockerNetworkPolicy(_Strict):
    name: str = Field(min_length=1, description="a Docker network's name")
    allowed_communities: tuple[CommunityValue, ...] = ()
    allowed_large_communities: tuple[LargeCommunityValue, ...] = ()


class DockerConfig(_Strict):
    """Docker as a source of truth: which ipvlan networks exist and which addresses its IPAM assigned."""

    enabled: bool = False
    socket: Path = Path("/run/docker.sock")
    allowed_supernets: tuple[NetworkPrefix, ...] = Field(default=(), description="a Docker ipvlan network "
                                                         "supplies a [[networks]] entry only inside one of these")
    networks: tuple[DockerNetworkPolicy, ...] = Field(default=(), description="per Docker network: the extra "
                                                      "communities a container's labels may ask for")

    def policy_for(self, network_name: str) -> DockerNetworkPolicy | None:
        return next((p for p in self.networks if p.name == network_name), None)


class AgentConfig(_Strict):
    uplinks: tuple[InterfaceName, ...] = Field(min_length=1)
    ownership_community: LargeCommunityValue
    networks: tuple[NetworkConfig, ...] = ()
    netns_dirs: tuple[Path, ...] = (Path("/run/netns"), Path("/run/docker/netns"))
    max_prefixes: int = Field(default=10_000, ge=1, le=MAX_PREFIXES_LIMIT)
    max_prefixes_per_namespace: int = Field(default=1_000, ge=1, le=MAX_PREFIXES_LIMIT, description="host routes "
                                            "one namespace may hold (bounded by max_prefixes); see routes.allocate")
    on_shutdown: OnShutdown = OnShutdown.RETAIN
    gobgp: GobgpConfig = GobgpConfig()
    next_hop: NextHopConfig = NextHopConfig()
    timers: TimersConfig = TimersConfig()
    dampening: DampeningConfig = DampeningConfig()
    drain: DrainConfig = DrainConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    status: StatusConfig = StatusConfig()
    docker: DockerConfig = DockerConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        if len(set(self.uplinks)) != len(self.uplinks):
            problems.append("uplinks: listed more than once")
        problems += _overlaps([net.prefix for net in self.networks])
        for i, net in enumerate(self.networks):
            if self.ownership_community in net.large_communities:
                problems.append(
                    f"networks[{i}] uses the ownership community {self.ownership_community}; "
                    "it is reserved to mark the agent's own paths"
                )
        names = [p.name for p in self.docker.networks]
        problems += [f"docker.networks: {n!r} listed more than once" for n in sorted(set(names)) if names.count(n) > 1]
        problems += [f"docker.networks[{i}] allows the ownership community {self.ownership_community}; it is "
                     "reserved to mark the agent's own paths" for i, p in enumerate(self.docker.networks)
                     if self.ownership_community in p.allowed_large_communities]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def namespace_quota(self) -> int:
        return min(self.max_prefixes_per_namespace, self.max_prefixes)

    def network_for(self, address: IPAddress) -> NetworkConfig | None:
        for net in self.networks:
            if address.version == net.prefix.version and address in net.prefix:
                return net
        return None


def _overlaps(prefixes: list[IPNetwork]) -> list[str]:
    """Every pair of overlapping prefixes, by sort and sweep per family: O(n log n), not O(n²)."""
    problems = []
    order = sorted(range(len(prefixes)), key=lambda i: (prefixes[i].version, int(prefixes[i].network_address),
                                                          prefixes[i].prefixlen))
    open_: tuple[int, int, int] | None = None  # (version, last address, index) of the widest prefix so far
    for i in order:
        prefix = prefixes[i]
        first = int(prefix.network_address)
        if open_ is not None and open_[0] == prefix.version and first <= open_[1]:
            j = open_[2]
            a, b = sorted((i, j))
            problems.append(f"networks[{b}] {prefixes[b]} overlaps networks[{a}] {prefixes[a]}")
            continue  # prefixes are nested or disjoint: this one lies inside the open one
        open_ = (prefix.version, int(prefix.broadcast_address), i)
    return problems


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or "[" in part:
            continue  # pydantic's names for validator steps and union branches are noise to an operator
        else:
            path += f".{part}" if path else part
    return path


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif err["type"] != "value_error" and not isinstance(err.get("input"), dict | list):
            message += f" (got {err['input']!r})"
        out.append((_location(err["loc"]), message))
    return out


def parse_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    # Validated as JSON: strict mode then still takes TOML's arrays for tuples and strings for enums
    # and paths, while refusing every other coercion.
    try:
        return AgentConfig.model_validate_json(json.dumps(data, default=str))
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from None
    except (RecursionError, ValueError) as exc:  # nesting too deep for json / pydantic; inf/nan in json.dumps
        raise ConfigError(source, [("", f"not a usable configuration: {type(exc).__name__}")]) from None


def _read(path: Path) -> str:
    """The file's text: a regular file of at most MAX_CONFIG_BYTES in UTF-8, opened without blocking (a FIFO
    or a device would otherwise hang the reader)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigUnreadable(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigUnreadable(str(path), [("", "not a regular file")])
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigUnreadable(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [("", f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [("", f"not UTF-8 text (byte {exc.start})")]) from None


def load_config(path: Path) -> AgentConfig:
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(str(path), [("", "not usable TOML: nested too deeply")]) from None
    config = parse_config(data, str(path))
    if config.status.socket.resolve() == path.resolve():
        raise ConfigError(str(path), [("status.socket", "is the configuration file itself")])
    return config
