"""gobgpd's BGP peers are held back until gobgpd holds the agent's whole table; then the agent releases them.

Why: gobgpd keeps API paths in memory only. A gobgpd that (re)started and peered at once would send the ToR
what it has at that moment (nothing, or part of a re-push) and then End-of-RIB, and the ToR, as graceful-restart
helper, would then flush every stale route not re-sent yet: a withdrawal of live containers. So the shipped
gobgpd.toml starts every neighbor administratively down (``admin-down = true``), the ToR keeps our routes as
stale meanwhile (graceful restart), and once a pass has pushed the full table into the new gobgpd the agent
enables those neighbors through the API: the ToR then gets the whole table, then End-of-RIB, in one go.

Which neighbors are "held back": configured ``admin-down = true``, administratively down now, and untouched since
gobgpd created them: never established, and still carrying the down-time gobgpd stamps on a new neighbor. A
neighbor an operator disabled (``gobgp neighbor X disable``) while it was up or connecting has both timestamps
cleared by gobgpd (3.10) and is never touched; nor is one with ``admin-down = false`` in the file. (One disabled
while idle between two connection attempts, before it was ever up, cannot be told apart and would be enabled.)
"""

from __future__ import annotations

from collections.abc import Iterable

from .gobgp import BgpSpeaker, PeerInfo


def held_back(peers: Iterable[PeerInfo]) -> list[str]:
    """Addresses of the neighbors gobgpd holds back for the agent (see the module docstring)."""
    return [p.address for p in peers
            if p.configured_admin_down and p.admin_down and p.uptime is None and p.downtime is not None]


async def release_held_peers(client: BgpSpeaker) -> list[str]:
    """Enable every held-back neighbor; returns their addresses. Call it only while gobgpd holds the full table."""
    released = held_back(await client.list_peers())
    for address in released:
        await client.enable_peer(address)
    return released
