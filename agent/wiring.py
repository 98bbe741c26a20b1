"""The one place that builds the agent's edges from a configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import AgentConfig
from .discovery import Discovery

if TYPE_CHECKING:  # the gRPC stubs load only when a command talks to gobgpd (--help works without them)
    from .gobgp import GobgpClient


def gobgp_client(config: AgentConfig) -> GobgpClient:
    from .gobgp import GobgpClient

    g = config.gobgp
    return GobgpClient(g.target, config.ownership_community, tls_ca_file=g.tls_ca_file,
                       tls_server_name=g.tls_server_name, rpc_timeout=g.rpc_timeout)


def discovery(config: AgentConfig) -> Discovery:
    return Discovery(config.uplinks, config.netns_dirs, config.timers.netns_rescan)
