from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from ipvlan_bgp_lab.gobgpd import Gobgpd, global_config

from agent.gobgp import GobgpClient
from agent.model import LargeCommunity

OWNER = LargeCommunity(65001, 4242, 1)


@pytest.fixture
def gobgpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gobgpd]:
    daemon = Gobgpd(global_config(65001, "10.255.0.1"), tmp_path_factory.mktemp("gobgpd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
async def client(gobgpd: Gobgpd) -> AsyncIterator[GobgpClient]:
    async with GobgpClient(gobgpd.target, OWNER, rpc_timeout=30) as c:
        await c.connect(timeout=10)
        yield c
