"""What stands between a client and the routes: one-line errors, the Host check, the rate limit, the token.

:class:`Guard` is the outermost ASGI layer:

* an exception that escapes a route is a 500 with one line; its traceback goes
  to the server log only;
* without a token (loopback binds only) the ``Host`` header must name this
  machine (``localhost``, a loopback address, or the address bound), so a web
  page elsewhere cannot reach the service through DNS rebinding;
* each client address gets a token bucket of ``rate_limit`` requests per
  second (twice that in a burst); past it, 429 with ``Retry-After``;
* a request body over ``max_body_bytes`` is refused with 413;
* every answer says ``nosniff``, no referrer, no framing, no caching.

:class:`TokenCheck` sits inside (and inside CORS, when ``--cors-origin`` turns it
on, so a browser's preflight gets its answer): with a token every route needs
``Authorization: Bearer <token>`` (or HTTP Basic with the token as password,
which is how a browser sends it after its login prompt), compared with
:func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from readside.serve.answers import HTTPError, dumps, one_line
from readside.serve.config import ServeConfig

__all__ = ["Guard", "RateLimiter", "TokenCheck", "authorized"]

log = logging.getLogger("beamline.serve")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


async def _send_error(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = dumps({"error": one_line(message)})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RateLimiter:
    """A token bucket per client: ``rate`` per second, ``burst`` at most."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2 * rate)
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)
        self._swept = time.monotonic()

    def wait_needed(self, client: str, now: float | None = None) -> float:
        """0 if ``client`` may go now (a token is taken), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, when = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            answer = 0.0
        else:
            self._buckets[client] = (tokens, now)
            answer = (1 - tokens) / self.rate
        if now - self._swept > 10 or len(self._buckets) > 100_000:
            self._sweep(now)
        return answer

    def _sweep(self, now: float) -> None:
        """Forget clients whose bucket is full again (they would start full anyway)."""
        full_after = self.burst / self.rate
        self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full_after}
        self._swept = now


def _allowed_host(host_header: str | None, bound: str) -> bool:
    """Whether a Host header names this machine (for a service without a token)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in _LOCAL_NAMES or name == bound.strip("[]").lower():
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (Bearer, or Basic with it as the password)."""
    if not header:
        return False
    scheme, _, credential = header.strip().partition(" ")
    given: str | None = None
    if scheme.lower() == "bearer":
        given = credential.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(credential.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    if given is None:
        return False
    # Equal-length digests: the comparison's time says nothing about the token, not even its length.
    return hmac.compare_digest(_digest(given), _digest(token))


class TokenCheck:
    """Every HTTP request needs the token (when one is configured)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        if not authorized(_header(scope, b"authorization"), self.token):
            challenges = [
                (b"www-authenticate", b'Bearer realm="beamline"'),
                (b"www-authenticate", b'Basic realm="beamline"'),
            ]
            await _send_error(send, 401, "this service needs its token: send Authorization: Bearer <token>", challenges)
            return
        await self.app(scope, receive, send)


class Guard:
    """The outermost layer: errors, Host, rate limit, body size, security headers."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        self.limiter = RateLimiter(config.rate_limit) if config.rate_limit > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config = self.config
        started = False
        received = 0

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *_SECURITY_HEADERS]
            await send(message)

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > config.max_body_bytes:
                    raise HTTPError(413, f"the request body may hold at most {config.max_body_bytes:,} bytes")
            return message

        host = length = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"content-length":
                length = value.decode("latin-1")
        if config.open_access and not _allowed_host(host, config.host):
            await _send_error(
                guarded_send,
                421,
                f"Host {host!r} is not this service's address; use the address beamline serve printed",
            )
            return
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.wait_needed(client[0] if client else "")
            if wait:
                retry = str(max(1, math.ceil(wait))).encode()
                message = f"too many requests: at most {config.rate_limit:g} a second per client"
                await _send_error(guarded_send, 429, message, [(b"retry-after", retry)])
                return
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            await _send_error(guarded_send, 413, f"the request body may hold at most {config.max_body_bytes:,} bytes")
            return
        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception as exc:
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            if not started:
                await _send_error(
                    guarded_send, 500, f"internal error ({type(exc).__name__}); the server log has the details"
                )
