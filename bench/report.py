"""docs/benchmarks.md and README's benchmark table, generated from one committed agent JSON and one baseline
JSON (both under docs/bench/): no figure in either is typed by hand.

    python bench/report.py docs/bench/agent-<time>.json [...] --baseline docs/bench/gobgp_baseline-<time>.json

Targets are issue #16's (same-run ratios in the VM) and the ToR budget of the original design.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
X = "\u00d7"  # the multiplication sign
README_START, README_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
TARGETS = {
    "latency_p50": 1.5,  # agent p50 / floor p50
    "latency_p99": 2.0,  # agent p99 / floor p99
    "tor_delta_ms": 50.0,
    "scale_ratio": 1.2,
    "scale_process_ratio": 2.0,
    "peak_rss_mb": 64.0,
    "churn_lag_p99_s": 1.0,
    "churn_cpu_percent": 50.0,
    "noisy_p99": 2.0,
    "idle_percent": 0.5,
}


def ms(value: float) -> str:
    return f"{value:,.1f} ms"


def times(value: float) -> str:
    return f"{value:.2f}{X}"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def count(value: float) -> str:
    return f"{value:,.0f}"


def spread(s: dict[str, float], fmt: Any = times) -> str:
    return f"{fmt(s['min'])} / {fmt(s['median'])} / {fmt(s['max'])}"


def provenance(data: dict[str, Any]) -> str:
    commit = str(data.get("commit", "unknown"))
    dirty = data.get("dirty")
    state = "clean tree" if dirty is False else "**tree differed from it**" if dirty else "tree state unknown"
    return f"`{commit[:12]}` ({state})"


def measured(run: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A scenario's figures, or None when it did not run or failed (a failure is listed, never tabled)."""
    figures = run.get(name)
    return figures if isinstance(figures, dict) and "error" not in figures else None


