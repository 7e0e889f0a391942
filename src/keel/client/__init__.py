"""Keel's Python client: typed async access to the keel.dev/v1 API, and a sync wrapper.

`KeelClient` (async) and `SyncClient` (the same calls from plain threads) speak the HTTP
contract of DESIGN.md section 4 with the models of `keel.api.resources`, through a pluggable
`HttpTransport` (`AiohttpTransport` by default; `keel.sim` answers in memory).
"""

from keel.client._backoff import Backoff
from keel.client._client import (
    FENCING_HEADER,
    KeelClient,
    ListResult,
    Page,
    Preconditions,
    Watch,
    fencing_header_value,
)
from keel.client._errors import (
    AlreadyExists,
    ApiError,
    ApiUnavailable,
    BadRequest,
    Conflict,
    Expired,
    FencingTokenRejected,
    Forbidden,
    Invalid,
    KeelClientError,
    NotFound,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    is_budget_refusal,
)
from keel.client._kubeconfig import (
    Kubeconfig,
    KubeconfigError,
    default_kubeconfig_path,
    load_kubeconfig,
)
from keel.client._registration import Registration
from keel.client._sync import SyncClient, SyncWatch
from keel.client._transport import (
    AiohttpTransport,
    HttpRequest,
    HttpResponse,
    HttpTransport,
    ResponseStream,
    RetryPolicy,
    TransportError,
)
from keel.client._watch import WatchEvent

__all__ = [
    "FENCING_HEADER",
    "AiohttpTransport",
    "AlreadyExists",
    "ApiError",
    "ApiUnavailable",
    "Backoff",
    "BadRequest",
    "Conflict",
    "Expired",
    "FencingTokenRejected",
    "Forbidden",
    "HttpRequest",
    "HttpResponse",
    "HttpTransport",
    "Invalid",
    "KeelClient",
    "KeelClientError",
    "Kubeconfig",
    "KubeconfigError",
    "ListResult",
    "NotFound",
    "Page",
    "Preconditions",
    "Registration",
    "ResponseStream",
    "RetryPolicy",
    "ServerError",
    "SyncClient",
    "SyncWatch",
    "TooLarge",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "Watch",
    "WatchEvent",
    "default_kubeconfig_path",
    "fencing_header_value",
    "is_budget_refusal",
    "load_kubeconfig",
]
