"""What the daemon asks of Docker each pass (``[docker] enabled``): the networks Docker supplies, the addresses
its IPAM did not assign (kept out, and reported as refusals through the reconciler, so that the log, the
status socket and the refusal metrics show them with the rest), and the communities container labels add.

Docker tells of a new container or connection a moment after netlink shows its address: an unassigned address
is kept out at once but reported as refused only if it is still unassigned ``REPORT_GRACE`` seconds later (a
pass is requested then). Until Docker has answered once, nothing is known about its networks or assignments:
passes are then frozen (``frozen``: nothing withdrawn, nothing new advertised), so an agent that starts while
Docker is down neither drops live paths nor advertises addresses it cannot check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .config import AgentConfig
from .docker_source import DockerSource, require_client
from .endpoints import Endpoint
from .ipam import AddressRefusal, NamespaceId, NetworkRefusal, check_ownership, docker_networks
from .model import Attributes, IPNetwork
from .routes import Refusal

log = logging.getLogger(__name__)

Reported = tuple[Refusal, tuple[str, ...]]  # (why, who), as routes.Desired.refused holds it
REPORT_GRACE = 5.0  # seconds an unassigned address stays kept out before it is reported as refused


@dataclass(frozen=True)
class Filtered:
    endpoints: tuple[Endpoint, ...]
    config: AgentConfig  # with the networks Docker supplies appended to [[networks]]
    extras: Mapping[IPNetwork, Attributes] = field(default_factory=dict)
    refused: Mapping[IPNetwork, Reported] = field(default_factory=dict)  # to report


class DockerOwnership:
    def __init__(self, config: AgentConfig, on_change: Callable[[], None]) -> None:
        require_client()
        self.source = DockerSource(config.docker.socket, on_change)
        self._on_change = on_change
        self._first_refused: dict[IPNetwork, float] = {}
        self._recheck_pending = False
        self.network_refusals: tuple[NetworkRefusal, ...] = ()
        self.supplied: tuple[str, ...] = ()
        self._label_problems: set[str] = set()
        self._frozen_logged = False

    async def run(self) -> None:
        await self.source.run()

    @property
    def frozen(self) -> bool:
        if self.source.view is None and not self._frozen_logged:
            log.warning("Docker has not answered yet: holding gobgpd's paths as they are until it does")
            self._frozen_logged = True
        return self.source.view is None

    def apply(self, endpoints: Iterable[Endpoint], namespaces: Mapping[str, NamespaceId],
              config: AgentConfig) -> Filtered:
        view = self.source.view
        if view is None:
            return Filtered(tuple(endpoints), config)
        supplied, network_refusals = docker_networks(view, config.uplinks, config.docker, config.networks)
        for dropped in set(network_refusals) - set(self.network_refusals):
            log.warning("Docker network %s: subnet %s not used: %s", dropped.network, dropped.subnet, dropped.reason)
        self.network_refusals = network_refusals
        labels = tuple(f"{n.name} {n.prefix}" for n in supplied)
        if labels != self.supplied:
            log.info("networks from Docker: %s", ", ".join(labels) or "none")
            self.supplied = labels
        if supplied:
            config = config.model_copy(update={"networks": (*config.networks, *supplied)})
        ownership = check_ownership(endpoints, namespaces, view, config.docker)
        for problem in set(ownership.label_problems) - self._label_problems:
            log.warning("label ignored: %s", problem)
        self._label_problems = set(ownership.label_problems)
        return Filtered(ownership.endpoints, config, ownership.extras, self._to_report(ownership.refused))

    def _to_report(self, refused: Mapping[IPNetwork, AddressRefusal]) -> dict[IPNetwork, Reported]:
        now = time.monotonic()
        self._first_refused = {p: self._first_refused.get(p, now) for p in refused}
        report: dict[IPNetwork, Reported] = {}
        pending = False
        for prefix, refusal in refused.items():
            if refusal.reason is Refusal.NOT_ASSIGNED_BY_DOCKER and now - self._first_refused[prefix] < REPORT_GRACE:
                pending = True
                continue
            who = f"{refusal.endpoint} (container {refusal.container})" if refusal.container else refusal.endpoint
            report[prefix] = (refusal.reason, (who,))
        if pending and not self._recheck_pending:
            self._recheck_pending = True
            asyncio.get_running_loop().call_later(REPORT_GRACE, self._recheck)
        return report

    def _recheck(self) -> None:
        self._recheck_pending = False
        self._on_change()
