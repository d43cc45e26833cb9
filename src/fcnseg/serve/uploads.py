"""A request's body, read under a byte cap, parsed in memory, and decoded into a net's inputs.

Nothing here touches the disk: the body is held in memory (at most `max_upload_bytes`), its
multipart parts are parsed by python-multipart's streaming parser, and the images are decoded
from those bytes by `fcnseg.data.io.read_image` / `fcnseg.data.hha.read_depth` (their pixel
caps and truncation checks). A part's file name is never used: an upload is named by its
field ("upload 'image'") in every message.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..data.hha import read_depth
from ..data.io import ImageError, read_image
from .limits import ServeError

__all__ = ["FILE_FIELDS", "TEXT_FIELDS", "Part", "decode_depth", "decode_image", "parse_form"]

FILE_FIELDS = ("image", "depth", "hha")
TEXT_FIELDS = ("camera", "intrinsics")
MAX_PARTS = len(FILE_FIELDS) + len(TEXT_FIELDS)
_USAGE = "curl -F image=@photo.jpg http://HOST:PORT/predict"


@dataclass
class Part:
    data: bytes
    content_type: str


def too_large(size: int, limit: int) -> ServeError:
    return ServeError(
        413,
        "upload_too_large",
        f"the upload is {size:,} bytes or more, over this server's limit of {limit:,} bytes "
        f"(fcnseg serve --max-upload-mb): send a smaller or compressed image",
    )


def parse_form(body: bytes, content_type: str | None) -> dict[str, Part]:
    """A multipart/form-data body -> {field: Part}; only the fields the service knows, each
    once (an unknown or repeated field is refused, naming it)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        shown = (content_type or "none")[:80]
        raise ServeError(415, "not_multipart", f"POST /predict takes multipart/form-data with "
                         f"the image in the field 'image' ({_USAGE}); got Content-Type "
                         f"{shown!r}")  # fmt: skip
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ServeError(400, "bad_request", "the multipart Content-Type has no boundary: "
                         "let the client library build the form (curl -F)")  # fmt: skip
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field, value = bytearray(), bytearray()

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ServeError(400, "bad_request", f"the form has more than {MAX_PARTS} parts; "
                             f"it takes {', '.join(FILE_FIELDS + TEXT_FIELDS)}")  # fmt: skip
        parts.append(({}, bytearray()))

    def header_end() -> None:
        parts[-1][0][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": begin,
        "on_part_data": lambda d, s, e: parts[-1][1].extend(d[s:e]),
        "on_header_field": lambda d, s, e: field.extend(d[s:e]),
        "on_header_value": lambda d, s, e: value.extend(d[s:e]),
        "on_header_end": header_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ServeError(400, "bad_request", f"the multipart body is malformed ({e}); "
                         f"let the client library build it ({_USAGE})") from None  # fmt: skip
    form: dict[str, Part] = {}
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name not in FILE_FIELDS + TEXT_FIELDS:
            raise ServeError(400, "bad_request", f"unknown form field {name[:40]!r}: the form "
                             f"takes {', '.join(FILE_FIELDS + TEXT_FIELDS)}")  # fmt: skip
        if name in form:
            raise ServeError(400, "bad_request", f"the form field {name!r} is given twice")
        ctype = headers.get(b"content-type", b"").decode("latin-1")[:100]
        form[name] = Part(bytes(data), ctype)
    if "image" not in form:
        raise ServeError(400, "bad_request", f"the form has no field 'image': send the photo "
                         f"as a file in it ({_USAGE})")  # fmt: skip
    return form


def _probe(data: bytes, label: str, max_pixels: int) -> None:
    """Refuse from the header alone: not an image (415), too many pixels (413)."""
    if not data:
        raise ServeError(400, "bad_request", f"{label} is empty (0 bytes): attach the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except UnidentifiedImageError:
        raise ServeError(415, "not_an_image", f"{label} is not an image Pillow can read (it "
                         f"starts with {data[:8]!r}): send a PNG or JPEG") from None  # fmt: skip
    except Image.DecompressionBombError:
        raise ServeError(413, "too_many_pixels", f"{label} declares more pixels than "
                         f"Pillow decodes (a bomb?): downscale it") from None  # fmt: skip
    except Exception as e:  # a header Pillow recognised, then choked on
        raise ServeError(400, "truncated_image", f"{label} has a corrupt header "
                         f"({type(e).__name__}): send the file again") from None  # fmt: skip
    if w * h > max_pixels:
        raise ServeError(413, "too_many_pixels", f"{label} is {w} x {h} = {w * h:,} pixels, "
                         f"over this server's limit of {max_pixels:,} (fcnseg serve "
                         f"--max-pixels): downscale it")  # fmt: skip


def _clean(message: str, label: str) -> str:
    """fcnseg.data.io's message about an upload, without its advice for files on disk."""
    return re.sub(r"; (copy or download it again|convert it to PNG).*$", "", message) + (
        ": send the file again, whole" if "truncated" in message else ""
    )


def decode_image(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    """An uploaded colour (or HHA) image -> uint8 RGB (H, W, 3), by `read_image`'s rules."""
    label = f"upload '{field}'"
    _probe(data, label, max_pixels)
    try:
        return read_image(label, max_pixels=max_pixels, data=data)
    except ImageError as e:
        raise ServeError(400, "truncated_image", _clean(str(e), label)) from None


def decode_depth(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    """An uploaded 16-bit depth PNG -> uint16 (H, W); an 8-bit or colour picture -> 400."""
    label = f"upload '{field}'"
    _probe(data, label, max_pixels)
    try:
        return read_depth(label, max_pixels=max_pixels, data=data)
    except ImageError as e:
        code = "truncated_image" if "truncated" in str(e) else "bad_depth"
        raise ServeError(400, code, _clean(str(e), label)) from None


def text_fields(form: Mapping[str, Part]) -> dict[str, str]:
    """The form's text fields (camera, intrinsics) as short ASCII strings."""
    out = {}
    for name in TEXT_FIELDS:
        if name in form:
            try:
                out[name] = form[name].data.decode("ascii").strip()
            except UnicodeDecodeError:
                out[name] = "\ufffd"
            if len(out[name]) > 100:
                raise ServeError(400, "bad_request", f"form field {name!r} is too long")
    return out
