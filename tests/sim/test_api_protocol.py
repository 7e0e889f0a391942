"""`KeelClient` satisfies the runtime's `ApiClient` protocol structurally (checked by mypy)."""

from __future__ import annotations

from keel.api.resources import Deployment
from keel.client import KeelClient, WatchEvent
from keel.runtime.api import ApiClient, WatchStream


async def test_keel_client_is_an_api_client() -> None:
    client: ApiClient = KeelClient("http://127.0.0.1:1")
    try:
        # Overloads keep the model type through the protocol.
        watch: WatchStream[Deployment] = client.watch(Deployment, resource_version="1")
        event: type[WatchEvent[Deployment]] = WatchEvent
        assert event is WatchEvent
        assert watch.resource_version == "1"
        await watch.aclose()
    finally:
        assert isinstance(client, KeelClient)
        await client.close()
