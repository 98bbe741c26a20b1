"""Agent configuration: a strict pydantic model loaded from TOML.

Unknown keys are rejected and values are not coerced (``max_prefixes = "10"`` is an error), so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import re
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
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


class ConfigError(Exception):
    """The configuration file cannot be used. ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {where}: {what}" if where else f"  {what}" for where, what in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


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
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


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
    connect_timeout: float = Field(default=10.0, gt=0)
    # Below half the shipped unit's WatchdogSec: a frozen gobgpd is reported (STATUS=, status, metric)
    # within one watchdog period, and a shutdown withdraw's first call ends before systemd gives up.
    rpc_timeout: float = Field(default=30.0, gt=0)

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
    name: str = ""
    advertise: Advertise = Advertise.BOTH
    aggregate_when: AggregateWhen = AggregateWhen.USED
    communities: tuple[CommunityValue, ...] = ()
    large_communities: tuple[LargeCommunityValue, ...] = ()
    local_pref: U32 | None = None
    med: U32 | None = None

    @property
    def label(self) -> str:
        return self.name or str(self.prefix)

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
    full_reconcile: float = Field(default=300.0, gt=0, description="seconds between unconditional full re-reads "
                                  "of gobgpd (they repair any drift)")
    rib_check: float = Field(default=30.0, gt=0, description="seconds between cheap checks of gobgpd's path "
                             "counts; a change the agent did not make triggers a full re-read at once")
    netns_rescan: float = Field(default=10.0, gt=0, description="seconds between namespace directory rescans")


class DampeningConfig(_Strict):
    enabled: bool = True
    max_flaps: int = Field(default=6, ge=1, description="transitions within `window` that trigger a hold-down")
    window: float = Field(default=30.0, gt=0)
    hold_down: float = Field(default=30.0, gt=0, description="seconds of stability needed to advertise again")


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


class AgentConfig(_Strict):
    uplinks: tuple[InterfaceName, ...] = Field(min_length=1)
    ownership_community: LargeCommunityValue
    networks: tuple[NetworkConfig, ...] = ()
    netns_dirs: tuple[Path, ...] = (Path("/run/netns"), Path("/run/docker/netns"))
    max_prefixes: int = Field(default=10_000, ge=1)
    on_shutdown: OnShutdown = OnShutdown.RETAIN
    gobgp: GobgpConfig = GobgpConfig()
    next_hop: NextHopConfig = NextHopConfig()
    timers: TimersConfig = TimersConfig()
    dampening: DampeningConfig = DampeningConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    status: StatusConfig = StatusConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[str] = []
        if len(set(self.uplinks)) != len(self.uplinks):
            problems.append("uplinks: listed more than once")
        for i, net in enumerate(self.networks):
            for j in range(i):
                other = self.networks[j]
                if net.prefix.version == other.prefix.version and net.prefix.overlaps(other.prefix):
                    problems.append(f"networks[{i}] {net.prefix} overlaps networks[{j}] {other.prefix}")
            if self.ownership_community in net.large_communities:
                problems.append(
                    f"networks[{i}] uses the ownership community {self.ownership_community}; "
                    "it is reserved to mark the agent's own paths"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def network_for(self, address: IPAddress) -> NetworkConfig | None:
        for net in self.networks:
            if address.version == net.prefix.version and address in net.prefix:
                return net
        return None


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


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("", f"not valid TOML: {exc}")]) from None
    return parse_config(data, str(path))
