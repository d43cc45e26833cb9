"""The HTTP side (FastAPI on Starlette): routes, the guards every request passes (Host,
draining, token, Origin, the queue's admission), content negotiation, and JSON errors.

    GET  /                 the page (package data: index.html, app.js, style.css; no CDN)
    GET  /health           {"status": "ok" | "draining", queue counts, passes}; 503 draining
    GET  /models           the nets served, their inputs and class names
    POST /predict          multipart: image (+ depth or hha, camera or intrinsics for RGB-D
                           nets); ?model=NAME&output=HEAD&pixels=1; Accept: image/png (the
                           default) or application/json

`/`, its files and `/health` need no token (they hold no data); `/models` and `/predict` do
when one is set. Nothing taken from a request names a file: models are looked up among
those loaded at start, the page's files among three names held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .batcher import Batcher, Job
from .limits import ServeError
from .service import Service, head_key
from .uploads import parse_form, too_large

__all__ = ["create_app", "negotiate"]

PAGE_FILES = {"": ("index.html", "text/html; charset=utf-8"),
              "app.js": ("app.js", "text/javascript; charset=utf-8"),
              "style.css": ("style.css", "text/css; charset=utf-8")}  # fmt: skip
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
            "data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
            "base-uri 'none'")  # fmt: skip
_TYPES = {"png": "image/png", "json": "application/json"}


def negotiate(accept: str | None) -> str:
    """ "png" or "json" by the Accept header (q-values; the more specific range wins; PNG on
    a tie, so */* and no header get the label PNG); ServeError 406 if neither is acceptable."""
    best: dict[str, tuple[float, int]] = {}
    for item in (accept or "*/*").split(",")[:64]:
        media, *params = (s.strip().lower() for s in item.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        for kind, full in _TYPES.items():
            spec = {full: 3, full.split("/")[0] + "/*": 2, "*/*": 1}.get(media, 0)
            if spec and spec > best.get(kind, (0.0, 0))[1]:
                best[kind] = (q if math.isfinite(q) else 0.0, spec)
    options = [(q, spec, kind == "png", kind) for kind, (q, spec) in best.items() if q > 0]
    if not options:
        raise ServeError(406, "not_acceptable", "POST /predict answers image/png (the label "
                         "PNG) or application/json: ask for one in Accept")  # fmt: skip
    return max(options)[-1]


def _error(e: ServeError) -> JSONResponse:
    headers = dict(e.headers)
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _page() -> dict[str, bytes]:
    files = resources.files("fcnseg.serve") / "static"
    return {route: (files / name).read_bytes() for route, (name, _) in PAGE_FILES.items()}


def create_app(service: Service) -> FastAPI:
    """The ASGI app serving `service`'s models (run it with `fcnseg.serve.server.serve`, or
    any ASGI server: uvicorn fcnseg... --factory is not needed, the app is plain ASGI)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher = Batcher(service.run, service.limits)
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="fcnseg serve", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.service = service
    page = _page()

    def guard(request: Request, token: bool) -> None:
        if service.allowed_hosts is not None:
            host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in service.allowed_hosts:
                raise ServeError(400, "bad_host", "this server answers only requests addressed "
                                 "to the loopback address it listens on (Host header)")  # fmt: skip
        if service.draining:
            raise ServeError(503, "shutting_down", "the server is shutting down; retry on "
                             "another or after it restarts", {"Retry-After": "5",
                                                              "Connection": "close"})  # fmt: skip
        if token and service.token is not None:
            scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
            ok = hmac.compare_digest(given.strip().encode(), service.token.encode())
            if scheme.lower() != "bearer" or not ok:
                raise ServeError(401, "unauthorized", "this server needs its token: send "
                                 "Authorization: Bearer <token>",
                                 {"WWW-Authenticate": "Bearer"})  # fmt: skip
        origin = request.headers.get("origin")
        if request.method == "POST" and origin is not None:
            same = origin.split("://", 1)[-1].rstrip("/") == request.headers.get("host", "")
            if not same:
                raise ServeError(403, "forbidden_origin", "requests from another site's "
                                 "pages are refused (Origin header)")  # fmt: skip

    @app.exception_handler(ServeError)
    async def _serve_error(request, e: ServeError):
        return _error(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        return _error(ServeError(e.status_code, code, f"{request.method} {request.url.path[:80]}"
                                 f": {e.detail}; the API is GET /, /health, /models and POST "
                                 f"/predict"))  # fmt: skip

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        return _error(ServeError(500, "internal_error", f"internal error ({type(e).__name__}); "
                                 f"the server's log has the details"))  # fmt: skip

    @app.get("/")
    @app.get("/static/{name}")
    async def static(request: Request, name: str = ""):
        guard(request, token=False)
        if name not in page:
            raise ServeError(404, "not_found", "no such page file")
        return Response(page[name], media_type=PAGE_FILES[name][1],
                        headers={"Content-Security-Policy": PAGE_CSP})  # fmt: skip

    @app.get("/health")
    async def health(request: Request):
        b = service.batcher
        body = {"status": "draining" if service.draining else "ok",
                "admitted": service.admitted, "waiting": b.waiting if b else 0,
                "served": service.served, "passes": b.passes if b else 0,
                "images": b.images if b else 0, "models": list(service.models)}  # fmt: skip
        return JSONResponse(body, status_code=503 if service.draining else 200)

    @app.get("/models")
    async def models(request: Request):
        guard(request, token=True)
        return {"models": [m.describe() for m in service.models.values()],
                "limits": {"max_upload_bytes": service.limits.max_upload_bytes,
                           "max_pixels": service.limits.max_pixels}}  # fmt: skip

    @app.post("/predict")
    async def predict(request: Request):
        t0 = time.monotonic()
        guard(request, token=True)
        q = request.query_params
        served = service.model(q.get("model"))
        kind = negotiate(request.headers.get("accept"))
        heads = {head_key(h): h for h in served.heads}
        output = q.get("output", head_key(served.heads[0]))
        if output not in heads:
            raise ServeError(400, "bad_request", f"output {output[:40]!r}: {served.name} gives "
                             f"{', '.join(heads)}")  # fmt: skip
        pixels = q.get("pixels", "0").lower() in ("1", "true", "yes")
        limits = service.limits
        if service.admitted >= limits.queue:
            b = service.batcher
            per = b.seconds / b.passes if b and b.passes else 1.0
            wait = max(1, math.ceil(per * service.admitted / limits.max_batch))
            raise ServeError(503, "queue_full", f"{service.admitted} requests are queued, this "
                             f"server's limit (fcnseg serve --queue); retry in {wait} s",
                             {"Retry-After": str(wait)})  # fmt: skip
        service.admitted += 1
        try:
            return await _predict(request, served, kind, heads[output], pixels, t0)
        finally:
            service.admitted -= 1

    async def _read(request: Request, deadline: float) -> bytes:
        cap = service.limits.max_upload_bytes
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        body, seen = bytearray(), 0
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                if declared <= 4 * cap:  # else answer at once (the client may see a reset)
                    async for chunk in request.stream():
                        seen += len(chunk)
                        if seen > 4 * cap:
                            break
                        if seen <= cap and declared <= cap:
                            body += chunk
                        else:  # read on, keeping nothing, so the client hears the 413
                            body.clear()
            if seen > cap or declared > cap:
                raise too_large(max(seen, declared), cap)
        except TimeoutError:
            raise ServeError(408, "upload_timeout", f"the upload did not arrive within the "
                             f"request's {service.limits.timeout:g} s (fcnseg serve "
                             f"--timeout)") from None  # fmt: skip
        return bytes(body)

    async def _left(request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def _predict(request, served, kind, head, pixels, t0):
        deadline = t0 + service.limits.timeout
        try:
            body = await _read(request, deadline)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody to answer; nothing was queued
        t_read = time.monotonic()
        form = parse_form(body, request.headers.get("content-type"))
        del body
        sample = await asyncio.to_thread(service.prepare, served, form)
        del form
        h, w = next(iter(sample.values())).shape[:2]
        t_dec = time.monotonic()
        loop = asyncio.get_running_loop()
        job = Job((served.name, h, w, pixels), sample, h * w, loop.create_future())
        service.batcher.submit(job)
        left = asyncio.ensure_future(_left(request))
        try:
            done, _ = await asyncio.wait({job.future, left}, timeout=deadline - time.monotonic(),
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            left.cancel()
        if job.future not in done:
            job.cancel()  # dropped from the queue if its pass has not begun
            if left in done:
                return Response(status_code=499)
            raise ServeError(504, "timeout", f"the request took over its "
                             f"{service.limits.timeout:g} s (fcnseg serve --timeout): the "
                             f"server is busy or the image is large")  # fmt: skip
        try:
            labels, conf, batch, seconds = job.future.result()
        except (RuntimeError, ValueError) as e:
            raise ServeError(500, "inference_failed", f"inference failed: "
                             f"{str(e).splitlines()[0][:300]}") from None  # fmt: skip
        out = await asyncio.to_thread(service.answer, served, labels, conf, pixels)
        service.served += 1
        t_end = time.monotonic()
        headers = {"X-Fcnseg-Model": served.name, "X-Fcnseg-Output": head_key(head),
                   "X-Fcnseg-Batch": str(batch)}  # fmt: skip
        if kind == "png":
            return Response(out[head_key(head)]["png"], media_type="image/png", headers=headers)
        for entry in out.values():
            del entry["png"]
        started = job.started or t_end
        ms = lambda a, b: round((b - a) * 1000, 2)  # noqa: E731
        return JSONResponse({
            "model": served.name, "net": served.net, "size": {"height": h, "width": w},
            "outputs": out,
            "timings_ms": {"upload": ms(t0, t_read), "decode": ms(t_read, t_dec),
                           "queue": ms(t_dec, started), "inference": round(seconds * 1000, 2),
                           "total": ms(t0, t_end)},
            "batch": batch,
        }, headers=headers)  # fmt: skip

    return _secured(app)


def _secured(app):
    """Headers on every answer: no MIME sniffing, no caching of results, no referrer."""
    extra = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
             (b"referrer-policy", b"no-referrer")]  # fmt: skip

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_with(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, send_with)

    asgi.state = app.state  # type: ignore[attr-defined]
    asgi.fastapi = app  # type: ignore[attr-defined]
    return asgi
