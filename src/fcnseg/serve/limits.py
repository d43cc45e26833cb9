"""What the service allows, and how it says no: every refusal is a `ServeError` answered as
JSON {"error": code, "message": text, "status": n} with the HTTP status that says what happened.

    413 upload_too_large, too_many_pixels      400 bad_request, truncated_image, bad_depth
    415 not_an_image, not_multipart             401 unauthorized     403 forbidden_origin
    404 unknown_model, not_found                406 not_acceptable   408 upload_timeout
    503 queue_full, shutting_down (Retry-After) 504 timeout          500 internal_error
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits", "ServeError"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The service's bounds. Memory is bounded by queue x (max_upload_bytes + the decoded
    image, max_pixels x 3 bytes, + its depth) plus one batch's activations."""

    max_upload_bytes: int = 16 * MIB  # a request body: image + depth + fields
    max_pixels: int = 2048 * 2048  # per image, checked from the header before decoding
    queue: int = 32  # requests admitted at once (uploading, waiting or running)
    timeout: float = 30.0  # seconds for one request: upload, queue and inference
    batch_window: float = 0.005  # seconds the first request of a batch waits for others
    max_batch: int = 8  # images per net pass (and at most max_batch_pixels pixels)
    max_batch_pixels: int = 2**21  # fcnseg.predict.AUTO_TILE_PIXELS: one batch's pixels
    drain: float = 10.0  # seconds SIGTERM waits for requests in flight (then exits anyway)

    def __post_init__(self):
        checks = {
            "max_upload_bytes": (self.max_upload_bytes, 1024, 2**31),
            "max_pixels": (self.max_pixels, 64, 2**28),
            "queue": (self.queue, 1, 10000),
            "timeout": (self.timeout, 0.001, 86400),
            "batch_window": (self.batch_window, 0, 10),
            "max_batch": (self.max_batch, 1, 256),
            "max_batch_pixels": (self.max_batch_pixels, 64, 2**30),
            "drain": (self.drain, 0, 3600),
        }
        for name, (value, lo, hi) in checks.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"serve limit {name}={value!r} must be in {lo}..{hi}")


DEFAULT_LIMITS = Limits()


class ServeError(Exception):
    """A refused request: HTTP `status`, a short machine-readable `code`, a message for people
    (it names the field or value and the fix, never a path on the server)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, "status": self.status}
