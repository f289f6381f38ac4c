"""What one ``slimops serve`` process accepts, and for how long: every bound on a client's request in one place.

The defaults keep a 2-core machine serving small requests with a steady latency while large ones run, and
keep the process's memory bounded by ``max_inflight`` requests of at most ``max_elements`` each.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Size: over these, 413.
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch: int = 64  # the first dimension of every input
    max_elements: int = 1_000_000  # all input tensors of one request together; and all its outputs together
    # Load: over max_inflight, 503 with Retry-After (a refused request's body is read, never parsed).
    max_inflight: int = 16  # requests admitted at once, running or waiting for an inference thread
    chunk_rows: int = 8  # a batch runs in chunks of this many rows, taking turns with other requests' chunks
    # Open connections (uvicorn's limit_concurrency); more get 503. Bodies still arriving are not admitted yet, so
    # at most max_connections x max_body_bytes (512 MiB by default) of them are buffered at once.
    max_connections: int = 64
    # Time, seconds.
    request_timeout_s: float = 30.0  # waiting for a thread + inference; over it, 504 and the run is stopped
    body_timeout_s: float = 30.0  # from the headers to the body's last byte; over it, 408 and the connection closes
    idle_timeout_s: float = 5.0  # a connection with no request (headers) in this time is closed


# Request headers (all of them, per request) larger than this are refused with 400 and the connection closed.
MAX_HEADER_BYTES = 64 * 1024