def results_table(run: dict[str, Any]) -> list[str]:
    """Every scenario of the run against its target: the rows both documents share."""
    rows = ["| scenario | agent | same-run baseline | ratio / delta | target | met? |",
            "|---|---|---|---|---|---|"]
    latency = measured(run, "latency")
    if latency:
        for size, f in latency["by_others"].items():
            others = f"{int(size):,} other endpoints" if int(size) else "alone"
            for agent, floor, verb, call in (("agent_add", "floor_add", "add", "AddPath"),
                                             ("agent_del", "floor_del", "delete", "DeletePath")):
                a, fl = f[agent], f[floor]
                r50, r99 = f[f"{agent}_p50_vs_floor"]["all"], f[f"{agent}_p99_vs_floor"]["all"]
                ok = r50 <= TARGETS["latency_p50"] and r99 <= TARGETS["latency_p99"]
                rows.append(
                    f"| event → gobgpd RIB, {verb}, {others} (n={a['n']}, {f['rounds']} rounds) |"
                    f" p50 {ms(a['p50_ms'])}, p99 {ms(a['p99_ms'])} |"
                    f" {call} → WatchEvent p50 {ms(fl['p50_ms'])}, p99 {ms(fl['p99_ms'])} |"
                    f" p50 {times(r50)}, p99 {times(r99)} |"
                    f" p50 ≤ {TARGETS['latency_p50']}{X}, p99 ≤ {TARGETS['latency_p99']}{X} the floor's | {met(ok)} |")
    noisy = measured(run, "noisy")
    if noisy:
        q, n = noisy["quiet"]["agent_add"], noisy["noisy"]["agent_add"]
        ratio = noisy["agent_add_p99_noisy_vs_quiet"]
        rows.append(
            f"| noisy neighbour: event → RIB (add) in one namespace while another churns at"
            f" {noisy['rate_per_s']:,}/s (achieved {noisy['achieved_rate']:,.0f}/s; n={q['n']} quiet,"
            f" {n['n']} noisy) | noisy p50 {ms(n['p50_ms'])}, p99 {ms(n['p99_ms'])} |"
            f" the same, quiet: p50 {ms(q['p50_ms'])}, p99 {ms(q['p99_ms'])} | p99 {times(ratio)}"
            f" (the floor under the noise: p99 {times(noisy['floor_add_p99_noisy_vs_quiet'])}) |"
            f" p99 ≤ {TARGETS['noisy_p99']}{X} quiet | {met(ratio <= TARGETS['noisy_p99'])} |")
    tor = measured(run, "tor")
    if tor:
        a, fl = tor["agent_event_to_fib"], tor["floor_api_to_fib"]
        delta = tor["p50_over_floor_ms"]
        rows.append(
            f"| event → ToR kernel FIB (n={a['n']}) | p50 {ms(a['p50_ms'])}, p99 {ms(a['p99_ms'])} |"
            f" API path → ToR FIB p50 {ms(fl['p50_ms'])}, p99 {ms(fl['p99_ms'])} | p50 +{ms(delta)} |"
            f" ≤ floor + {TARGETS['tor_delta_ms']:.0f} ms | {met(delta <= TARGETS['tor_delta_ms'])} |")
    scale = measured(run, "scale")
    if scale:
        size = count(scale["endpoints"])
        rows.append(
            f"| scale: {size} endpoints at start → all in gobgpd (agent in-process; gobgpd"
            f" counted {count(scale['paths_in_gobgpd'])} paths) | {scale['agent_start_to_all_s']:.1f} s |"
            f" bare AddPathStream of {size}: {scale['bare_stream_s']:.2f} s | {times(scale['ratio'])} |"
            f" ≤ {TARGETS['scale_ratio']}{X} | {met(scale['ratio'] <= TARGETS['scale_ratio'])} |")
        rows.append(
            f"| scale, `ipvlan-bgp run` from exec (gobgpd counted {count(scale['paths_in_gobgpd_process'])}) |"
            f" {scale['process_exec_to_all_s']:.1f} s | (same) | {times(scale['process_ratio'])} |"
            f" ≤ {TARGETS['scale_process_ratio']}{X} |"
            f" {met(scale['process_ratio'] <= TARGETS['scale_process_ratio'])} |")
        rows.append(
            f"| agent peak RSS (VmHWM) at {size} endpoints | {scale['peak_rss_mb']:.1f} MB"
            f" (after sync {scale['rss_mb']:.1f} MB) | | | ≤ {TARGETS['peak_rss_mb']:.0f} MB |"
            f" {met(scale['peak_rss_mb'] <= TARGETS['peak_rss_mb'])} |")
    churn = measured(run, "churn")
    if churn:
        nan = float("nan")
        lag = churn["add_lag"] or {"p50_ms": nan, "p99_ms": nan, "max_ms": nan}
        exact = churn["missing"] == 0 and churn["stale"] == 0
        lag_ok = (churn["add_lag"] is not None and lag["p99_ms"] / 1e3 <= TARGETS["churn_lag_p99_s"]
                  and churn["adds_never_advertised"] == 0)
        cpu = churn["agent_cpu_percent_of_a_core"]
        rows.append(
            f"| churn: {churn['rate_per_s']:,} changes/s for {churn['seconds']:.0f} s ({count(churn['changes'])}"
            f" changes, achieved {churn['achieved_rate']:,.0f}/s), a fresh address per add | end state"
            f" {'exact' if exact else 'NOT exact'} ({churn['missing']} missing, {churn['stale']} stale) after"
            f" {churn['settle_after_end_s']:.1f} s; {count(churn['adds_written'])} adds written,"
            f" {count(churn['adds_advertised'])} advertised, {count(churn['adds_never_advertised'])} never"
            f" ({count(churn['adds_never_advertised_deleted_first'])} of them deleted again first); add lag p50"
            f" {lag['p50_ms'] / 1e3:.2f} s, p99 {lag['p99_ms'] / 1e3:.2f} s, max {lag['max_ms'] / 1e3:.2f} s;"
            f" agent {cpu:.0f} % of a core | | |"
            f" exact; every add advertised, lag p99 ≤ {TARGETS['churn_lag_p99_s']:.0f} s;"
            f" ≤ {TARGETS['churn_cpu_percent']:.0f} % of a core |"
            f" exact {met(exact)}; lag {met(lag_ok)}; CPU {met(cpu <= TARGETS['churn_cpu_percent'])} |")
    idle = measured(run, "idle")
    if idle:
        rows.append(
            f"| idle: {count(idle['endpoints'])} stable endpoints, {idle['seconds']:.0f} s"
            f" (timers.full_reconcile {idle['full_reconcile_s']:.0f} s: a full re-read inside) |"
            f" {idle['cpu_seconds']:.2f} CPU-s = {idle['cpu_percent']:.2f} % of a core | | |"
            f" ≤ {TARGETS['idle_percent']} % | {met(idle['cpu_percent'] <= TARGETS['idle_percent'])} |")
    return rows


