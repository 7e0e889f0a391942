"""etcd backend of Keel's store (`etcd://HOST:PORT[,HOST:PORT...]`): an asyncio gRPC client
written for Keel, with message classes built at run time from our own etcd.proto subset."""

import os

# Before gRPC is first imported: its fork handlers exist for children that go on using a
# parent's channels, which no Keel process does (`keel up` starts fresh interpreters). With
# them on, every fork of a process with open channels warns, and a child could crash in them
# before it got to exec.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

from keel.store._etcd._client import EtcdStore

__all__ = ["EtcdStore"]
