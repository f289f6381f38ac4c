"""A deadline and a size cap on request headers, which uvicorn does not have.

uvicorn closes a keep-alive connection left idle *after* a response (``timeout_keep_alive``), but a new
connection that sends nothing, or that trickles its headers a byte at a time, is held open forever, and
httptools puts no cap on header size. Here every request's headers must arrive within ``idle_timeout_s`` of
the connection opening (or of the previous response) and within ``MAX_HEADER_BYTES``. The body's deadline
is the app's (``body_timeout_s``, in app.py).
"""

from __future__ import annotations

import sys

from slimops.serving.limits import MAX_HEADER_BYTES


def http_protocol(header_timeout_s: float):
    """uvicorn's ``http`` setting: its httptools protocol with header deadlines, or "auto" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        print("slimops: warning: httptools is not installed (pip install 'uvicorn[standard]'): connections that "
              "never send their request headers are not timed out", file=sys.stderr, flush=True)
        return "auto"

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            waiting = self._header_timer is not None
            super().data_received(data)
            if waiting and self._header_timer is not None:  # still no complete headers after this data
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                    self.send_400_response(f"request headers over {MAX_HEADER_BYTES} bytes")

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # a pipelined request already has its headers: no new deadline
            super().on_response_complete()
            if not pipelined and self._header_timer is None and not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