def spread_table(run: dict[str, Any]) -> list[str]:
    latency = measured(run, "latency")
    if not latency:
        return []
    rows = ["| other endpoints | series | p50 per round (min / median / max) | p99 per round (min / median / max) |",
            "|---|---|---|---|"]
    names = {"agent_add": "agent add", "floor_add": "AddPath → WatchEvent", "agent_del": "agent delete",
             "floor_del": "DeletePath → WatchEvent", "addpath_rtt": "AddPath round trip",
             "deletepath_rtt": "DeletePath round trip"}
    for size, f in latency["by_others"].items():
        for kind, label in names.items():
            s = f["round_spread"][kind]
            rows.append(f"| {int(size):,} | {label} | {spread(s['p50_ms'], ms)} | {spread(s['p99_ms'], ms)} |")
        for agent in ("agent_add", "agent_del"):
            rows.append(f"| {int(size):,} | {names[agent]} / floor | {spread(f[f'{agent}_p50_vs_floor'])} |"
                        f" {spread(f[f'{agent}_p99_vs_floor'])} |")
    return rows


def baseline_table(base: dict[str, Any]) -> list[str]:
    return [
        "| method | paths/s |", "|---|---|",
        f"| AddPath unary, sequential (RTT p50 {base['addpath_rtt_p50_ms']:.2f} ms, p99"
        f" {base['addpath_rtt_p99_ms']:.2f} ms) | {count(base['addpath_unary_paths_per_s'])} |",
        f"| AddPathStream, 1,000 paths per message | {count(base['addpathstream_paths_per_s'])} |",
        f"| withdraw through AddPathStream | {count(base['withdraw_stream_paths_per_s'])} |",
    ]


def rel(path: Path) -> str:
    return str(path.resolve().relative_to(REPO))


SCENARIOS = ("latency", "tor", "scale", "churn", "noisy", "idle")


def merge(runs: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Path]]:
    """One view over several agent JSONs: each scenario from the last file that measured it (without error).
    Returns the merged scenarios and, per scenario, the file it came from."""
    merged: dict[str, Any] = {}
    source: dict[str, Path] = {}
    for path, run in runs:
        for name in SCENARIOS:
            if name in run and (measured(run, name) or name not in merged):
                merged[name], source[name] = run[name], path
    merged["failed"] = [name for name in SCENARIOS if name in merged and not measured(merged, name)]
    return merged, source


def runs_table(runs: list[tuple[Path, dict[str, Any]]], source: dict[str, Path]) -> list[str]:
    rows = ["| agent JSON | measured by | scenarios used from it | sizes | scenario run times |",
            "|---|---|---|---|---|"]
    for path, run in runs:
        used = ", ".join(name for name, src in source.items() if src == path) or "none (superseded)"
        durations = ", ".join(f"{k} {v / 60:.1f} min" for k, v in run.get("scenario_seconds", {}).items())
        rows.append(f"| `{rel(path)}` | commit {provenance(run)}, {run.get('date')}, kernel {run.get('kernel')},"
                    f" {run.get('cpus')} vCPUs | {used} | `{cli_args(run.get('args', {}))}` | {durations} |")
    return rows


