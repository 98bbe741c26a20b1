"""The status server replaces a stale socket left by a killed agent, and nothing else."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.gobgp import PeerInfo
from agent.state import AgentState
from agent.status import StatusServer, StatusSocketError


async def no_peers() -> list[PeerInfo]:
    return []


async def test_only_a_socket_is_ever_removed_from_the_status_path(tmp_path: Path) -> None:
    precious = tmp_path / "agent.toml"
    precious.write_text("keep me")
    with pytest.raises(StatusSocketError, match="not a socket"):
        await StatusServer(AgentState, no_peers, precious).start()
    assert precious.read_text() == "keep me"

    stale = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(stale))
    server = StatusServer(AgentState, no_peers, stale)
    await server.start()
    await server.close()
    assert not stale.exists()
