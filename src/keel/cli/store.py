"""`keel store ...`: look at and change a store directly (operations and debugging).

These commands bypass the API server; on a live platform use them read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from keel.store import Compare, EventType, KeyValue, Op, Store, StoreError, open_store

DEFAULT_STORE = "sqlite:///.keel/keel.db"


def add_store_commands(commands: Any) -> None:
    store = commands.add_parser("store", help="read and write a store directly")
    store.add_argument(
        "--store",
        default=os.environ.get("KEEL_STORE", DEFAULT_STORE),
        help=f"store URL (default $KEEL_STORE or {DEFAULT_STORE})",
    )
    sub = store.add_subparsers(dest="store_command", metavar="VERB")
    sub.required = True

    status = sub.add_parser("status", help="revision, compaction, size, leader")
    status.set_defaults(run=_runner(cmd_status))

    get = sub.add_parser("get", help="one key")
    get.add_argument("key")
    get.set_defaults(run=_runner(cmd_get))

    put = sub.add_parser("put", help="set a key")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--lease-ttl", type=int, help="attach to a new lease of this TTL")
    put.set_defaults(run=_runner(cmd_put))

    delete = sub.add_parser("del", help="delete a key")
    delete.add_argument("key")
    delete.set_defaults(run=_runner(cmd_del))

    ranged = sub.add_parser("range", help="keys under a prefix")
    ranged.add_argument("prefix", nargs="?", default="")
    ranged.add_argument("--revision", type=int, help="read as of this revision")
    ranged.add_argument("--limit", type=int)
    ranged.set_defaults(run=_runner(cmd_range))

    watch = sub.add_parser("watch", help="stream changes under a prefix")
    watch.add_argument("prefix", nargs="?", default="")
    watch.add_argument("--revision", type=int, default=0, help="start revision (0: now)")
    watch.set_defaults(run=_runner(cmd_watch))

    compact = sub.add_parser("compact", help="forget history before a revision")
    compact.add_argument("revision", type=int)
    compact.set_defaults(run=_runner(cmd_compact))

    demo = sub.add_parser("demo", help="a short guided tour of the store's guarantees")
    demo.set_defaults(run=_runner(cmd_demo))


def _runner(
    command: Callable[[Store, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            if args.store.startswith("sqlite:///"):
                path = args.store.removeprefix("sqlite:///").split("?", 1)[0]
                if os.path.dirname(path) and not os.path.isabs(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
            async with await open_store(args.store) as store:
                return await command(store, args)

        try:
            return asyncio.run(main())
        except (StoreError, ValueError) as exc:
            print(f"keel store: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def _show(kv: KeyValue) -> str:
    lease = f" lease={kv.lease:x}" if kv.lease else ""
    return (
        f"{kv.key.decode(errors='replace')} = {kv.value.decode(errors='replace')!r}  "
        f"(create={kv.create_revision} mod={kv.mod_revision} version={kv.version}{lease})"
    )


async def cmd_status(store: Store, args: argparse.Namespace) -> int:
    status = await store.status()
    print(f"backend:          {status.backend} {status.version}")
    print(f"revision:         {status.revision}")
    print(f"compact revision: {status.compact_revision}")
    print(f"size:             {status.db_size} bytes")
    print(
        f"members:          {status.members}"
        + (f" (leader {status.leader})" if status.leader else "")
    )
    return 0


async def cmd_get(store: Store, args: argparse.Namespace) -> int:
    kv = await store.get(args.key.encode())
    if kv is None:
        print(f"{args.key}: not found", file=sys.stderr)
        return 1
    print(_show(kv))
    return 0


async def cmd_put(store: Store, args: argparse.Namespace) -> int:
    lease = None
    if args.lease_ttl:
        lease = (await store.grant_lease(args.lease_ttl)).id
    revision = await store.put(args.key.encode(), args.value.encode(), lease=lease)
    print(f"revision {revision}" + (f" (lease {lease:x})" if lease else ""))
    return 0


async def cmd_del(store: Store, args: argparse.Namespace) -> int:
    print(f"revision {await store.delete(args.key.encode())}")
    return 0


async def cmd_range(store: Store, args: argparse.Namespace) -> int:
    result = await store.range(args.prefix.encode(), revision=args.revision, limit=args.limit)
    for kv in result.kvs:
        print(_show(kv))
    print(
        f"-- {len(result.kvs)} keys at revision {result.revision}"
        + (", more" if result.more else "")
    )
    return 0


async def cmd_watch(store: Store, args: argparse.Namespace) -> int:
    async for batch in store.watch(args.prefix.encode(), start_revision=args.revision):
        for event in batch.events:
            print(f"{event.type.name:6} {_show(event.kv)}", flush=True)
    return 0


async def cmd_compact(store: Store, args: argparse.Namespace) -> int:
    await store.compact(args.revision)
    print(f"compacted before revision {args.revision}")
    return 0


async def cmd_demo(store: Store, args: argparse.Namespace) -> int:
    """Shows revisions, CAS, a watch, and a lease expiring, on the store given."""
    status = await store.status()
    print(f"Opened {store.url} ({status.backend}) at revision {status.revision}.")
    start = status.revision + 1
    events: list[str] = []

    async def watch() -> None:
        async for batch in store.watch(b"/demo/", start_revision=start):
            for event in batch.events:
                events.append(
                    f"  watch: {event.type.name} {event.kv.key.decode()} @ {event.kv.mod_revision}"
                )
                if event.type is EventType.DELETE and event.kv.key == b"/demo/leader":
                    return

    watcher = asyncio.create_task(watch())
    rev = await store.put(b"/demo/replicas", b"3")
    print(f"put /demo/replicas=3 -> revision {rev}")
    stale = await store.txn(
        [Compare.mod_revision(b"/demo/replicas", "==", rev - 1)],
        [Op.put(b"/demo/replicas", b"5")],
        [],
    )
    print(f"CAS with a stale mod_revision -> succeeded={stale.succeeded}")
    fresh = await store.txn(
        [Compare.mod_revision(b"/demo/replicas", "==", rev)], [Op.put(b"/demo/replicas", b"5")], []
    )
    print(f"CAS with the current mod_revision -> succeeded={fresh.succeeded} @ {fresh.revision}")
    lease = await store.grant_lease(2)
    claim = await store.txn(
        [Compare.create_revision(b"/demo/leader", "==", 0)],
        [Op.put(b"/demo/leader", b"demo", lease=lease.id)],
        [],
    )
    print(f"claimed /demo/leader with a 2 s lease; fencing token = {claim.revision}")
    print("not renewing it; waiting for the store to expire the lease...")
    await asyncio.wait_for(watcher, timeout=15)
    print("\n".join(events))
    await store.delete(b"/demo/replicas")
    print(
        f"Done; store is at revision {(await store.status()).revision}. "
        "Try: keel store watch /demo/ in another shell."
    )
    return 0
