"""Running the app under uvicorn: loopback by default (a warning naming the exposure for any
other host), and a graceful stop on SIGTERM / SIGINT: the requests in flight finish, new
ones get 503 (shutting_down), and the process exits 0 once none is left or after
`Limits.drain` seconds (a second signal stops at once)."""

from __future__ import annotations

import ipaddress
import signal
import sys
import time

import uvicorn

from .app import create_app
from .service import Service

__all__ = ["LOOPBACK", "GracefulServer", "exposure_warning", "serve"]

LOOPBACK_NAMES = ("localhost",)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int, token: bool) -> str | None:
    """The warning printed when the server listens beyond this machine, or None."""
    if is_loopback(host):
        return None
    who = "every machine on every network" if host in ("0.0.0.0", "::") else (
        f"every machine that can reach {host}")  # fmt: skip
    guard = ("each request needs the token" if token else
             "WITHOUT a token anyone there can run the model (pass --token, or set "
             "FCNSEG_SERVE_TOKEN)")  # fmt: skip
    return (f"warning: serving on {host}:{port}: {who} can send images to this server; "
            f"{guard}. Traffic is plain HTTP (no TLS): put a TLS proxy in front for untrusted "
            f"networks")  # fmt: skip


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains instead of stopping at once."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service
        self.drain_since: float | None = None

    def handle_exit(self, sig: int, frame) -> None:  # not re-raised after exit: exit code 0
        if self.drain_since is not None:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self.drain_since = time.monotonic()
        self.service.draining = True
        print(f"fcnseg serve: {signal.Signals(sig).name}: finishing {self.service.admitted} "
              f"request(s) in flight, refusing new ones (503); stopping", file=sys.stderr,
              flush=True)  # fmt: skip

    async def on_tick(self, counter: int) -> bool:
        if self.drain_since is not None:
            over = time.monotonic() - self.drain_since > self.service.limits.drain
            if self.service.admitted == 0 or over:
                self.should_exit = True
        return await super().on_tick(counter)


def serve(service: Service, host: str = "127.0.0.1", port: int = 8000, *,
          log_level: str = "info") -> int:  # fmt: skip
    """Serve until SIGTERM / SIGINT; returns 0 after a graceful stop."""
    warning = exposure_warning(host, port, service.token is not None)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    elif service.allowed_hosts is None:  # loopback: refuse other Host names (DNS rebinding)
        service.allowed_hosts = ("127.0.0.1", "localhost", "::1")
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5, server_header=False,
                            limit_concurrency=service.limits.queue * 4 + 16,
                            h11_max_incomplete_event_size=64 * 1024)  # fmt: skip
    server = GracefulServer(config, service)
    server.run()
    return 0
