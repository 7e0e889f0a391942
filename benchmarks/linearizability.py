"""Register linearizability checker: how long `check_register` takes on a Jepsen-sized history.

A seeded history of N operations (default 10,000) on 20 keys, 5 clients per key, mixed
read/write/cas on values 0-4 with ~5% of outcomes unknown, made by a real register simulation
where every op takes effect at a random instant inside its interval (so the history is
linearizable and the search must find that out). Goal: well under 10 s, aim 1-2 s.
Baselines in the same run: decoding the same history from JSON lines (what reading the file
costs), and the checker on a purely sequential history of the same size (no concurrency to
search through). A denser run, 4x the clients on a quarter of the keys, shows how the search
copes with more concurrency.

    python benchmarks/linearizability.py [--ops N] [--keys K] [--clients C] [--seed S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from keel.verify import check_register, parse_history


def register_history(
    ops: int, keys: int, clients: int, *, info: float = 0.05, seed: int = 0
) -> list[dict[str, Any]]:
    """A linearizable history: each key's ops take effect, in order of a random instant inside
    their interval, on one real register; an op of unknown outcome took effect or not at
    random, and half of them never get a completion line (their client then takes a new
    process id, as a crashed Jepsen client does)."""
    rng = random.Random(seed)
    lines: list[tuple[int, int, dict[str, Any]]] = []
    next_process = 0
    for k in range(keys):
        key = f"k{k}"
        planned = []
        for c in range(clients):
            process = next_process
            next_process += 1
            t = rng.randrange(1_000)
            for _ in range(ops // keys // clients + (1 if c < ops // keys % clients else 0)):
                start = t + rng.randrange(1, 2_000)
                end = start + rng.randrange(2, 5_000)
                f = rng.choice(("read", "read", "write", "cas"))
                unknown = rng.random() < info
                silent = unknown and rng.random() < 0.5  # no completion line at all
                point = rng.randrange(start + 1, end)
                planned.append((point, start, end, process, f, unknown, silent))
                t = end
                if silent:
                    process = next_process  # the client starts afresh, as Jepsen's do
                    next_process += 1
        planned.sort()
        value = None
        for point, start, end, process, f, unknown, silent in planned:
            arg: Any = None
            if f == "write":
                arg = rng.randrange(5)
            elif f == "cas":
                arg = [rng.randrange(5), rng.randrange(5)]
            applied = not unknown or rng.random() < 0.5
            outcome, read = "ok", None
            if f == "read":
                read = value
            elif f == "write":
                value = arg if applied else value
            elif value == arg[0]:
                value = arg[1] if applied else value
            else:
                outcome = "fail"
            base = {"process": process, "f": f, "key": key}
            lines.append((start, point, {**base, "type": "invoke", "value": arg, "time": start}))
            if unknown:
                if not silent:
                    lines.append((end, point, {**base, "type": "info", "value": arg, "time": end}))
                continue
            done = read if f == "read" else arg
            lines.append((end, point, {**base, "type": outcome, "value": done, "time": end}))
    lines.sort(key=lambda line: (line[0], line[1]))
    return [event for _, _, event in lines]


def timed(fn: Any, *args: Any, repeat: int = 3) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--clients", type=int, default=5, help="clients per key")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke: 1,000 operations")
    args = parser.parse_args(argv)
    if args.quick:
        args.ops = 1_000

    history = register_history(args.ops, args.keys, args.clients, seed=args.seed)
    text = [json.dumps(event) for event in history]
    parse_s, _ = timed(parse_history, text)
    check_s, verdict = timed(check_register, history)
    sequential = register_history(args.ops, args.keys, 1, seed=args.seed)
    seq_s, seq_verdict = timed(check_register, sequential)
    dense = register_history(args.ops, max(1, args.keys // 4), args.clients * 4, seed=args.seed)
    dense_s, dense_verdict = timed(check_register, dense)
    if not (verdict.valid and seq_verdict.valid and dense_verdict.valid):
        print(f"checker rejected a linearizable history: {verdict.summary}", file=sys.stderr)
        return 1
    ops, keys = verdict.stats["operations"], verdict.stats["keys"]
    print(
        f"register history: {ops:,} operations, {keys} keys, {args.clients} clients per key, "
        f"{verdict.stats['info']:,} indeterminate, seed {args.seed}"
    )
    rows = [
        ("decode JSON lines (baseline)", parse_s, ""),
        ("check, sequential", seq_s, f"({seq_s / parse_s:.1f}x decoding)"),
        (
            f"check, {args.clients} clients per key",
            check_s,
            f"({check_s / parse_s:.1f}x decoding, {check_s / seq_s:.1f}x sequential; "
            "goal < 10 s for 10,000 ops)",
        ),
        (
            f"check, {args.clients * 4} clients per key ({dense_verdict.stats['keys']} keys)",
            dense_s,
            f"({dense_s / seq_s:.1f}x sequential)",
        ),
    ]
    for label, seconds, ratio in rows:
        print(f"  {label:<36} {seconds:7.3f} s  {ops / seconds:10,.0f} ops/s  {ratio}".rstrip())
    print(f"  verdict: {verdict.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
