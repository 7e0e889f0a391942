"""The nemesis schedule is a pure function of its seed: replayable, and within its bounds."""

from __future__ import annotations

import itertools

import pytest

from keel.verify.nemesis import FAULTS, expand, schedule


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    kinds = expand(["partition", "kill", "pause", "slow-disk"], "etcd")
    first = schedule(7, kinds, 120.0)
    assert first == schedule(7, kinds, 120.0)
    assert first != schedule(8, kinds, 120.0)


def test_faults_never_overlap_and_end_within_the_duration() -> None:
    faults = schedule(3, expand(["partition", "kill", "pause"], "etcd"), 90.0)
    assert faults, "a 90 s schedule holds faults"
    for before, after in itertools.pairwise(faults):
        assert before.at + before.duration < after.at
    assert faults[-1].at + faults[-1].duration <= 90.0


def test_pauses_outlast_every_lease_ttl_of_the_verify_cluster() -> None:
    faults = schedule(5, ["pause"], 200.0)
    assert faults and all(f.duration >= 8.0 for f in faults)


def test_the_smoke_schedule_takes_each_fault_once_in_order() -> None:
    faults = schedule(1, ["partition-one", "kill", "pause"], 40.0, ordered=True)
    assert [f.kind for f in faults] == ["partition-one", "kill", "pause"]


def test_the_embedded_store_gets_no_partitions_and_no_etcd_targets() -> None:
    kinds = expand(["partition", "kill", "pause", "slow-disk"], "sqlite")
    assert kinds == ["kill", "pause", "slow-disk"]
    faults = schedule(11, kinds, 600.0, store="sqlite")
    assert faults and all(f.target != "etcd" for f in faults)


def test_an_unknown_fault_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"--faults: unknown fault 'flood'.*partition"):
        expand(["flood"], "etcd")


def test_every_fault_kind_belongs_to_a_family_a_user_can_name() -> None:
    named = set(expand(["partition", "kill", "pause", "slow-disk"], "etcd"))
    assert named == set(FAULTS)
