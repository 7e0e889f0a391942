"""etcd backend of Keel's store (`etcd://HOST:PORT[,HOST:PORT...]`): an asyncio gRPC client
written for Keel, with message classes built at run time from our own etcd.proto subset."""

from keel.store._etcd._client import EtcdStore

__all__ = ["EtcdStore"]
