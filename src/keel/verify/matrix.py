"""`make verify`: the full matrix, every fault kind against every workload, one run each,
and a table of what each run saw: operations, ok/fail/indeterminate, verdict, convergence.

`python -m keel.verify.matrix [--out DIR] [--duration S] [--seed N] [--faults K,K]` runs it;
`python -m keel.verify.matrix --summarize DIR` prints the table of runs already made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from keel.verify.history import load_history
from keel.verify.nemesis import FAULTS

__all__ = ["main", "summarize"]

WORKLOADS = ("register", "store-register", "watch", "fencing", "exclusive")


def summarize(run_dirs: list[Path]) -> str:
    """A Markdown table: fault x workload -> operations, ok/fail/info, verdict, convergence."""
    rows = [
        "| fault | checker | operations | ok | fail | info | figures | verdict | convergence |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for run_dir in run_dirs:
        history_path = run_dir / "history.jsonl"
        verdicts_path = run_dir / "verdicts.json"
        if not history_path.exists() or not verdicts_path.exists():
            rows.append(f"| {run_dir.name} | (incomplete run) | | | | | | | |")
            continue
        schedule = json.loads((run_dir / "schedule.json").read_text())
        faults = sorted({f["kind"] for f in schedule.get("faults", [])}) or ["none"]
        history = load_history(history_path)
        verdicts: list[dict[str, Any]] = json.loads(verdicts_path.read_text())
        counts: dict[str, Counter[str]] = {}
        for event in history:
            workload = str(event.get("workload"))
            if event.get("type") in ("ok", "fail", "info"):
                counts.setdefault(workload, Counter())[str(event["type"])] += 1
        convergence = next(
            (
                v.get("stats", {}).get("convergence_seconds")
                for v in verdicts
                if v["model"] == "convergence"
            ),
            None,
        )
        converged = f"{convergence:.1f} s" if isinstance(convergence, (int, float)) else "-"
        for verdict in verdicts:
            model = str(verdict["model"])
            workload = {
                "register (HTTP API)": "register",
                "register (store client)": "store-register",
            }.get(model, model)
            c = counts.get(workload, Counter())
            total = sum(c.values())
            mark = "valid" if verdict["valid"] else "**INVALID**"
            rows.append(
                f"| {', '.join(faults)} | {model} | {total or '-'} | {c['ok'] or '-'} |"
                f" {c['fail'] or '-'} | {c['info'] or '-'} | {_figures(model, verdict)} |"
                f" {mark} | {converged} |"
            )
    return "\n".join(rows)


def _figures(model: str, verdict: dict[str, Any]) -> str:
    """The few numbers of a non-register checker that say how much it saw."""
    stats = verdict.get("stats", {})
    if model == "watch":
        return (
            f"{stats.get('events_delivered', 0)} events, {stats.get('resumes', 0)} resumes,"
            f" {stats.get('relists', 0)} relists"
        )
    if model == "fencing":
        return (
            f"{stats.get('token_transitions', 0)} tokens,"
            f" {stats.get('rejected_stale_writes', 0)} stale writes refused"
        )
    if model == "exclusive":
        return (
            f"{stats.get('copies', 0)} copies, longest gap {stats.get('gap_max_seconds', 0):.1f} s"
        )
    if model == "duplicates":
        return f"{stats.get('uids', 0)} instances"
    if model == "surge":
        peak = stats.get("peak_instances", 0)
        peak = max(peak.values(), default=0) if isinstance(peak, dict) else peak
        return f"{stats.get('samples', 0)} samples, at most {peak} instances"
    if model == "convergence":
        return f"{stats.get('probes', 0)} probes"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel.verify.matrix")
    parser.add_argument("--out", default=".keel/verify/matrix")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--store", default="etcd")
    parser.add_argument("--summarize", metavar="DIR", help="only print the table of DIR's runs")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(sorted(p for p in Path(args.summarize).iterdir() if p.is_dir())))
        return 0
    from keel.verify.cluster import ClusterShape
    from keel.verify.run import RunOptions, verify

    out = Path(args.out).resolve()
    runs: list[Path] = []
    valid = True
    for index, fault in enumerate(f for f in args.faults.split(",") if f):
        run_dir = out / fault
        options = RunOptions(
            run_dir=run_dir,
            seed=args.seed + index,
            duration=args.duration,
            faults=(fault,),
            shape=ClusterShape(store=args.store, apiservers=2 if args.store == "etcd" else 1),
        )
        print(f"== {fault}", flush=True)
        result = asyncio.run(verify(options, say=lambda line: print(line, flush=True)))
        valid = valid and result.valid
        runs.append(run_dir)
    table = summarize(runs)
    (out / "matrix.md").write_text(table + "\n")
    print(table)
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
