"""A controller from outside Keel, loaded into a real `keel controller-manager` with
`--controller controllers.extra_controller:controllers` (tests/ on PYTHONPATH); holds no tests.
It labels every Namespace with the identity of the replica that leads.
"""

from __future__ import annotations

from keel.api.resources import Namespace
from keel.runtime.controller import Context, Controller, Related, Result
from keel.runtime.manager import ControllerManager

LABEL = "keel.dev/labelled-by"


class NamespaceLabeller:
    name = "namespace-labeller"
    primary = Namespace
    related: tuple[Related, ...] = ()

    def __init__(self, identity: str) -> None:
        self.identity = identity

    async def reconcile(self, ctx: Context, key: str) -> Result:
        namespace = ctx.cache(Namespace).get(key)
        if namespace is not None and namespace.metadata.labels.get(LABEL) != self.identity:
            patch = {"metadata": {"labels": {LABEL: self.identity}}}
            await ctx.client.patch(Namespace, namespace.metadata.name, patch)
        return Result()


def controllers(manager: ControllerManager) -> list[Controller]:
    return [NamespaceLabeller(manager.identity)]
