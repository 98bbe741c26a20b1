"""The metrics the daemon exports: names, pre-initialised labels, per-peer series, drift repairs."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from prometheus_client import generate_latest

from agent import __version__
from agent.daemon import Daemon, running
from agent.gobgp import GobgpRejected, GobgpUnavailable, PeerInfo
from agent.metrics import ERROR_KINDS, Metrics, error_kind
from agent.routes import Refusal

from ..fakes import FAKE_PEER, FakeDiscovery, FakeGobgp
from ..helpers import eventually
from .test_daemon_fake import OWNER, agent_config, endpoint


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_label_values_known_in_advance_are_present_at_zero() -> None:
    m = Metrics()
    for kind in ERROR_KINDS:
        assert sample(m, "ipvlan_bgp_errors_total", kind=kind) == 0
    for reason in Refusal:
        assert sample(m, "ipvlan_bgp_prefix_refusals_total", reason=reason.value) == 0
        assert sample(m, "ipvlan_bgp_prefixes_refused", reason=reason.value) == 0
    for result in ("ok", "error"):
        assert sample(m, "ipvlan_bgp_reconcile_passes_total", result=result) == 0
    for result in ("ok", "refused", "invalid"):
        assert sample(m, "ipvlan_bgp_config_reloads_total", result=result) == 0
    assert sample(m, "ipvlan_bgp_netlink_resyncs_total") == 0
    assert sample(m, "ipvlan_bgp_drift_repairs_total") == 0
    assert sample(m, "ipvlan_bgp_build_info", version=__version__, gobgp_api="v3") == 1


def test_no_created_series_and_buckets_cover_a_large_start() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert "_created" not in text
    assert 'ipvlan_bgp_reconcile_duration_seconds_bucket{le="300.0"}' in text
    for line in text.splitlines():
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line


def test_error_kinds_are_a_fixed_vocabulary() -> None:
    assert error_kind(GobgpUnavailable("x")) == "gobgpd_unavailable"
    assert error_kind(GobgpRejected("x")) == "gobgpd_rejected"
    assert error_kind(RuntimeError("bug")) == "internal"


def test_resyncs_counter_follows_discoverys_totals() -> None:
    m = Metrics()
    m.observe_resyncs(3)
    m.observe_resyncs(3)
    m.observe_resyncs(5)
    assert sample(m, "ipvlan_bgp_netlink_resyncs_total") == 5


def test_peers_replace_the_previous_set_and_go_down_with_gobgpd() -> None:
    m = Metrics()
    m.observe_peers([PeerInfo("192.0.2.1", 65000, "established", 5.0, accepted=1, advertised=7),
                     PeerInfo("192.0.2.5", 65000, "active", None)])
    assert sample(m, "ipvlan_bgp_bgp_session_up", peer="192.0.2.1") == 1
    assert sample(m, "ipvlan_bgp_bgp_session_up", peer="192.0.2.5") == 0
    assert sample(m, "ipvlan_bgp_bgp_prefixes", peer="192.0.2.1", direction="advertised") == 7
    assert sample(m, "ipvlan_bgp_bgp_prefixes", peer="192.0.2.1", direction="accepted") == 1
    m.observe_gobgpd_lost()
    assert sample(m, "ipvlan_bgp_bgp_session_up", peer="192.0.2.1") == 0
    m.observe_peers([PeerInfo("192.0.2.1", 65000, "established", 5.0)])
    assert sample(m, "ipvlan_bgp_bgp_session_up", peer="192.0.2.5") is None


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    return sample(daemon.metrics, name, **labels)


async def test_daemon_exports_peers_success_time_and_drift_repairs(tmp_path: Path) -> None:
    fake, discovery = FakeGobgp(OWNER), FakeDiscovery([endpoint("10.1.0.2/16")])
    config = agent_config(tmp_path, timers={"settle": 0.0, "rib_check": 0.1})
    before = time.time()
    async with running(config, speaker=fake, discovery=discovery) as daemon:
        assert (metric(daemon, "ipvlan_bgp_last_reconcile_success_timestamp_seconds") or 0) >= before
        await eventually(lambda: metric(daemon, "ipvlan_bgp_bgp_prefixes", peer=FAKE_PEER,
                                        direction="advertised") == 2, what="per-peer advertised count")
        assert metric(daemon, "ipvlan_bgp_bgp_session_up", peer=FAKE_PEER) == 1
        lists = fake.peer_lists
        for _ in range(5):
            generate_latest(daemon.metrics.registry)
        assert fake.peer_lists - lists <= 1  # a scrape is no ListPeer (at most one drift check in between)
        fake.set_peer_state("active")
        await eventually(lambda: metric(daemon, "ipvlan_bgp_bgp_session_up", peer=FAKE_PEER) == 0,
                         what="session down")
        assert metric(daemon, "ipvlan_bgp_drift_repairs_total") == 0
        fake.delete_behind_our_back(ipaddress.ip_network("10.1.0.2/32"))
        await eventually(lambda: metric(daemon, "ipvlan_bgp_drift_repairs_total") == 1, what="drift repair counted")
