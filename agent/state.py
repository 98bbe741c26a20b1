"""What the daemon publishes: a ``PassResult`` after each reconcile pass (for metrics) and an immutable
``AgentState`` after each pass or health change (for the status socket). Readers never touch the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .endpoints import Endpoint
from .model import IPNetwork, Route
from .routes import Plan, Refusal


@dataclass(frozen=True)
class PassResult:
    endpoints: tuple[Endpoint, ...]
    held_down: tuple[Endpoint, ...]
    namespaces: int
    resyncs: int
    duration: float
    plan: Plan | None = None  # None: the pass failed
    error: str | None = None  # the exception's type name when it failed
    error_kind: str = "internal"  # when it failed: the errors_total{kind} label (metrics.ERROR_KINDS)
    event_latency: float | None = None  # first change of the burst -> paths in gobgpd
    advertised: frozenset[IPNetwork] = frozenset()
    refused: Mapping[Refusal, frozenset[IPNetwork]] = field(default_factory=dict)  # after the pass, by reason
    refused_before: Mapping[Refusal, frozenset[IPNetwork]] = field(default_factory=dict)
    netlink_dropped: Mapping[str, int] = field(default_factory=dict)  # totals since start, by reason

    @property
    def ok(self) -> bool:
        return self.plan is not None


@dataclass(frozen=True)
class AgentState:
    healthy: bool = False
    unhealthy_reason: str = "starting"
    gobgp_target: str = ""
    gobgp_reachable: bool = False
    gobgp_restarts: int = 0
    endpoints: tuple[Endpoint, ...] = ()
    held_down: int = 0
    advertised: Mapping[IPNetwork, Route] = field(default_factory=dict)  # a read-only copy
    sources: Mapping[IPNetwork, tuple[str, ...]] = field(default_factory=dict)
    refused: Mapping[Refusal, frozenset[IPNetwork]] = field(default_factory=dict)
    namespaces: int = 0
    missing_uplinks: tuple[str, ...] = ()  # configured, but no such link in the host
    resyncs: int = 0
    netlink_dropped: Mapping[str, int] = field(default_factory=dict)
    passes: int = 0
    failures: int = 0
    last_pass_at: float | None = None
    last_duration: float = 0.0
