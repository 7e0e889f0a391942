"""The hosts of `keel verify`: network namespaces on one Linux bridge, partitions between them,
and the removal of whatever a crashed run left behind.

Which names, addresses and packet filters a fabric needs are plain functions; `Fabric` is the
thin shell that runs `ip` and `tc`. Every object it creates carries the run's prefix, and a run
is registered before it creates anything, so `cleanup_all` finds even a half-built fabric and
never touches an object without a registered prefix.

Partitions drop packets with `tc` on the root-side veth of the receiving host, where the bridge
hands it frames: an `htb` root qdisc sends unclassified traffic straight through, and `u32`
filters steer packets from cut-off sources into a class whose leaf is the `blackhole` qdisc. The
sender sees nothing (no error, no reset), only silence, for new and established connections alike.
Only `htb`, `blackhole` and `u32` are needed: no iptables, and no tc action modules.

Bridged frames pass iptables' FORWARD chain when br_netfilter is loaded and the root
namespace's net.bridge.bridge-nf-call-iptables is 1 (a global setting this module leaves
alone, and no per-bridge option can turn off). Without iptables rules that costs nothing; on
a machine whose FORWARD policy is DROP (Docker sets it) hosts could not reach each other, and
the tests here would say so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, Literal

DEFAULT_REGISTRY = Path("/run/keel-verify")
DEFAULT_SUPERNET = ipaddress.IPv4Network("10.77.0.0/16")

# Linux interface names hold at most IFNAMSIZ - 1 characters.
IFNAMSIZ = 15
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,9}")
_HOST_OFFSET = 10  # host i gets the subnet's address number 10 + i; the bridge gets 1
_DROP_CLASS = "1:2"  # the htb class whose leaf qdisc is `blackhole`
_KILL_WAIT = 5.0


class FabricError(Exception):
    """An `ip` or `tc` command failed; the message names the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"`{' '.join(argv)}` exited with {returncode}: {stderr.strip()}")


# ---- names and addresses (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One machine of the fabric: a network namespace whose eth0 has `address`."""

    name: str
    namespace: str
    address: str
    link: str  # the root-namespace end of its veth pair, a port of the bridge

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass(frozen=True)
class Layout:
    """Everything a fabric will create, decided before anything is."""

    prefix: str
    subnet: ipaddress.IPv4Network
    bridge: str
    gateway: str  # the bridge's address: the runner as the hosts see it
    hosts: tuple[Host, ...]

    def peer(self, host: Host) -> str:
        """The namespace end of `host`'s veth pair, so named until it moves in as eth0."""
        return f"{self.prefix}p{host.name[1:]}"


def new_prefix() -> str:
    """A fresh run prefix, short enough for interface names: "kv" and 4 hex digits."""
    return "kv" + secrets.token_hex(2)


def owns(prefix: str, name: str) -> bool:
    """Whether an interface or namespace named `name` was made for the run `prefix`."""
    return re.fullmatch(re.escape(prefix) + r"(br|[hvp][0-9]+)", name) is not None


