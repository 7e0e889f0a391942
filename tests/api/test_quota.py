"""The quota admission decision and the ledger arithmetic, as pure functions: what an
Instance requests, whether it fits every quota of its namespace, and the message that names
the exceeded limit."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from keel.api.quota import (
    charged,
    ledger,
    quota_decision,
    raised,
    recomputed_status,
    requests_of,
    status_change,
    usage_of,
)
from keel.api.resources import (
    Instance,
    InstanceSpec,
    ObjectMeta,
    ResourceList,
    ResourceQuota,
    ResourceQuotaSpec,
    ResourceQuotaStatus,
)


def quota(name: str = "team-a", used: dict[str, str] | None = None, **hard: str) -> ResourceQuota:
    return ResourceQuota(
        metadata=ObjectMeta(name=name, namespace="t"),
        spec=ResourceQuotaSpec(hard=hard),
        status=ResourceQuotaStatus(hard=hard, used=used or {}),
    )


def instance(cpu: str = "0", memory: str = "0", name: str = "i") -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, namespace="t"),
        spec=InstanceSpec(command=["x"], resources=ResourceList(cpu=cpu, memory=memory)),
    )


def request(cpu: str = "0", memory: str = "0") -> dict[str, int]:
    return requests_of(instance(cpu, memory).spec)


# hard limits, recorded usage, the new Instance's cpu and memory, and the refusal (or None)
DECISIONS: list[tuple[dict[str, str], dict[str, str], str, str, str | None]] = [
    ({"cpu": "2"}, {"cpu": "1500m"}, "500m", "0", None),  # exactly at the limit: fits
    (
        {"cpu": "2"},
        {"cpu": "1800m"},
        "500m",
        "0",
        'exceeded quota "team-a": requested cpu=500m, used cpu=1800m, limited cpu=2',
    ),
    ({"cpu": "2"}, {"cpu": "3"}, "0", "0", None),  # asks for no cpu: not limited by it
    (
        {"memory": "1Gi"},
        {"memory": "768Mi"},
        "0",
        "512Mi",
        'exceeded quota "team-a": requested memory=512Mi, used memory=768Mi, limited memory=1Gi',
    ),
    (
        {"instances": "3"},
        {"instances": "3"},
        "0",
        "0",
        'exceeded quota "team-a": requested instances=1, used instances=3, limited instances=3',
    ),
    ({"instances": "3"}, {"instances": "2"}, "0", "0", None),
    (
        {"cpu": "1", "memory": "1G", "instances": "10"},
        {"cpu": "800m", "memory": "900M", "instances": "2"},
        "300m",
        "200M",
        'exceeded quota "team-a": requested cpu=300m,memory=200M, '
        "used cpu=800m,memory=900M, limited cpu=1,memory=1G",
    ),
    ({"gpu": "2"}, {"gpu": "2"}, "4", "4Gi", None),  # an extended resource nobody requests
]


@pytest.mark.parametrize(("hard", "used", "cpu", "memory", "refusal"), DECISIONS)
def test_quota_decision_names_the_exceeded_limit(
    hard: dict[str, str], used: dict[str, str], cpu: str, memory: str, refusal: str | None
) -> None:
    q = quota(used=used, **hard)
    recorded = ledger(q)
    assert recorded is not None
    assert quota_decision([(q, recorded)], request(cpu, memory)) == refusal


def test_every_quota_must_admit_and_the_first_refusing_one_by_name_is_named() -> None:
    roomy = quota("a-roomy", used={"cpu": "0"}, cpu="100")
    tight = quota("b-tight", used={"instances": "1"}, instances="1")
    tighter = quota("c-tight", used={"instances": "5"}, instances="2")
    entries = [(q, ledger(q) or {}) for q in (tighter, roomy, tight)]
    refusal = quota_decision(entries, request("1"))
    assert refusal is not None and refusal.startswith('exceeded quota "b-tight"')
    assert quota_decision([(roomy, {"cpu": 0})], request("1")) is None
    assert quota_decision([], request("1000")) is None


def test_a_quota_without_a_recorded_usage_for_every_limit_has_no_ledger() -> None:
    assert ledger(quota(cpu="2")) is None  # new: not counted yet
    assert ledger(quota(used={"cpu": "1"}, cpu="2", memory="1Gi")) is None  # memory added
    assert ledger(quota(used={"cpu": "1", "memory": "1Ki"}, cpu="2")) == {"cpu": 1000}


def test_charging_raises_only_the_limited_resources_and_records_the_limits() -> None:
    q = quota(used={"cpu": "1", "instances": "2"}, cpu="2", instances="5")
    after = charged(q, ledger(q) or {}, request("250m", "1Gi"))
    assert after.status.used == {"cpu": "1250m", "instances": "3"}
    assert after.status.hard == {"cpu": "2", "instances": "5"}


def test_usage_counts_every_instance_and_extended_resources() -> None:
    spread = [instance("500m", "256Mi", "a"), instance("1", "0", "b"), instance(name="c")]
    assert usage_of(spread) == {"instances": 3, "cpu": 1500, "memory": 256 * 2**20}

    class Extended(ResourceList, frozen=True):
        extended: dict[str, str] = {}

    spec: Any = msgspec.structs.replace(
        instance().spec, resources=Extended(cpu="1", extended={"gpu": "2"})
    )
    assert requests_of(spec) == {"instances": 1, "cpu": 1000, "memory": 0, "gpu": 2}


def test_only_increases_of_an_update_are_admitted() -> None:
    old, new = request("500m", "1Gi"), request("1", "512Mi")
    assert raised(old, new) == {"cpu": 500}
    assert raised(new, old) == {"memory": 512 * 2**20}
    assert raised(old, old) == {}


def test_the_controller_writes_only_when_usage_or_limits_change() -> None:
    running = [instance("500m", name="a"), instance("500m", name="b")]
    q = quota(cpu="2", instances="4")
    fresh = status_change(q, running)
    assert fresh == ResourceQuotaStatus(
        hard={"cpu": "2", "instances": "4"}, used={"cpu": "1", "instances": "2"}
    )
    settled = msgspec.structs.replace(q, status=fresh)
    assert status_change(settled, running) is None  # idle: nothing to write
    # "1000m" and "1" are the same amount: still nothing to write
    spelled = msgspec.structs.replace(
        settled, status=ResourceQuotaStatus(hard=dict(fresh.hard), used={"cpu": "1000m",
                                                                          "instances": "2"})
    )  # fmt: skip
    assert status_change(spelled, running) is None
    # an Instance deleted: usage falls
    assert status_change(settled, running[:1]) == recomputed_status(settled, running[:1])
    # the limits changed: status.hard follows
    raised_limit = msgspec.structs.replace(settled, spec=ResourceQuotaSpec(hard={"cpu": "4"}))
    assert status_change(raised_limit, running) == ResourceQuotaStatus(
        hard={"cpu": "4"}, used={"cpu": "1"}
    )


@pytest.mark.parametrize(
    ("hard", "error"),
    [
        ({"Bad Name": "1"}, "spec.hard: invalid resource name 'Bad Name'"),
        ({"instances": "1.5"}, "spec.hard.instances: expected a whole number, got '1.5'"),
        ({"gpu": "500m"}, "spec.hard.gpu: expected a whole number, got '500m'"),
        ({"cpu": "lots"}, "Expected `str` matching regex"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(hard: dict[str, str], error: str) -> None:
    body = {"metadata": {"name": "q"}, "spec": {"hard": hard}}
    with pytest.raises(msgspec.ValidationError, match=error.replace(".", r"\.")):
        msgspec.convert(body, ResourceQuota)


def test_good_limits_are_accepted() -> None:
    hard = {"cpu": "1500m", "memory": "4Gi", "instances": "20", "example.com/fpga": "2"}
    q = msgspec.convert({"metadata": {"name": "q"}, "spec": {"hard": hard}}, ResourceQuota)
    assert q.spec.hard == hard
