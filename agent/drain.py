"""Graceful drain (RFC 8326): take a host out of service without dropping a packet.

Draining re-announces every path with the GRACEFUL_SHUTDOWN community (65535:0); routers that honour it
(the shipped FRR configs: a route-map setting local-preference 0 on receipt, as RFC 8326 asks receivers)
prefer any other path to the same prefix (an anycast address served from another host, an aggregate from
another rack) while this host's paths stay usable until the others have taken over. With
``drain.as_path_prepend = N`` the host's AS (gobgpd's) is also put N more times on each path's AS_PATH, for routers
that ignore the community. Optionally, after
``drain.withdraw_after`` seconds, every path is withdrawn. Undrain restores the paths as configured.

The drain is kept in ``drain.state_file`` (under systemd's StateDirectory), so an agent restarted while
drained, an upgrade say, stays drained until ``ipvlan-bgp undrain``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .model import Attributes, Community

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN = Community(65535, 0)  # RFC 8326, the well-known GRACEFUL_SHUTDOWN community


def drained_attributes(attributes: Attributes, prepend: tuple[int, ...] = ()) -> Attributes:
    """``prepend``: ASNs put on the AS_PATH (gobgpd adds its own AS in front on export to an eBGP peer)."""
    return dataclasses.replace(attributes, communities=(*attributes.communities, GRACEFUL_SHUTDOWN),
                               as_path=(*prepend, *attributes.as_path))


@dataclass(frozen=True)
class Drain:
    """Whether the host is drained, since when (wall clock), and when (if ever) its paths are withdrawn."""

    since: float | None = None
    withdraw_after: float = 0.0  # seconds after ``since``; 0: never

    @property
    def drained(self) -> bool:
        return self.since is not None

    @property
    def withdraw_at(self) -> float | None:
        if self.since is None or not self.withdraw_after:
            return None
        return self.since + self.withdraw_after

    def withdrawn(self, now: float | None = None) -> bool:
        at = self.withdraw_at
        return at is not None and (time.time() if now is None else now) >= at

    def as_json(self) -> dict[str, object]:
        return {"drained": self.drained, "since": self.since, "withdraw_at": self.withdraw_at,
                "withdrawn": self.withdrawn()}


def load_drain(path: Path, withdraw_after: float) -> Drain:
    """The drain kept in ``path`` by a previous run (none if the file is absent or unreadable)."""
    try:
        since = float(json.loads(path.read_text())["since"])
    except FileNotFoundError:
        return Drain(withdraw_after=withdraw_after)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("drain state %s is unusable (%s): treating this host as drained since now", path, exc)
        since = time.time()
    return Drain(since, withdraw_after)


def save_drain(path: Path, drain: Drain) -> None:
    """Keep the drain for the next start (remove the file on undrain); raises OSError."""
    if drain.since is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"since": drain.since}) + "\n")
    os.replace(tmp, path)
