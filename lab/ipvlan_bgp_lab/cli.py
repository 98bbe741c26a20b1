"""``ipvlan-bgp-lab up|status|down|demo [TOPOLOGY]``: the embedded lab, a containerlab topology on network
namespaces (needs root; ``demo`` runs in a VM where this kernel has no ipvlan)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import RepoNotFound, demo, repo_root
from .embedded import EmbeddedLab, LabError
from .topology import TopologyError, load_topology


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipvlan-bgp-lab", description=__doc__)
    parser.add_argument("action", choices=["up", "status", "down", "demo"])
    parser.add_argument("topology", type=Path, nargs="?",
                        help="a containerlab topology (default: containerlab/rack.clab.yml of the checkout)")
    args = parser.parse_args(argv)
    try:
        topology_path = (args.topology or repo_root() / "containerlab" / "rack.clab.yml").resolve()
        if args.action == "demo":
            return demo.main(["--topology", str(topology_path)])
        lab = EmbeddedLab(load_topology(topology_path))
        if args.action == "up":
            if not demo.kernel_has_ipvlan():
                print("this kernel has no ipvlan, so the lab cannot stay up here; `ipvlan-bgp-lab demo` runs it "
                      "(up, show, down) inside a VM", file=sys.stderr)
                return 1
            lab.up()
            return 0 if demo.show(lab) else 1
        if args.action == "status":
            if not lab.state.namespaces:
                print(f"lab {lab.topology.name} is not up", file=sys.stderr)
                return 1
            return 0 if demo.show(lab, timeout=0.0) else 1
        lab.down()
        print(f"lab {lab.topology.name} is down")
        return 0
    except (LabError, TopologyError, RepoNotFound, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