def plan_layout(prefix: str, hosts: int, subnet: str | ipaddress.IPv4Network) -> Layout:
    """Names and addresses for `hosts` hosts of run `prefix` on `subnet`."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"prefix: expected 2-10 lowercase letters or digits, got {prefix!r}")
    if hosts < 1:
        raise ValueError(f"hosts: expected at least 1, got {hosts}")
    longest = f"{prefix}v{hosts}"
    if len(longest) > IFNAMSIZ:
        raise ValueError(f"prefix: {longest!r} is longer than {IFNAMSIZ} characters")
    net = ipaddress.IPv4Network(subnet)
    if net.num_addresses < _HOST_OFFSET + hosts + 2:
        raise ValueError(f"subnet: {net} has no room for {hosts} hosts")
    base = int(net.network_address)
    return Layout(
        prefix=prefix,
        subnet=net,
        bridge=f"{prefix}br",
        gateway=str(ipaddress.IPv4Address(base + 1)),
        hosts=tuple(
            Host(
                name=f"h{i}",
                namespace=f"{prefix}h{i}",
                address=str(ipaddress.IPv4Address(base + _HOST_OFFSET + i)),
                link=f"{prefix}v{i}",
            )
            for i in range(1, hosts + 1)
        ),
    )


def choose_subnet(
    prefix: str,
    taken: Iterable[ipaddress.IPv4Network],
    supernet: ipaddress.IPv4Network = DEFAULT_SUPERNET,
) -> ipaddress.IPv4Network:
    """A /24 of `supernet` that overlaps none of `taken`, starting from one the prefix picks,
    so concurrent runs rarely even have to look further."""
    candidates = list(supernet.subnets(new_prefix=24))
    start = zlib.crc32(prefix.encode()) % len(candidates)
    used = list(taken)
    for i in range(len(candidates)):
        net = candidates[(start + i) % len(candidates)]
        if not any(net.overlaps(t) for t in used):
            return net
    raise FabricError(["choose_subnet", str(supernet)], 1, "every /24 is in use")


# ---- partitions (pure) -------------------------------------------------------------------


def partition_rules(
    groups: Sequence[Sequence[Host]], hosts: Sequence[Host]
) -> dict[Host, list[str]]:
    """For every host, the addresses it can no longer exchange packets with when `groups`
    are split from each other. A host in no group keeps talking to everyone."""
    known = set(hosts)
    group_of: dict[Host, int] = {}
    for index, group in enumerate(groups):
        for host in group:
            if host not in known:
                raise ValueError(f"groups[{index}]: {host.name} is not a host of this fabric")
            if host in group_of:
                raise ValueError(
                    f"groups[{index}]: {host.name} is already in group {group_of[host]}"
                )
            group_of[host] = index
    return {
        host: sorted(
            (
                other.address
                for other in hosts
                if host in group_of and other in group_of and group_of[other] != group_of[host]
            ),
            key=ipaddress.IPv4Address,
        )
        for host in hosts
    }


def isolate(host: Host, hosts: Sequence[Host]) -> list[list[Host]]:
    """`host` alone against the rest."""
    return [[host], [h for h in hosts if h != host]]


def halves(hosts: Sequence[Host], rng: Random) -> list[list[Host]]:
    """A random split into two halves (the first the smaller when the count is odd)."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    cut = len(shuffled) // 2
    return [shuffled[:cut], shuffled[cut:]]


