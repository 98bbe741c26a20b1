"""Which gobgpd neighbors the agent may release: only those gobgpd holds back for it by config."""

from __future__ import annotations

import pytest

from agent.gobgp import PeerInfo
from agent.peers import held_back

NEW = 1_795_000_000.0  # an epoch timestamp


def peer(**overrides: object) -> PeerInfo:
    fields: dict[str, object] = {"address": "192.0.2.1", "asn": 65000, "state": "idle", "uptime": None,
                                 "downtime": NEW, "admin_down": True, "configured_admin_down": True}
    fields.update(overrides)
    return PeerInfo(**fields)  # type: ignore[arg-type]


def test_a_neighbor_untouched_since_gobgpd_created_it_is_held_back() -> None:
    assert held_back([peer()]) == ["192.0.2.1"]


@pytest.mark.parametrize("why, overrides", [
    ("already enabled", {"admin_down": False, "state": "active"}),
    ("not admin-down in the config: the agent never holds it", {"configured_admin_down": False}),
    ("an operator disabled it after a session (gobgpd clears both times)", {"downtime": None}),
    ("it has been up since gobgpd created it", {"uptime": NEW + 5, "downtime": NEW + 9}),
])
def test_anything_else_is_left_alone(why: str, overrides: dict[str, object]) -> None:
    assert held_back([peer(**overrides)]) == [], why
