"""A smoke check of bench/fabric_convergence.py's cases (no ipvlan needed): in the fabric without containers,
host1's uplink set down at the leaf takes host1's route out of the spine's FIB, and gobgpd SIGKILLed with
graceful restart and started again at once (the agent re-pushes) withdraws nothing at the spine or the leaf.
Outcomes only; the times are the benchmark's (docs/convergence.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ipvlan_bgp_lab.convergence import Fabric, convergence_topology
from ipvlan_bgp_lab.embedded import EmbeddedLab

pytestmark = pytest.mark.skipif(not Path("/usr/lib/frr/bgpd").exists(), reason="FRR is not installed")


@pytest.fixture
async def fabric(tmp_path: Path) -> AsyncIterator[Fabric]:
    lab = EmbeddedLab(convergence_topology(tmp_path))
    lab.up(progress=lambda _: None)
    fabric = Fabric(lab)
    try:
        await fabric.start()
        yield fabric
    finally:
        await fabric.stop()
        lab.down()


async def test_a_dead_uplink_leaves_the_spine_and_a_quick_gobgpd_restart_withdraws_nothing(fabric: Fabric) -> None:
    down = await fabric.run("link-leaf", timeout=60)
    assert down.spine_gone_s is not None and down.spine_withdrawals == 1, down
    assert down.leaf_gone_s is not None, down
    assert down.recovered_s is not None, down  # and it came back once the link was up again

    restart = await fabric.run("kill-return", timeout=60)
    assert restart.stale_at_leaf, restart  # leaf1 was graceful-restart helper: it held the path stale
    assert (restart.spine_withdrawals, restart.leaf_withdrawals) == (0, 0), restart
    assert restart.fresh_s is not None, restart  # and it took the agent's re-push as the fresh path
