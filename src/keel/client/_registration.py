"""An external endpoint kept alive by a Lease, for programs: `KeelClient.register_endpoint`
creates a Lease carrying `spec.registration` and returns a `Registration`, which renews it in
the background (store keep-alives, never store writes) until `close()` deregisters it.

If the owner stops renewing (it crashed, hung, or lost the API server for longer than the
TTL) the store expires the Lease and the endpoints controller drops the address. A handle
that finds its Lease gone while it still runs tells the two causes apart by its own clock:
gone although the last accepted renewal was sent less than a TTL ago means someone removed
it (`keel deregister`), and the handle stops (`wait_removed()` returns); gone later than
that means it expired while the API server was out of reach, and the handle registers it
again under the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING

import msgspec

from keel.api.resources import SERVICE_LABEL, EndpointRegistration, Lease, LeaseSpec, ObjectMeta
from keel.client._errors import AlreadyExists, Conflict, KeelClientError, NotFound
from keel.clock import Clock

if TYPE_CHECKING:
    from keel.client._client import KeelClient

__all__ = ["Registration", "registration_lease", "registration_lease_name"]

logger = logging.getLogger("keel.registration")

# Renew three times per TTL: two renewals may fail in a row before the endpoint expires.
RENEWALS_PER_TTL = 3


def registration_lease_name(service: str, name: str) -> str:
    """The Lease of registration `name` of `service`: `SERVICE.NAME`."""
    return f"{service}.{name}"


def registration_lease(
    service: str,
    address: str,
    port: int,
    *,
    namespace: str,
    ttl: int,
    holder: str,
    name: str | None = None,
    port_name: str = "",
    ready: bool = True,
) -> Lease:
    """The Lease that registers `address:port` for `service` (a generated name when `name`
    is None: `SERVICE.xxxxx`). The server validates it and checks that the Service exists."""
    meta = ObjectMeta(
        name=registration_lease_name(service, name) if name else "",
        generate_name="" if name else f"{service}.",
        namespace=namespace,
        labels={SERVICE_LABEL: service},
    )
    return Lease(
        kind="Lease",
        metadata=meta,
        spec=LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=ttl,
            registration=EndpointRegistration(
                service=service, address=address, port=port, port_name=port_name, ready=ready
            ),
        ),
    )


class Registration:
    """A live registration: renews its Lease every TTL/3 until `close()`.

    Use as `async with await client.register_endpoint(...) as registration:`, or call
    `close()`. `set_ready(False)` withdraws the endpoint (listed with `ready: false`) without
    giving up the registration; `set_ready(True)` puts it back. Each is one store write, and
    only on a change.
    """

    def __init__(
        self, client: KeelClient, lease: Lease, *, clock: Clock, alive_since: float | None = None
    ) -> None:
        registration = lease.spec.registration
        assert registration is not None
        self._client = client
        self._lease = lease
        self._ready = registration.ready
        self._clock = clock
        self.interval = lease.spec.lease_duration_seconds / RENEWALS_PER_TTL
        self.renewals = 0  # keep-alives the server accepted
        self.reregistrations = 0  # times the Lease was found expired and created again
        # When the request that last kept the Lease alive was sent (for a new one: the create)
        self._alive_since = clock.now() if alive_since is None else alive_since
        self._removed = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(
            self._renew_forever(), name=f"registration-{lease.metadata.name}"
        )

    # -- what it is

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def lease_name(self) -> str:
        return self._lease.metadata.name

    @property
    def namespace(self) -> str:
        return self._lease.metadata.namespace

    @property
    def service(self) -> str:
        registration = self._lease.spec.registration
        assert registration is not None
        return registration.service

    @property
    def name(self) -> str:
        """The registration's id: its Lease's name without the `SERVICE.` prefix."""
        return self.lease_name.removeprefix(f"{self.service}.")

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def removed(self) -> bool:
        """Someone else deleted the Lease (`keel deregister`): it is not renewed any more."""
        return self._removed.is_set()

    async def wait_removed(self) -> None:
        """Until someone else removes this registration (never, while it is ours)."""
        await self._removed.wait()

    # -- changing it

    async def set_ready(self, ready: bool) -> None:
        """List the endpoint as ready or not (a store write, only when it changes)."""
        if ready == self._ready:
            return
        self._ready = ready
        patch = {"spec": {"registration": {"ready": ready}}}
        # NotFound: lost; the renewal loop registers it again with this readiness.
        with contextlib.suppress(NotFound):
            self._lease = await self._client.patch(
                Lease, self.lease_name, patch, namespace=self.namespace
            )

    async def close(self) -> bool:
        """Stop renewing and deregister at once (delete the Lease, if it is still ours).
        False when it had already expired or passed to another holder."""
        if self._closed:
            return False
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return await self._client.release_lease(self._lease)

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- keeping it alive

    async def _renew_forever(self) -> None:
        while True:
            await self._clock.sleep(self.interval)
            sent = self._clock.now()
            try:
                # A renewal slower than the interval is as good as lost: try the next one.
                self._lease = await asyncio.wait_for(
                    self._client.renew_lease(self._lease), self.interval
                )
                self.renewals += 1
                self._alive_since = sent
            except (NotFound, Conflict):
                if sent - self._alive_since < self._lease.spec.lease_duration_seconds:
                    # It cannot have expired yet: it was deleted (or taken) on purpose.
                    logger.warning("registration %s was removed; stopping", self.lease_name)
                    self._removed.set()
                    return
                await self._register_again(sent)
            except (KeelClientError, TimeoutError, OSError) as exc:
                logger.warning("renewing %s failed (retrying): %s", self.lease_name, exc)

    async def _register_again(self, sent: float) -> None:
        """The Lease expired while we still run: create it again, same name and
        readiness. While someone else holds the name, keep trying."""
        meta = self._lease.metadata
        registration = self._lease.spec.registration
        assert registration is not None
        fresh = msgspec.structs.replace(
            self._lease,
            metadata=ObjectMeta(name=meta.name, namespace=meta.namespace, labels=meta.labels),
            spec=msgspec.structs.replace(
                self._lease.spec,
                registration=msgspec.structs.replace(registration, ready=self._ready),
            ),
        )
        try:
            self._lease = await self._client.create(fresh)
        except AlreadyExists:
            logger.warning("registration %s is held by another owner; retrying", meta.name)
            return
        except KeelClientError as exc:
            logger.warning("registering %s again failed (retrying): %s", meta.name, exc)
            return
        self.reregistrations += 1
        self._alive_since = sent
        logger.warning("registration %s had expired; registered it again", meta.name)
