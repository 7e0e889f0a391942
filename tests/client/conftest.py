"""Fixtures of the client tests: virtual time (real API servers come from tests/support)."""

from __future__ import annotations

import pytest

from keel.clock import ManualClock


@pytest.fixture
def virtual_sleep() -> ManualClock:
    """A clock whose sleeps pass at once and are recorded (`slept`): the client's backoff
    is observed, not waited for."""
    return ManualClock(auto_advance=True)
