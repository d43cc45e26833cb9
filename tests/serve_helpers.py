"""Shared by the service's tests and benchmark: tiny nets, a real uvicorn server on 127.0.0.1
at a free port in a thread, pictures as bytes, a net whose passes can be held."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
import torch
import uvicorn
from PIL import Image
from torch import nn

from fcnseg.serve import Service, create_app
from fcnseg.serve.server import GracefulServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(service: Service):
    """The service under uvicorn in a thread; yields its base URL, stops it after."""
    port = free_port()
    config = uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=2)  # fmt: skip
    server = GracefulServer(config, service)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > 30:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Held(nn.Module):
    """A net whose passes wait for `gate` and are counted (batch sizes in `batches`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    def forward(self, x):
        n = (next(iter(x.values())) if isinstance(x, dict) else x).shape[0]
        self.batches.append(n)
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        return self.model(x)


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def put_torch_threads() -> None:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
