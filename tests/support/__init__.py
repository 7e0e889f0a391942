"""What every Keel test shares: one way to wait for a condition, one API-server process (and
the other components, as processes), one manual clock, and a small HTTP client.

    from support import ApiServer, ManualClock, wait_for, wait_for_async

Fixtures (`apiserver`, `own_apiserver`) come from `support.fixtures`, registered by
tests/conftest.py.
"""

from keel.clock import ManualClock
from support.http import V1, HttpClient, Response, WatchStream, lease_of
from support.processes import AgentProcess, ApiServer, KeelProcess
from support.waiting import wait_for, wait_for_async

__all__ = [
    "V1",
    "AgentProcess",
    "ApiServer",
    "HttpClient",
    "KeelProcess",
    "ManualClock",
    "Response",
    "WatchStream",
    "lease_of",
    "wait_for",
    "wait_for_async",
]
