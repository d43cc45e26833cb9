"""`fcnseg serve`: Serve models over HTTP: a page to drop photos on (overlay, legend, pixel
probabilities, label PNG download) and an API (POST /predict -> the label PNG `fcnseg
predict` writes, or JSON). Listens on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import os
import re

from .common import CLASSES, FAST_HELP, fast_model, ranged

TOKEN_ENV = "FCNSEG_SERVE_TOKEN"
EPILOG = f"""API:
  POST /predict   multipart field 'image' (RGB-D nets: + 'depth', a 16-bit PNG in mm, or
                  'hha'; + camera=nyud or intrinsics=fx,fy,cx,cy to compute HHA from depth)
                  ?model=NAME (default: the first --model), ?output=sem|geo (SIFT Flow's PNG;
                  default sem), ?pixels=1 (JSON: the maps, for the page)
                  Accept: image/png (default) -> the label PNG, as fcnseg predict writes it
                  Accept: application/json -> classes present, pixel counts, size, timings
  GET /models, GET /health, GET / (the page)
  curl -F image=@photo.jpg http://127.0.0.1:8000/predict -o labels.png

token: --token T or the environment variable {TOKEN_ENV} (preferred: a command line is
visible to every user of the machine in `ps`); then /models and /predict need
'Authorization: Bearer T' (401 without). Errors are JSON {{"error", "message", "status"}}:
413 upload or pixels over the limits, 415 not an image, 400 truncated image / wrong depth /
bad form, 404 unknown model, 503 queue full (Retry-After) or shutting down, 504 over
--timeout. SIGTERM: requests in flight finish, new ones get 503, exit 0."""


def add(sub) -> None:
    import argparse

    s = sub.add_parser("serve", help=run.__doc__, description=__doc__, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("--model", action="append", required=True, metavar="[NAME=]SRC",
                   help="checkpoint file or model name, repeatable; the API names it NAME "
                   "(default: the file's stem, or the model name)")  # fmt: skip
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; another "
                   "prints a warning naming the exposure)")  # fmt: skip
    s.add_argument("--port", type=ranged(int, 0, 65535), default=8000, help="default 8000")
    s.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' (or set {TOKEN_ENV})")
    s.add_argument("--device", help="cpu or cuda (default: cpu)")
    s.add_argument("--fast", action="store_true", help=FAST_HELP)
    s.add_argument("--num-classes", type=CLASSES, help="for a model name (default 21)")
    s.add_argument("--net", help="for a release weights file: which net, e.g. voc-fcn8s")
    s.add_argument("--max-upload-mb", type=ranged(float, 0.01, 2048), default=16,
                   help="largest request body, MiB (default 16; 413 above)")  # fmt: skip
    s.add_argument("--max-pixels", type=ranged(int, 64, 2**28), default=2048 * 2048,
                   help="largest image, pixels (default 2048x2048; 413 above)")  # fmt: skip
    s.add_argument(
        "--queue",
        type=ranged(int, 1, 10000),
        default=32,
        help="requests admitted at once (default 32; 503 + Retry-After above)",
    )
    s.add_argument(
        "--timeout",
        type=ranged(float, 0.01, 86400),
        default=30,
        help="seconds per request, upload to answer (default 30; 504 above)",
    )
    s.add_argument(
        "--batch-window-ms",
        type=ranged(float, 0, 10000),
        default=5,
        help="how long a request waits for same-size companions (default 5)",
    )
    s.add_argument("--max-batch", type=ranged(int, 1, 256), default=8,
                   help="images per net pass (default 8)")  # fmt: skip
    s.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])  # fmt: skip
    s.set_defaults(func=run)


def _named(sources: list[str]) -> dict[str, str]:
    """--model [NAME=]SRC values -> {name: source}; names are unique and URL-safe."""
    from ..models.registry import list_models

    out: dict[str, str] = {}
    for text in sources:
        name, sep, src = text.partition("=")
        if not sep or os.path.exists(text):
            name, src = "", text
        if not name:
            name = src if src in list_models() else os.path.splitext(os.path.basename(src))[0]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
            raise ValueError(f"--model {text}: the name {name!r} must be letters, digits, '.', "
                             f"'_' or '-' (write NAME=SRC)")  # fmt: skip
        if name in out:
            raise ValueError(f"--model {text}: the name {name!r} is taken by --model "
                             f"{out[name]}; name them apart with NAME=SRC")  # fmt: skip
        out[name] = src
    return out


def run(args) -> int:
    """Serve models over HTTP: the page and the API (POST /predict, GET /models, /health)."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"fcnseg serve needs the serve extra ({e.name} is missing): "
                          f"pip install 'fcnseg[serve]'") from None  # fmt: skip
    from ..checkpoint import load_model
    from ..predict import resolve_device
    from ..serve import Limits, ServedModel, Service, serve

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < 16:
        raise ValueError(f"the token is {len(token)} characters: use 16 or more (e.g. python "
                         f"-c 'import secrets; print(secrets.token_urlsafe())')")  # fmt: skip
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_pixels=args.max_pixels, queue=args.queue, timeout=args.timeout,
                    batch_window=args.batch_window_ms / 1000, max_batch=args.max_batch)  # fmt: skip
    device = resolve_device(args.device)
    models = {}
    for name, src in _named(args.model).items():
        model, _ = load_model(src, num_classes=args.num_classes, device=device, net=args.net)
        models[name] = ServedModel(name, fast_model(model, args.fast, device), device,
                                   fast=args.fast)  # fmt: skip
    print(f"fcnseg serve: {', '.join(f'{n} ({m.net})' for n, m in models.items())} on "
          f"http://{args.host}:{args.port}/" + (" (token required)" if token else ""),
          flush=True)  # fmt: skip
    return serve(Service(models, limits, token=token), args.host, args.port,
                 log_level=args.log_level)  # fmt: skip
