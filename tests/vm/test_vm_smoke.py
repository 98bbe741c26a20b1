"""Smoke tests for the vm tier: a kernel with ipvlan, driven in-process through pyroute2."""

from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS, netns

pytestmark = pytest.mark.vm

IPVLAN_MODE_L3 = 1


def test_guest_runs_the_pinned_kernel() -> None:
    if not os.environ.get("IBGP_IN_VM"):
        pytest.skip("running on this host's own kernel (--vm=local)")
    assert platform.release() == os.environ["IBGP_VM_KERNEL"].removeprefix("linux-image-")


def test_ipvlan_module_is_loaded() -> None:
    assert Path("/sys/module/ipvlan").is_dir()


def test_ipvlan_l3_slave_in_a_namespace() -> None:
    tag = uuid.uuid4().hex[:8]
    ns, parent, slave = f"ibgp-smoke-{tag}", f"dm{tag}", f"iv{tag}"  # interface names: at most 15 chars
    netns.create(ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=parent, kind="dummy")
            (parent_idx,) = ipr.link_lookup(ifname=parent)
            try:
                ipr.link("set", index=parent_idx, state="up")
                ipr.link("add", ifname=slave, kind="ipvlan", link=parent_idx, ipvlan_mode=IPVLAN_MODE_L3)
                (slave_idx,) = ipr.link_lookup(ifname=slave)
                ipr.link("set", index=slave_idx, net_ns_fd=ns)
                with NetNS(ns) as nsr:
                    (idx,) = nsr.link_lookup(ifname=slave)
                    nsr.addr("add", index=idx, address="10.99.0.2", prefixlen=24)
                    nsr.link("set", index=idx, state="up")
                    links = {link.get("IFLA_IFNAME"): link for link in nsr.link("dump")}
                    addrs = [(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in nsr.get_addr(index=idx)]
            finally:
                ipr.link("del", index=parent_idx)  # takes the slave with it
    finally:
        netns.remove(ns)

    info = links[slave].get("IFLA_LINKINFO")
    print(f"{slave} in {ns}: kind={info.get('IFLA_INFO_KIND')} data={info.get('IFLA_INFO_DATA')} addrs={addrs}")
    assert info.get("IFLA_INFO_KIND") == "ipvlan"
    assert info.get("IFLA_INFO_DATA").get("IFLA_IPVLAN_MODE") == IPVLAN_MODE_L3
    assert ("10.99.0.2", 24) in addrs
