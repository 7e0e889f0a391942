"""Fixtures of the client tests: virtual time (real API servers come from tests/support)."""

from __future__ import annotations

import pytest
from client_fakes import VirtualSleep


@pytest.fixture
def virtual_sleep() -> VirtualSleep:
    return VirtualSleep()
