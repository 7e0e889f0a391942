"""The official Kubernetes Python clients against a real `keel apiserver` (TLS, bearer token,
the kubeconfig it wrote): `kubernetes` (CustomObjectsApi, the dynamic client over
discovery, watch, CoreV1Api's Namespaces) and `kubernetes_asyncio` create, patch, list,
watch and delete Keel's objects unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kubernetes
import kubernetes_asyncio
import pytest
from kubernetes.dynamic import DynamicClient
from support import ApiServer

GROUP, VERSION = "keel.dev", "v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with ApiServer(tmp_path_factory.mktemp("apiserver-k8s-clients")) as api:
        yield api


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"command": ["sleep"]}},
        },
    }


@pytest.fixture
def api_client(server: ApiServer) -> Iterator[kubernetes.client.ApiClient]:
    client = kubernetes.config.new_client_from_config(config_file=str(server.kubeconfig))
    try:
        yield client
    finally:
        client.close()


def test_custom_objects_create_patch_list_watch_delete(
    api_client: kubernetes.client.ApiClient,
) -> None:
    objects = kubernetes.client.CustomObjectsApi(api_client)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, "default", "deployments", deployment("k8s-a")
    )
    assert created["metadata"]["uid"] and created["spec"]["replicas"] == 1
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "deployments", "k8s-a", {"spec": {"replicas": 3}}
    )
    assert patched["spec"]["replicas"] == 3
    listed = objects.list_namespaced_custom_object(
        GROUP, VERSION, "default", "deployments", label_selector="app=k8s-a"
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["k8s-a"]
    version = listed["metadata"]["resourceVersion"]
    objects.delete_namespaced_custom_object(GROUP, VERSION, "default", "deployments", "k8s-a")
    seen = []
    for event in kubernetes.watch.Watch().stream(
        objects.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        "deployments",
        resource_version=version,
        timeout_seconds=5,
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if event["type"] == "DELETED":
            break
    assert ("DELETED", "k8s-a") in seen


def test_the_dynamic_client_finds_keel_kinds_by_discovery(
    api_client: kubernetes.client.ApiClient,
) -> None:
    dynamic = DynamicClient(api_client)
    deployments = dynamic.resources.get(api_version=f"{GROUP}/{VERSION}", kind="Deployment")
    made = deployments.create(body=deployment("k8s-b", 2), namespace="default")
    assert made.metadata.name == "k8s-b" and made.spec.replicas == 2
    got = deployments.get(name="k8s-b", namespace="default")
    assert got.metadata.uid == made.metadata.uid
    patched = deployments.patch(
        name="k8s-b",
        namespace="default",
        body={"metadata": {"labels": {"tier": "web"}}},
        content_type="application/merge-patch+json",
    )
    assert patched.metadata.labels["tier"] == "web"
    deployments.delete(name="k8s-b", namespace="default")
    names = [i.metadata.name for i in deployments.get(namespace="default").items]
    assert "k8s-b" not in names
    # Core Namespaces: the same objects as keel.dev's.
    core = kubernetes.client.CoreV1Api(api_client)
    assert "default" in [n.metadata.name for n in core.list_namespace().items]


def test_kubernetes_asyncio_creates_lists_watches_and_deletes(server: ApiServer) -> None:
    async def scenario() -> list[tuple[str, str]]:
        client = await kubernetes_asyncio.config.new_client_from_config(
            config_file=str(server.kubeconfig)
        )
        async with client:
            objects = kubernetes_asyncio.client.CustomObjectsApi(client)
            await objects.create_namespaced_custom_object(
                GROUP, VERSION, "default", "deployments", deployment("k8s-c")
            )
            listed = await objects.list_namespaced_custom_object(
                GROUP, VERSION, "default", "deployments", label_selector="app=k8s-c"
            )
            assert [i["metadata"]["name"] for i in listed["items"]] == ["k8s-c"]
            # (this client sends a JSON patch unless told, as against kube-apiserver)
            await objects.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                "default",
                "deployments",
                "k8s-c",
                {"spec": {"replicas": 2}},
                _content_type="application/merge-patch+json",
            )
            seen: list[tuple[str, str]] = []
            watch = kubernetes_asyncio.watch.Watch()
            stream = watch.stream(
                objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                "default",
                "deployments",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=5,
            )
            deleted = asyncio.ensure_future(
                objects.delete_namespaced_custom_object(
                    GROUP, VERSION, "default", "deployments", "k8s-c"
                )
            )
            async for event in stream:
                seen.append((event["type"], event["object"]["metadata"]["name"]))
                if event["type"] == "DELETED":
                    break
            await deleted
            watch.stop()
            return seen

    seen = asyncio.run(scenario())
    assert ("MODIFIED", "k8s-c") in seen and ("DELETED", "k8s-c") in seen


def test_an_event_recorder_posts_core_events_that_list_and_watch(
    api_client: kubernetes.client.ApiClient,
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    listed = core.list_namespaced_event("default")
    body = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(generate_name="web."),
        involved_object=kubernetes.client.V1ObjectReference(
            kind="Deployment", name="web", namespace="default"
        ),
        reason="Tested",
        message="posted by the official client",
        type="Normal",
        source=kubernetes.client.V1EventSource(component="my-operator"),
    )
    created = core.create_namespaced_event("default", body)
    assert created.reason == "Tested" and created.involved_object.name == "web"
    again = core.list_namespaced_event("default", field_selector="involvedObject.name=web")
    assert "posted by the official client" in [e.message for e in again.items]
    # A watch from the list's version sees the next one posted.
    seen: list[str] = []
    watch = kubernetes.watch.Watch()
    body.message = "the second one"
    core.create_namespaced_event("default", body)
    for event in watch.stream(
        core.list_namespaced_event,
        "default",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=5,
    ):
        seen.append(event["object"].message)
        if event["object"].message == "the second one":
            watch.stop()
    assert "the second one" in seen
    refused = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(generate_name="x."),
        involved_object=kubernetes.client.V1ObjectReference(kind="Deployment", name="web"),
        reason="",
        message="no reason",
    )
    with pytest.raises(kubernetes.client.ApiException) as raised:
        core.create_namespaced_event("default", refused)
    assert raised.value.status == 422 and "reason" in str(raised.value.body)
