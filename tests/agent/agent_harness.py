"""Helpers of the agent's tests (the processes themselves come from tests/support): Instances
bound to a node, and looking for the workload processes an agent started, by PID."""

from __future__ import annotations

import contextlib
import os
import signal

from keel.api.resources import Instance, InstanceSpec, ObjectMeta


def instance(
    name: str,
    node: str,
    command: list[str],
    *,
    namespace: str = "default",
    **spec: object,
) -> Instance:
    """An Instance already bound to `node`, as the scheduler would leave it."""
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=InstanceSpec(command=command, node_name=node, **spec),  # type: ignore[arg-type]
    )


def ready(obj: Instance) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions)


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text[text.rfind(")") + 2 :].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether any live process is left in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def kill_group(pgid: int) -> None:
    """Clean up a workload group this test's agent started (if anything is left)."""
    if pgid > 1 and group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
