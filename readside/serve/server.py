"""Running the app on uvicorn: bind first (one line if the port is taken), then serve until a signal.

The index of the newest snapshot is built before the socket is bound, so a
missing or damaged warehouse is one line and a non-zero exit, and the address
printed is one that answers. SIGINT and SIGTERM stop the service cleanly (open
event streams are closed after a short grace) and the process exits 0.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from core.errors import ServiceError
from readside.serve.app import create_app
from readside.serve.config import ServeConfig, check_bind
from readside.serve.routes import Service

__all__ = ["bind", "run", "url_of"]


class _Server(uvicorn.Server):
    """uvicorn's server, ending open event streams first when it stops, and then with exit status 0."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()  # a stop asked for is a clean exit, not death by the signal

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.close_streams()  # so the connections can close within the grace period
        await super().shutdown(sockets)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one); ServiceError in one line if it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ServiceError(
            f"cannot bind {host}: {getattr(exc, 'strerror', None) or exc}; pass --host 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(f"port {port} on {host} is taken; pass another --port (0 picks a free one)") from None
        raise ServiceError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run(config: ServeConfig, announce: Callable[[str, Service], None], *, access_log: bool = False) -> None:
    """Serve ``config`` until SIGINT/SIGTERM; ``announce(url, service)`` once the socket listens."""
    check_bind(config)
    service = Service(config)
    service.start()
    try:
        sock = bind(config.host, config.port)
    except BaseException:
        service.stop()
        raise
    server = _Server(
        uvicorn.Config(
            create_app(config, service),
            lifespan="on",
            log_config=None,
            access_log=access_log,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        ),
        service,
    )
    announce(url_of(sock), service)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        service.stop()
