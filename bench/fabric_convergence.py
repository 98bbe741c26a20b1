"""Host-failure convergence in the fabric (issue #15, item 4): how long the spine and the host's leaf keep a dead
host's routes, per failure, with the settings in force.

Brings up containerlab/fabric.clab.yml in the embedded lab without its ipvlan containers (this kernel has none;
the routing under test is BGP between gobgpd and FRR), runs each case of lab/ipvlan_bgp_lab/convergence.py
``-n`` times and writes docs/convergence/convergence-<time>.json; then renders docs/convergence.md from every
JSON there. Knob options (``--hold``, ``--restart-time``, ``--leaf-bgp``...) change a copy of the configs for
one run, to show what each setting bounds. Run it under the netns tier's lock, as `make convergence` does:

    flock /tmp/ibgp-netns.lock .venv/bin/python -m bench.fabric_convergence [-n 3] [--cases link-leaf,freeze]
    make convergence CONVERGENCE_ARGS="-n 5"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ipvlan_bgp_lab.convergence import CASES, PREFIX, Fabric, Knobs, convergence_topology, settings  # noqa: E402
from ipvlan_bgp_lab.embedded import EmbeddedLab  # noqa: E402
from provenance import code_state  # noqa: E402

RESULTS = REPO / "docs" / "convergence"
DOC = REPO / "docs" / "convergence.md"


async def measure(knobs: Knobs, cases: list[str], runs: int, timeout: float, log: Any = print) -> dict[str, Any]:
    this = asyncio.current_task()
    assert this is not None
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop cleanly (lab down) even where the shell ignores SIGINT
        asyncio.get_running_loop().add_signal_handler(sig, this.cancel)
    with tempfile.TemporaryDirectory(prefix="fabric-convergence-") as workdir:
        lab = EmbeddedLab(convergence_topology(Path(workdir), knobs))
        lab.up(progress=lambda line: log(f"lab: {line}"))
        fabric = Fabric(lab)
        try:
            await fabric.start()
            record: dict[str, Any] = {"knobs": knobs.label(), "settings": settings(lab), "cases": {}}
            log(f"settings in force: {record['settings']}")
            for case in cases:
                outcomes = []
                for i in range(runs):
                    outcome = await fabric.run(case, timeout)
                    outcomes.append(vars(outcome))
                    log(f"{case} #{i + 1}: spine FIB without {PREFIX} after {fmt(outcome.spine_gone_s)}, "
                        f"leaf1 after {fmt(outcome.leaf_gone_s)}, withdrawals spine {outcome.spine_withdrawals} "
                        f"leaf1 {outcome.leaf_withdrawals}, stale at leaf1 {outcome.stale_at_leaf}, "
                        f"reset {outcome.leaf_reset_reason!r}, fresh {fmt(outcome.fresh_s)}, "
                        f"back {fmt(outcome.recovered_s)}")
                record["cases"][case] = {"description": CASES[case], "runs": outcomes,
                                         "summary": summary(outcomes)}
            return record
        finally:
            await fabric.stop()
            lab.down()


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in ("spine_gone_s", "leaf_gone_s", "fresh_s", "recovered_s"):
        values = [o[key] for o in outcomes if o[key] is not None]
        result[key] = {"median": statistics.median(values), "worst": max(values), "best": min(values),
                       "n": len(values)} if values else None
    result["spine_withdrawals"] = sum(o["spine_withdrawals"] for o in outcomes)
    result["leaf_withdrawals"] = sum(o["leaf_withdrawals"] for o in outcomes)
    result["stale_at_leaf"] = sum(bool(o["stale_at_leaf"]) for o in outcomes)
    result["reset_reasons"] = sorted({o["leaf_reset_reason"] for o in outcomes if o["leaf_reset_reason"]})
    result["runs"] = len(outcomes)
    return result


# --- docs/convergence.md -----------------------------------------------------------------------------------------

def spread(s: dict[str, Any] | None) -> str:
    if not s:
        return "kept"
    digits = 2 if s["worst"] < 10 else 1
    return f"{s['median']:.{digits}f} s / {s['worst']:.{digits}f} s"


def case_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    for case, data in record["cases"].items():
        s = summary(data["runs"])  # from the runs: a file written before a field existed renders the same
        outcome = (f"spine {spread(s['spine_gone_s'])}, leaf1 {spread(s['leaf_gone_s'])}" if case != "kill-return"
                   else f"withdrawn: spine {s['spine_withdrawals']} times, leaf1 {s['leaf_withdrawals']} times "
                        f"(fresh again after {spread(s['fresh_s'])})")
        back = spread(s.get("recovered_s")) if case != "kill-return" else "-"
        rows.append(f"| {case} | {data['description']} | {outcome} | {s['stale_at_leaf']}/{s['runs']} | "
                    f"{', '.join(s['reset_reasons']) or '-'} | {back} |")
    return rows


def render(results: list[tuple[Path, dict[str, Any]]]) -> str:
    """The generated part of docs/convergence.md: one table per run (shipped settings first)."""
    lines = []
    for path, record in sorted(results, key=lambda r: (r[1]["knobs"] != "as shipped", r[0].name)):
        st = record["settings"]
        lines += [
            f"### {record['knobs']} ({path.name})",
            "",
            f"{record['runs']} runs per case on {record['host']} (namespaces on the host's kernel, not the VM), "
            f"commit {record['code']['commit'][:10]}"
            f"{' (dirty)' if record['code']['dirty'] else ''}. In force: gobgpd hold {st['gobgpd_hold_time']} s / "
            f"keepalive {st['gobgpd_keepalive']} s (negotiated with leaf1: {st['negotiated_hold_s']:g} / "
            f"{st['negotiated_keepalive_s']:g} s), graceful restart {'on' if st['gobgpd_graceful_restart'] else 'off'}"
            f" with restart-time {st['gobgpd_restart_time']} s (leaf1 received {st['leaf_received_restart_time']}, "
            f"leaf1 GR mode {st['leaf_gr_mode']}, "
            f"RFC 8538 N-bit from host1 {'set' if st.get('host_n_bit') else 'not set'}), "
            f"leaf1 stalepath-time {st['leaf_stalepath_time']} s, "
            f"fast-external-failover {'on' if st['leaf_fast_external_failover'] else 'off'}.",
            "",
            "| case | failure | time until the FIB lost host1's route (median / worst) | leaf1 held it stale | "
            "why leaf1's session went | spine has it again, after the repair (median / worst) |",
            "|---|---|---|---|---|---|",
            *case_rows(record),
            "",
        ]
    return "\n".join(lines)


START, END = "<!-- convergence:start -->", "<!-- convergence:end -->"


def write_doc() -> None:
    results = [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob("convergence-*.json"))]
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{render(results)}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--runs", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--timeout", type=float, default=0,
                        help="bound of each wait (default: restart-time + hold + 60 s)")
    parser.add_argument("--hold", type=int, help="host1's gobgpd hold-time (shipped: 9)")
    parser.add_argument("--keepalive", type=int, help="host1's gobgpd keepalive-interval (shipped: 3)")
    parser.add_argument("--restart-time", type=int, help="host1's gobgpd graceful-restart restart-time (shipped: 120)")
    parser.add_argument("--leaf-bgp", action="append", default=[],
                        help="a line for leaf1's `router bgp` block (repeatable), e.g. 'no bgp fast-external-failover'")
    parser.add_argument("--render-only", action="store_true", help="only regenerate docs/convergence.md")
    args = parser.parse_args()
    if args.render_only:
        write_doc()
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or args.runs < 1:
        parser.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}" if unknown
                     else "--runs must be at least 1")
    knobs = Knobs(args.hold, args.keepalive, args.restart_time, tuple(args.leaf_bgp))
    timeout = args.timeout or (knobs.restart_time or 120) + (knobs.hold_time or 9) + 60
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    record = asyncio.run(measure(knobs, cases, args.runs, timeout, log=lambda m: print(m, flush=True)))
    record |= {"runs": args.runs, "started": started, "host": f"{platform.node()} {platform.release()}",
               "code": code_state(outputs=(str(DOC.relative_to(REPO)),))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"convergence-{started}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    write_doc()
    print(f"rendered {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
