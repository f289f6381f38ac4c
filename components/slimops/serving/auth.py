"""Who may call the server: an optional bearer token, required whenever it listens beyond loopback.

``--token-file PATH`` holds the token (surrounding whitespace ignored). Every request but the health checks
(which carry nothing secret, and which load balancers and Kubernetes probe without credentials) must send
``Authorization: Bearer <token>``; others get 401 with a JSON error. The comparison takes the same time
wherever the tokens differ (``hmac.compare_digest``).

Token file checks (exit 2, one line): missing, unreadable, empty, or shorter than ``MIN_TOKEN_CHARS``. A
file other users may read is served with a warning, not refused: Kubernetes mounts secrets 0644 by default.
"""

from __future__ import annotations

import hmac
import ipaddress
import stat
import sys
from pathlib import Path

from slimops.errors import BadInput

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
MIN_TOKEN_CHARS = 16
LOCAL_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, token_file: str | None) -> None:
    """Listening beyond this machine without a token would let anyone on the network use the models."""
    if token_file is None and not is_loopback(host):
        raise BadInput(f"--host {host} accepts connections from other machines, and the server has no other "
                       "authentication: give --token-file FILE (a file holding a secret token; clients send "
                       "'Authorization: Bearer <token>'), or listen on --host 127.0.0.1")


def read_token(path: str) -> str:
    file = Path(path)
    try:
        mode = file.stat().st_mode
        token = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise BadInput(f"token file {path} not found; write a secret there, e.g. "
                       f"`openssl rand -hex 32 > {path} && chmod 600 {path}`") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"token file {path} cannot be read ({type(err).__name__}); it must be a readable text file") \
            from None
    if not token:
        raise BadInput(f"token file {path} is empty; write a secret there, e.g. `openssl rand -hex 32 > {path}`")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() or not c.isascii() for c in token):
        raise BadInput(f"the token in {path} must be one word of at least {MIN_TOKEN_CHARS} printable ASCII "
                       f"characters, e.g. `openssl rand -hex 32 > {path}`")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        print(f"slimops: warning: token file {path} is readable or writable by other users "
              f"(mode {stat.S_IMODE(mode):04o}); `chmod 600 {path}`", file=sys.stderr, flush=True)
    return token


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the token (health checks excepted, a platform's too)."""

    def __init__(self, app, token: str, open_paths: frozenset[str] | set[str] = OPEN_PATHS):
        self.app = app
        self.token = token.encode("ascii")
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open_paths and not self._authorized(scope):
            from starlette.responses import JSONResponse

            response = JSONResponse({"error": "this server needs 'Authorization: Bearer <token>' with its token"},
                                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="slimops"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)
