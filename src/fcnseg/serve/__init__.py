"""`fcnseg serve`: a segmentation service and its web page (optional extra: fcnseg[serve]).

    from fcnseg.serve import Limits, ServedModel, Service, create_app, serve
    service = Service({"cat": ServedModel("cat", model, torch.device("cpu"))}, Limits())
    serve(service, "127.0.0.1", 8000)          # or any ASGI server on create_app(service)

Modules, one concern each: limits (the bounds and the JSON errors), uploads (the body under a
cap, multipart in memory, images decoded by fcnseg.data.io's rules), batcher (dynamic
batching on one inference thread), service (the nets served, inputs by predict's rules, the
label PNG and JSON), app (routes and guards), server (uvicorn, loopback, graceful SIGTERM),
static/ (the page: plain HTML, JS and CSS).
"""

from .app import create_app, negotiate
from .limits import DEFAULT_LIMITS, Limits, ServeError
from .server import exposure_warning, serve
from .service import ServedModel, Service

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "ServeError",
    "ServedModel",
    "Service",
    "create_app",
    "exposure_warning",
    "negotiate",
    "serve",
]