def benchmarks_md(runs: list[tuple[Path, dict[str, Any]]], base: dict[str, Any], base_path: Path,
                  docs_dir: Path, note: str = "", command: str = "") -> str:
    run, source = merge(runs)
    pngs = [path.with_suffix(".png") for path, _ in runs if path.with_suffix(".png").exists()]
    lines = [
        "# Benchmarks",
        "",
        f"<!-- Generated by `{command}`: edit the script, not this file. -->",
        "",
        "`make bench` runs `bench/gobgp_baseline.py` (on this machine) and `bench/agent_bench.py` (on real ipvlan,"
        " in the VM where this kernel has none); `bench/report.py` writes this page and README's table from the"
        " JSON they produce. Every agent figure stands next to a baseline measured **in the same run**: the"
        " machines are shared and the VM is QEMU without KVM (TCG), so absolute times are inflated and ratios are"
        " what count.",
        "",
        "## The runs",
        "",
        *runs_table(runs, source),
        "",
        f"Baseline JSON `{rel(base_path)}`: commit {provenance(base)}, {base.get('date')},"
        f" {count(base['paths'])} paths, on the host.",
        "",
        *([note, ""] if note else []),
        "## Results against targets",
        "",
        *(line for name in run.get("failed", [])
          for line in (f"**{name} failed in this run**: `{run[name]['error']}`", "")),
        *results_table(run),
        "",
        "Latency ratios are the agent's percentile over the floor's same percentile, both over every sample of"
        " every round. **The floor** is the same observation point without the agent: a path added (deleted)"
        " through the API, timed until gobgpd's WatchEvent stream shows it, interleaved one for one with the"
        " agent's samples.",
    ]
    for png in pngs:
        lines += ["", f"![latency distributions, churn lag ({png.stem})]({os.path.relpath(png, docs_dir)})"]
    if measured(run, "latency"):
        lat = run["latency"]
        lines += [
            "",
            "## Latency: each round's spread",
            "",
            f"{lat['rounds']} rounds of {lat['events_per_round']} samples per count of other endpoints; each"
            f" sample is a floor add and delete, then the agent's add and delete, {lat['gap_s'] * 1e3:.0f} ms apart"
            " (longer than `timers.settle`, so no sample waits out a settle window left by the one before; the"
            f" gap is not in any sample). {lat['note']}.",
            "",
            *spread_table(run),
        ]
        created = [f"{int(s):,}: built in {f['others_created_s']:.0f} s, agent from exec until gobgpd held every"
                   f" path {f['agent_exec_to_all_s']:.1f} s" for s, f in lat["by_others"].items()]
        lines += ["", "Other endpoints (100 per namespace, added between counts; each count starts a new agent"
                      " process, and the paths the previous one left in gobgpd count towards its start): "
                  + "; ".join(created) + "."]
        largest = max(int(s) for s in lat["by_others"])
        if largest < 10_000:
            lines += ["", f"**Not measured in this run: latency with 10,000 other endpoints** (the largest count"
                          f" here is {largest:,}), to keep the whole run within its VM time budget."]
    if measured(run, "churn"):
        c = run["churn"]
        w = c["withdraw_lag"]
        life = c["churn_address_lifetime_s"]
        lines += [
            "",
            "## Churn: how it is counted",
            "",
            f"{c['note']}. Each add is matched by its exact prefix in gobgpd's event stream (a prefix is never"
            " reused, so the match can only be that write's own add). Adds never advertised count against the"
            f" agent, never out of the total. Addresses added during the churn lived"
            + (f" {spread(life, lambda v: f'{v:.1f} s')} (min / median / max)" if life else " (none deleted)")
            + " before their delete. Withdraw lag (deletes of advertised addresses):"
            + (f" p50 {w['p50_ms'] / 1e3:.2f} s, p99 {w['p99_ms'] / 1e3:.2f} s (n={w['n']})" if w else " none")
            + f"; withdraws never seen: {c['withdraws_missing']}.",
        ]
    if measured(run, "churn") and run["churn"].get("observation_lag"):
        c, o = run["churn"], run["churn"]["observation_lag"]
        caught = c.get("watch_caught_up_after_exact_s")
        lines += [
            "",
            f"What the observation point itself adds under this churn (a path added through the API once a second,"
            f" timed to the same RIB watch; n={o['n']}): p50 {o['p50_ms'] / 1e3:.2f} s, p99 {o['p99_ms'] / 1e3:.2f} s."
            " Every lag timed through the watch includes it, so those lags are upper bounds on the agent's; the"
            f" bound that does not depend on the watch: gobgpd's table (GetTable, then ListPath) held exactly the"
            f" final set {c['settle_after_end_s']:.1f} s after the last change was written. The watch had read every"
            " final add "
            + (f"{caught:.1f} s after gobgpd's table was exact." if caught is not None
               else "**not within 120 s** of gobgpd's table being exact (adds it had not read count as never"
                    " advertised)."),
        ]
    if measured(run, "noisy"):
        n = run["noisy"]
        lines += [
            "",
            "## Noisy neighbour",
            "",
            "One namespace (100 endpoints and a pool of addresses, as in the churn scenario)"
            f" churns at {n['rate_per_s']:,} changes/s for {n['seconds']:.0f} s as above; another namespace with one"
            " endpoint gets the latency samples above, first quiet (with the noisy namespace's endpoints present"
            " but still), then in rounds of up to 10 for as long as the noise lasts"
            f" ({n['sampled_for_s']:.0f} s). The floor's samples under the noise say how much of the change is the"
            f" observation point (gobgpd and the RIB watch) rather than the agent: floor p50"
            f" {times(n['floor_add_p50_noisy_vs_quiet'])}, p99 {times(n['floor_add_p99_noisy_vs_quiet'])} of quiet;"
            f" agent p50 {times(n['agent_add_p50_noisy_vs_quiet'])}, p99 {times(n['agent_add_p99_noisy_vs_quiet'])}"
            f" (deletes: p50 {times(n['agent_del_p50_noisy_vs_quiet'])}, p99"
            f" {times(n['agent_del_p99_noisy_vs_quiet'])}).",
        ]
        if n["sampled_for_s"] > 1.5 * n["seconds"]:
            lines += [
                "",
                f"**Read the noisy figures with care:** sampling lasted {n['sampled_for_s']:.0f} s for"
                f" {n['seconds']:.0f} s of noise, because a sample taken under the noise waited out the agent's"
                " backlog; the later samples of that round were taken after the noise had stopped. So the noisy"
                f" p50 (n={n['noisy']['agent_add']['n']}) is mostly post-noise, and the p99 (here the maximum) is the"
                " figure that shows what a quiet namespace waits while another one floods the agent.",
            ]
    if measured(run, "idle"):
        lines += ["", "## Idle", "", f"{run['idle']['note']}."]
    if measured(run, "tor"):
        lines += ["", "## ToR", "", f"Timers bounding the ToR figure: {run['tor']['timers']}."]
    lines += [
        "",
        f"## The bare GoBGP API on the host ({count(base['paths'])} IPv4 /32s, gobgpd 3.10)",
        "",
        *baseline_table(base),
        "",
        "## Reproduce",
        "",
        "```sh",
        *(f"make bench BENCH_ARGS='{cli_args(r.get('args', {}))}'" for _, r in runs),
        "cp bench/results/agent-<time>.json bench/results/agent-<time>.png docs/bench/",
        "cp bench/results/gobgp_baseline-<time>.json docs/bench/",
        "python bench/report.py docs/bench/agent-<time>.json [more, later ones win] "
        "--baseline docs/bench/gobgp_baseline-<time>.json",
        "```",
        "",
        "Earlier runs and their analysis (before these scenarios measured the cases above) are in git history.",
        "",
    ]
    return "\n".join(lines)


