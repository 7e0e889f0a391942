"""Keel's API: resource kinds and the HTTP API server of DESIGN.md section 4.

Where to look: `resources` (every kind as a strict record, and `STOP_CONFIRMED`, the finalizer
that holds a bound exclusive Instance until its copy has stopped), `registry` (the consensus
boundary), `storage` (objects over the store: OCC, fencing, leases, finalizers), `server`
(the ASGI app), `watchcache`, `selectors`, `patch`, `auth`, `admission`, `telemetry`,
`metrics`, `openapi`. Nothing is imported here, so a client importing `keel.api.resources`
does not pull in the server's dependencies.
"""
