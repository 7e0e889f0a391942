"""Requests generated from the served OpenAPI document never make the server answer 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from support import ApiServer

V1 = "/apis/keel.dev/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    state = tmp_path_factory.mktemp("apiserver-fuzz")
    with ApiServer(state, "--admission-rate", "100000") as api:
        yield api


def test_generated_requests_never_get_a_5xx(server: ApiServer) -> None:
    admin = server.http()
    document = admin.get("/openapi/v3/apis/keel.dev/v1").json
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {admin.token}"}
    ca_file = server.state_dir / "tls" / "ca.crt"
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20

    for operation in operations:

        @settings(max_examples=8, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(operation.as_strategy())
        def check(case: Any) -> None:
            if case.query and str(case.query.get("watch", "")).lower() in ("true", "1"):
                case.query["timeoutSeconds"] = 1  # a watch streams until its timeout
            response = case.call(
                base_url=server.url, headers=headers, timeout=30, verify=str(ca_file)
            )
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        check()
    assert failures == []