ARGS_OF = {"latency": {"events", "rounds", "others"}, "tor": {"tor_samples"}, "scale": {"scale", "profile"},
           "churn": {"churn_rate", "churn_seconds", "churn_pool"},
           "noisy": {"churn_rate", "noisy_seconds", "events", "churn_pool"},
           "idle": {"idle_seconds", "idle_full_reconcile", "profile"}}


def cli_args(args: dict[str, Any]) -> str:
    """The run's command line, without the defaults of scenarios it did not run."""
    wanted = {"only"} | set().union(*(ARGS_OF[name] for name in (args.get("only") or SCENARIOS)))
    parts = []
    for key, value in args.items():
        if value is None or value is False or key not in wanted:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts.append(f"{flag} {' '.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def readme_block(runs: list[tuple[Path, dict[str, Any]]], base: dict[str, Any]) -> str:
    run, _ = merge(runs)
    sources = ", ".join(f"`{rel(p)}` (commit {provenance(r)}, {r.get('date')})" for p, r in runs)
    return "\n".join([
        README_START,
        f"Generated by `bench/report.py` from {sources}; which scenario comes from which run:"
        " [docs/benchmarks.md](docs/benchmarks.md).",
        "",
        *(line for name in run["failed"] for line in (f"**{name} failed**: `{run[name]['error']}`", "")),
        *results_table(run),
        "",
        f"The bare GoBGP API on the host ({count(base['paths'])} IPv4 /32s, gobgpd 3.10, {base.get('cpus')} cores,"
        f" {base.get('date')}):",
        "",
        *baseline_table(base),
        README_END,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("agent_json", type=Path, nargs="+", help="one or more; for each scenario the last wins")
    parser.add_argument("--baseline", type=Path, required=True, help="the gobgp_baseline JSON")
    parser.add_argument("--note", type=Path, default=None,
                        help="a file of prose for under the runs table (why a scenario was re-run): no figures")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args()
    runs = [(path, json.loads(path.read_text())) for path in args.agent_json]
    base = json.loads(args.baseline.read_text())
    note = args.note.read_text().strip() if args.note else ""
    command = " ".join(["python bench/report.py", *(rel(p) for p, _ in runs), "--baseline", rel(args.baseline),
                        *(["--note", rel(args.note)] if args.note else [])])
    args.docs.write_text(benchmarks_md(runs, base, args.baseline, args.docs.parent, note, command))
    readme = args.readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{args.readme}: no {README_START} ... {README_END} block to replace")
    args.readme.write_text(pattern.sub(lambda _: readme_block(runs, base), readme))
    print(f"wrote {args.docs} and the table in {args.readme}")


if __name__ == "__main__":
    main()
