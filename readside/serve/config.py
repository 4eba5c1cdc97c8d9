"""What ``beamline serve`` is told: one frozen config, its safe defaults, and the bind check.

The defaults follow Datasette's: a page of 100 rows, never more than 1,000 rows
in one answer, a query stopped after a few seconds; each can be raised. The
service binds 127.0.0.1 unless told otherwise, and refuses to bind any other
address without a token.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from warehouse.reader import QueryLimits

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MIN_TOKEN_LENGTH",
    "ServeConfig",
    "check_bind",
    "is_loopback",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# A token shorter than this is refused: it could be guessed through the rate limit in reasonable time.
MIN_TOKEN_LENGTH = 16
# The service's own query limits: tighter than `beamline query`'s (30 s, 4GB), as answers are shared.
SERVE_LIMITS = QueryLimits(memory_limit="1GB", threads=2, timeout=5.0)


_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?")


def _is_origin(text: str) -> bool:
    """Whether ``text`` is an origin as a browser sends it: lower-case scheme://host[:port], nothing after."""
    match = _ORIGIN.fullmatch(text)
    return match is not None and (match.group(3) is None or 1 <= int(match.group(3)[1:]) <= 65535)


@dataclass(frozen=True)
class ServeConfig:
    """Everything the read service needs; checked when made (ConfigError, one line).

    ``rate_limit`` is requests per second per client address (a token bucket
    holding ``2 * rate_limit``; 0 turns it off). ``max_wait_s`` caps
    ``wait=`` of ``min_snapshot``. ``vendor_dir`` is where ``make setup``
    put the page's chart library and the API docs' viewer (``npm install
    --prefix .cache/js``): its ``node_modules`` folder.
    """

    warehouse: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    page_size: int = 100
    max_rows: int = 1000
    limits: QueryLimits = SERVE_LIMITS
    query_slots: int = 2
    max_wait_s: float = 30.0
    rate_limit: float = 100.0
    max_body_bytes: int = 64 * 1024
    poll_interval_s: float = 0.05
    max_event_streams: int = 64
    vendor_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "warehouse", Path(self.warehouse))
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"--token must be at least {MIN_TOKEN_LENGTH} characters (got {len(self.token)}); make one with "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0 to 65535; got {self.port}")
        if not 1 <= self.page_size <= self.max_rows:
            raise ConfigError(f"the page size must be 1 to --max-rows ({self.max_rows}); got {self.page_size}")
        if not 1 <= self.max_rows <= 1_000_000:
            raise ConfigError(f"--max-rows must be 1 to 1,000,000; got {self.max_rows}")
        if not 1 <= self.query_slots <= 64:
            raise ConfigError(f"query slots must be 1 to 64; got {self.query_slots}")
        if not 0 <= self.rate_limit <= 1_000_000:
            raise ConfigError(f"--rate-limit must be 0 (off) to 1,000,000 requests/s; got {self.rate_limit}")
        if not 0 < self.poll_interval_s <= 10:
            raise ConfigError(
                f"the snapshot poll interval must be above 0 and at most 10 s; got {self.poll_interval_s}"
            )
        for origin in self.cors_origins:
            if not _is_origin(origin):
                raise ConfigError(
                    "--cors-origin must be one origin, scheme://host[:port] in lower case with no path or '/' "
                    f"at the end, such as https://dashboard.example (no '*'); got {origin!r}"
                )

    @property
    def open_access(self) -> bool:
        """No token: only loopback binds are allowed, and any local client may read."""
        return self.token is None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) names only this machine's loopback interface."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in found)


def check_bind(config: ServeConfig) -> None:
    """Refuse, in one line, to serve a non-loopback address without a token."""
    if config.token is None and not is_loopback(config.host):
        raise ConfigError(
            f"binding {config.host} would let other machines read the warehouse: set a token with "
            "BEAMLINE_TOKEN (or --token) of at least 16 characters, or bind 127.0.0.1"
        )