def majority_minority(hosts: Sequence[Host], rng: Random) -> list[list[Host]]:
    """A random minority (fewer than half) against the majority that keeps quorum."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    cut = (len(shuffled) - 1) // 2
    return [shuffled[:cut], shuffled[cut:]]


def bridge(hosts: Sequence[Host], rng: Random) -> list[list[Host]]:
    """Two halves that each see one bridge host, which sees everyone (Jepsen's "bridge").

    Not expressible as disjoint groups, so it is returned as one group per half with the
    bridge host left out: `partition_rules` keeps a host in no group connected to all."""
    shuffled = list(hosts)
    rng.shuffle(shuffled)
    rest = shuffled[:-1]  # the last one is the bridge
    cut = len(rest) // 2
    return [rest[:cut], rest[cut:]]


Field = Literal["src", "dst"]


@dataclass(frozen=True)
class Device:
    """A network device, in a host's namespace or (namespace None) in the root one."""

    namespace: str | None
    name: str


@dataclass(frozen=True)
class Drop:
    """Drop IPv4 packets whose `field` address is `address`."""

    field: Field
    address: str


Filters = dict[Device, dict[int, Drop]]  # per device, tc filter preference -> what it drops


def drop_filters(
    layout: Layout, rules: Mapping[Host, Sequence[str]], cut_from_runner: Iterable[Host]
) -> Filters:
    """The tc filters that enforce `rules` (a host's unreachable peers) and cut the runner
    off from `cut_from_runner`.

    A packet is dropped where the bridge delivers it, on the receiving host's root-side veth,
    so its sender notices nothing. The one direction that never crosses such a port, a host
    talking to the runner, is dropped on the host's own eth0 on the way out; the `blackhole`
    qdisc reports success, so that sender notices nothing either. Each filter's preference is
    the address's number within the subnet, unique per device."""
    base = int(layout.subnet.network_address)

    def pref(address: str) -> int:
        return int(ipaddress.IPv4Address(address)) - base

    filters: Filters = {}
    for host in layout.hosts:
        port = filters.setdefault(Device(None, host.link), {})
        for address in rules.get(host, ()):
            port[pref(address)] = Drop("src", address)
        filters.setdefault(Device(host.namespace, "eth0"), {})
    for host in cut_from_runner:
        filters[Device(None, host.link)][pref(layout.gateway)] = Drop("src", layout.gateway)
        filters[Device(host.namespace, "eth0")][pref(layout.gateway)] = Drop("dst", layout.gateway)
    return filters


@dataclass(frozen=True)
class FilterChange:
    device: Device
    pref: int
    drop: Drop | None  # None: delete the filter


def filter_changes(current: Filters, wanted: Filters) -> list[FilterChange]:
    """The tc filter deletions and additions that turn `current` into `wanted`: deletions of
    changed filters first, then additions, then the remaining deletions, so moving from one
    partition to another never opens, even briefly, a path both of them cut."""
    replaced: list[FilterChange] = []
    added: list[FilterChange] = []
    removed: list[FilterChange] = []
    for device in sorted(set(current) | set(wanted), key=lambda d: (d.namespace or "", d.name)):
        have, want = current.get(device, {}), wanted.get(device, {})
        for pref in sorted(set(have) | set(want)):
            if pref not in want:
                removed.append(FilterChange(device, pref, None))
            elif pref not in have:
                added.append(FilterChange(device, pref, want[pref]))
            elif have[pref] != want[pref]:
                replaced.append(FilterChange(device, pref, None))
                added.append(FilterChange(device, pref, want[pref]))
    return replaced + added + removed


# ---- the run's record ----------------------------------------------------------------------


@dataclass
class RunState:
    """What a run created (or was about to), kept on disk so another process can undo it."""

    prefix: str
    subnet: str
    hosts: int
    pids: list[tuple[int, int]] = field(default_factory=list)  # (pid, start time in ticks)

    def to_json(self) -> str:
        # The names follow from prefix and host count; they are listed for a human reader.
        layout = plan_layout(self.prefix, self.hosts, self.subnet)
        return json.dumps(
            {
                "prefix": self.prefix,
                "subnet": self.subnet,
                "hosts": self.hosts,
                "bridge": layout.bridge,
                "namespaces": [h.namespace for h in layout.hosts],
                "links": [h.link for h in layout.hosts],
                "pids": [{"pid": p, "start": s} for p, s in self.pids],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> RunState:
        raw: Any = json.loads(text)
        return cls(
            prefix=str(raw["prefix"]),
            subnet=str(raw["subnet"]),
            hosts=int(raw["hosts"]),
            pids=[(int(p["pid"]), int(p["start"])) for p in raw.get("pids", [])],
        )


@dataclass
class Removed:
    """What a teardown removed, for `keel verify --cleanup` to report."""

    prefixes: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def merge(self, other: Removed) -> None:
        self.prefixes += other.prefixes
        self.processes += other.processes
        self.namespaces += other.namespaces
        self.links += other.links

    def __bool__(self) -> bool:
        return bool(self.processes or self.namespaces or self.links)


# ---- the shell -----------------------------------------------------------------------------


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise FabricError(argv, done.returncode, done.stderr)
    return done.stdout


def _json(argv: Sequence[str]) -> Any:
    out = _run(argv).strip()
    return json.loads(out) if out else []


def _in(namespace: str | None, argv: Sequence[str]) -> list[str]:
    return list(argv) if namespace is None else ["ip", "netns", "exec", namespace, *argv]


def _links() -> list[str]:
    return [str(link["ifname"]) for link in _json(["ip", "-j", "link", "show"])]


def _namespaces() -> list[str]:
    return [str(ns["name"]) for ns in _json(["ip", "-j", "netns", "list"])]


def _routes_in_use() -> list[ipaddress.IPv4Network]:
    nets = []
    for route in _json(["ip", "-j", "-4", "route", "show", "table", "all"]):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, which tells it from a later
    process that reused its pid; None if it is gone (or only a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[19])


def namespace_pids(namespace: str) -> list[int]:
    """The processes now inside `namespace`."""
    try:
        return [int(p) for p in _run(["ip", "netns", "pids", namespace]).split()]
    except FabricError:
        return []


def _kill(pids: Iterable[int]) -> list[int]:
    killed = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    deadline = time.monotonic() + _KILL_WAIT
    while any(_start_time(p) is not None for p in killed) and time.monotonic() < deadline:
        time.sleep(0.01)  # the kernel finishes the kill asynchronously; this is bounded
    return killed


def _teardown(state: RunState) -> Removed:
    """Remove run `state.prefix`'s processes, namespaces and links, whatever state they are
    in: recorded pids only if still the same process, and only names the run owns."""
    prefix = state.prefix
    removed = Removed(prefixes=[prefix])
    namespaces = [ns for ns in _namespaces() if owns(prefix, ns)]
    victims = {pid for ns in namespaces for pid in namespace_pids(ns)}
    victims |= {pid for pid, start in state.pids if _start_time(pid) == start}
    victims.discard(os.getpid())
    removed.processes = sorted(_kill(victims))
    # Deleting the root end of a veth pair deletes its namespace end too; the bridge goes last.
    links = sorted((n for n in _links() if owns(prefix, n)), key=lambda n: n == f"{prefix}br")
    for name in links:
        try:
            _run(["ip", "link", "del", name])
            removed.links.append(name)
        except FabricError:
            if name in _links():
                raise
    for ns in namespaces:
        try:
            _run(["ip", "netns", "del", ns])
            removed.namespaces.append(ns)
        except FabricError:
            if ns in _namespaces():
                raise
    return removed


class Fabric:
    """N hosts of one run on one bridge; see the module docstring. Made by `Fabric.create`.

    Commands are quick `ip`/`tc` calls run synchronously; an asyncio caller that minds a few
    milliseconds can use `asyncio.to_thread`."""

    def __init__(self, layout: Layout, state: RunState, state_files: list[Path]) -> None:
        self.layout = layout
        self._state = state
        self._state_files = state_files
        self._filters: Filters = drop_filters(layout, {}, [])
        self._rules: dict[Host, list[str]] = {}
        self._cut_from_runner: set[Host] = set()

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    @property
    def hosts(self) -> tuple[Host, ...]:
        return self.layout.hosts

    @property
    def gateway(self) -> str:
        """The runner's address as the hosts see it."""
        return self.layout.gateway

    @classmethod
    def create(
        cls,
        prefix: str,
        hosts: int,
        subnet: str | None = None,
        *,
        run_dir: Path | None = None,
        registry: Path = DEFAULT_REGISTRY,
    ) -> Fabric:
        """Build the bridge and `hosts` namespaces of run `prefix`, registered in `registry`
        (and recorded in `run_dir`) before anything is created. On failure, what was built
        is removed again."""
        if subnet is None:
            taken = _routes_in_use() + [
                ipaddress.IPv4Network(s.subnet) for s in _registered(registry).values()
            ]
            subnet = str(choose_subnet(prefix, taken))
        layout = plan_layout(prefix, hosts, subnet)
        clash = [n for n in _links() + _namespaces() if owns(prefix, n)]
        if clash or (registry / f"{prefix}.json").exists():
            raise FabricError(["create", prefix], 1, f"run {prefix} already exists: {clash}")
        state = RunState(prefix=prefix, subnet=str(layout.subnet), hosts=hosts)
        files = [registry / f"{prefix}.json"]
        if run_dir is not None:
            files.append(run_dir / "fabric.json")
        fabric = cls(layout, state, files)
        fabric._save()
        try:
            fabric._build()
        except BaseException:
            fabric.destroy()
            raise
        return fabric

    def _build(self) -> None:
        layout = self.layout
        br, bits = layout.bridge, layout.subnet.prefixlen
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{layout.gateway}/{bits}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        for host in layout.hosts:
            ns, peer = host.namespace, layout.peer(host)
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", host.link, "type", "veth", "peer", "name", peer])
            _run(["ip", "link", "set", peer, "netns", ns])
            _run(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
            _run(["ip", "-n", ns, "addr", "add", f"{host.address}/{bits}", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "route", "add", "default", "via", layout.gateway])
            _run(["ip", "link", "set", host.link, "master", br])
            _run(["ip", "link", "set", host.link, "up"])
        for device in self._filters:
            self._add_drop_class(device)

    @staticmethod
    def _add_drop_class(device: Device) -> None:
        # Unclassified packets bypass htb's classes (default 0: sent directly, unshaped);
        # filters steer the partitioned ones into a class whose leaf discards them.
        tc = _in(device.namespace, ["tc"])
        dev = ["dev", device.name]
        _run([*tc, "qdisc", "add", *dev, "root", "handle", "1:", "htb", "default", "0"])
        _run(
            [
                *tc,
                "class",
                "add",
                *dev,
                "parent",
                "1:",
                "classid",
                _DROP_CLASS,
                "htb",
                "rate",
                "1mbit",
            ]
        )
        _run([*tc, "qdisc", "add", *dev, "parent", _DROP_CLASS, "handle", "2:", "blackhole"])

    def host(self, name: str) -> Host:
        """The host called `name` ("h1"...)."""
        for host in self.layout.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    # -- faults --

    def partition(self, groups: Sequence[Sequence[Host]]) -> None:
        """Split the hosts into `groups` that cannot exchange packets (dropped silently).
        Replaces any earlier partition; the runner still reaches every host unless
        `isolate_from_runner` said otherwise."""
        self._rules = partition_rules(groups, self.layout.hosts)
        self._apply()

    def isolate_from_runner(self, *hosts: Host) -> None:
        """Cut the runner (the root namespace) off from `hosts` as well: its requests and their
        replies vanish, so clients in the runner see timeouts."""
        self._cut_from_runner |= set(hosts)
        self._apply()

    def heal(self) -> None:
        """Remove every partition and runner cut."""
        self._rules = {}
        self._cut_from_runner = set()
        self._apply()

    def _apply(self) -> None:
        wanted = drop_filters(self.layout, self._rules, self._cut_from_runner)
        for change in filter_changes(self._filters, wanted):
            tc = _in(change.device.namespace, ["tc"])
            where = ["dev", change.device.name, "parent", "1:", "protocol", "ip", "pref"]
            if change.drop is None:
                _run([*tc, "filter", "del", *where, str(change.pref)])
            else:
                match = ["match", "ip", change.drop.field, f"{change.drop.address}/32"]
                _run(
                    [
                        *tc,
                        "filter",
                        "add",
                        *where,
                        str(change.pref),
                        "u32",
                        *match,
                        "flowid",
                        _DROP_CLASS,
                    ]
                )
            device = self._filters.setdefault(change.device, {})
            if change.drop is None:
                device.pop(change.pref, None)
            else:
                device[change.pref] = change.drop

    # -- processes --

    def record_pid(self, pid: int) -> None:
        """Note a process the run started (inside a host or not), so that cleanup after a
        crash kills it if it is still the same process."""
        start = _start_time(pid)
        if start is not None:
            self._state.pids.append((pid, start))
            self._save()

    def pids(self, host: Host) -> list[int]:
        """The processes now inside `host`."""
        return namespace_pids(host.namespace)

    # -- teardown --

    def destroy(self) -> Removed:
        """Kill (SIGKILL) what still runs inside the hosts or was recorded with `record_pid`
        (stop processes gently first if that matters), delete namespaces, veths and bridge,
        and forget the run. Safe to call twice, or after some objects are already gone."""
        removed = _teardown(self._state)
        for path in self._state_files:
            path.unlink(missing_ok=True)
        return removed

    def _save(self) -> None:
        text = self._state.to_json()
        for path in self._state_files:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)


def _registered(registry: Path) -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    for path in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        if not _PREFIX.fullmatch(path.stem):
            continue
        try:
            runs[path.stem] = RunState.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            # An unreadable record still names its prefix, which is all teardown needs.
            runs[path.stem] = RunState(prefix=path.stem, subnet="0.0.0.0/32", hosts=0)
    return runs


def cleanup_all(registry: Path = DEFAULT_REGISTRY) -> Removed:
    """Remove the leftovers of every run registered in `registry` (`keel verify --cleanup`):
    processes inside its namespaces or recorded by it, its namespaces, veths and bridge."""
    removed = Removed()
    for prefix, state in _registered(registry).items():
        removed.merge(_teardown(state))
        (registry / f"{prefix}.json").unlink(missing_ok=True)
    return removed
