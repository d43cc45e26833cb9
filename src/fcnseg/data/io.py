"""Reading photos and label masks from disk, and writing masks back, with errors that say why.

`read_image` turns any still image Pillow can decode into uint8 RGB (H, W, 3):

- grayscale, 1-bit, palette and CMYK images are converted to RGB;
- an alpha channel (LA, RGBA, PA, transparent palettes) is composited onto BLACK: a fully
  transparent pixel becomes (0, 0, 0), the value images are padded with;
- 16-bit images (I;16, I;16B, 16-bit PNG, 32-bit "I" holding 0..65535) are rescaled,
  v8 = round(v16 * 255 / 65535) (65535 -> 255, 32768 -> 128), never clipped;
- float "F" images are read as 0..1 (scaled by 255) when every value lies in [0, 1], as 0..255
  when they lie in [0, 255]; anything else is an error;
- the EXIF orientation tag is applied (`ImageOps.exif_transpose`), so a phone photo comes out
  the way it is shown;
- of a multi-frame file (GIF, TIFF) the first frame is read.

Every failure raises `ImageError` (a ValueError) naming the file and how to fix it: missing or
empty file, not an image, truncated or corrupt data (the whole image is decoded, so a cut file is
detected; Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False), or more pixels than
`max_pixels` (a guard against decompression bombs, checked from the header before decoding).

Masks hold class indices, uint8 (H, W), 255 = ignore (PASCAL VOC's convention). On disk a mask is
a palette PNG whose indices are the classes (VOC's SegmentationClass), a single-channel PNG whose
values are the classes, or an RGB picture whose colours are looked up in a palette (default: VOC).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..categories import voc_palette
from ..safety import atomic_write, unreadable

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "check_labels",
    "colorize",
    "mask_png",
    "read_image",
    "read_mask",
    "to_rgb",
    "write_mask",
]

# 8192 x 8192 = 67 Mpx: larger than any photo a segmentation set holds (VOC: 500 x 500), smaller
# than Pillow's own warning threshold (89 Mpx). Decoded to RGB it takes 192 MiB.
DEFAULT_MAX_PIXELS = 8192 * 8192

_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image or mask file that cannot be read as asked; the message names the file."""


def _open(
    path: str | os.PathLike, max_pixels: int | None, what: str, data: bytes | None = None
) -> Image.Image:
    """Open and fully decode the first frame of `path`, or raise ImageError saying why.
    `data`: the file's bytes, already in memory (an upload); `path` then only names it."""
    p = Path(path)
    if data is None and not p.exists():
        raise ImageError(f"{what} {p}: no such file. Check the path (cwd is {Path.cwd()})")
    if data is None and p.is_dir():
        raise ImageError(f"{what} {p} is a folder, not a file: give the path of one {what}")
    if (len(data) if data is not None else p.stat().st_size) == 0:
        raise ImageError(
            f"{what} {p} is empty (0 bytes): the copy or download that made it failed; "
            f"copy it again"
        )
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below replaces Pillow's DecompressionBombWarning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p if data is None else io.BytesIO(data))
    except PermissionError:
        raise ImageError(unreadable(p, what)) from None
    except UnidentifiedImageError as e:
        if data is not None:
            head = data[:16]
        else:
            with open(p, "rb") as f:
                head = f.read(16)
        raise ImageError(
            f"{what} {p} is not an image Pillow can read (it starts with {head!r}); "
            f"convert it to PNG or JPEG, or remove it from the data set"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError(
            f"{what} {p}: {e}. Pillow refuses images this large before fcnseg can; if the file "
            f"is trusted, raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels"
        ) from e
    except OSError as e:
        raise ImageError(f"cannot open {what} {p}: {e}") from e
    except (SyntaxError, EOFError, ValueError) as e:  # a header Pillow recognised, then choked on
        raise ImageError(
            f"{what} {p} has a corrupt header ({type(e).__name__}: {e}); "
            f"copy or download it again, or remove it from the data set"
        ) from e
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageError(
            f"{what} {p} is {w} x {h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            f"(a guard against decompression bombs). If the file is trusted, pass a larger "
            f"max_pixels (or None), or downscale the image"
        )
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            f"cannot check {what} {p} for truncation: PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set "
            f"True by some other code; set it back to False"
        )
    try:
        im.load()  # decode everything now: a truncated or corrupt file fails here
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        im.close()
        raise ImageError(
            f"{what} {p} is truncated or corrupt ({type(e).__name__}: {e}); "
            f"copy or download it again, or remove it from the data set"
        ) from e
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:  # a broken EXIF block
        raise ImageError(
            f"{what} {p}: cannot apply its EXIF orientation ({e}); strip or fix its EXIF data"
        ) from e
    if out is None or out is im:
        return im
    im.close()  # exif_transpose made a rotated copy
    return out


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounding: v8 = round(v16 * 255 / 65535)."""
    a = a.astype(np.int64)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_eight(a: np.ndarray, p: Path) -> np.ndarray:
    finite = np.isfinite(a)
    if not finite.all():
        raise ImageError(
            f"image {p} (32-bit float) holds {int((~finite).sum())} NaN or infinite values; "
            f"replace them and save it as an 8-bit PNG"
        )
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1:
        a = a * 255
    elif lo < 0 or hi > 255:
        raise ImageError(
            f"image {p} (32-bit float) has values {lo:g}..{hi:g}, neither 0..1 nor 0..255; "
            f"rescale it and save it as an 8-bit PNG"
        )
    return np.rint(a).astype(np.uint8)


def _to_rgb(im: Image.Image, p: Path) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im)
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.array(im.convert("RGBA"), dtype=np.uint16)
        if mode in ("La", "RGBa"):  # premultiplied already: composited onto black
            return rgba[..., :3].astype(np.uint8)
        alpha = rgba[..., 3:]
        return ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)  # onto black
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        a = np.array(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(
                f"image {p} is 32-bit integer with values {a.min()}..{a.max()}, outside the "
                f"16-bit range 0..65535; rescale it and save it as an 8-bit PNG"
            )
        return np.repeat(_sixteen_to_eight(a)[..., None], 3, axis=2)
    if mode == "F":
        a = _float_to_eight(np.array(im), p)
        return np.repeat(a[..., None], 3, axis=2)
    try:  # 1, L, P, CMYK, YCbCr, LAB, HSV, ...
        return np.array(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageError(
            f"image {p} has pixel mode {mode!r}, which cannot be converted to RGB ({e}); "
            f"save it as an 8-bit RGB PNG or JPEG"
        ) from e


def to_rgb(image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image as uint8 RGB (H, W, 3), by the rules of `read_image`, however it is passed.

    - a path: `read_image`;
    - a PIL image of any mode (16-bit, float, alpha, palette, CMYK ...): converted as if read
      from a file (16-bit rescaled, alpha composited onto black), but no EXIF rotation;
    - a NumPy array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA, composited onto black):
      uint8 as is; uint16 (and int values 0..65535) rescaled as 16-bit; bool as 0/255; float
      as a float file (0..1 or 0..255);
    - a torch tensor: (C, H, W) (torchvision's convention: C = 1, 3 or 4) or (H, W), values as
      for a NumPy array.
    So a 16-bit PNG gives the same pixels from its path, its PIL image or its array.
    """
    if isinstance(image, str | os.PathLike):
        return read_image(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        a = _to_rgb(image, Path(f"<PIL {image.mode} image>"))
    else:
        a = _array_to_rgb(image)
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"image has no pixels: shape {a.shape}")
    if max_pixels is not None and a.shape[0] * a.shape[1] > max_pixels:
        raise ImageError(f"image of {a.shape[1]} x {a.shape[0]} pixels is over the limit of "
                         f"{max_pixels:,}: pass a larger max_pixels (or None), or downscale "
                         f"it")  # fmt: skip
    return a


def _array_to_rgb(image) -> np.ndarray:
    what = "tensor" if hasattr(image, "detach") else "array"
    if what == "tensor":
        t = image.detach().cpu()
        if t.dim() == 3:
            if t.shape[0] not in (1, 3, 4):
                raise ImageError(f"image tensor of shape {tuple(t.shape)}: tensors are (C, H, W) "
                                 f"with C = 1, 3 or 4, or (H, W)")  # fmt: skip
            t = t.permute(1, 2, 0)
        image = t.numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"image {what} of shape {a.shape}: expected (H, W), (H, W, 3) or (H, W, "
                         f"4) for arrays, (C, H, W) for tensors")  # fmt: skip
    src = Path(f"<{a.dtype} {what}>")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"image {what} ({a.dtype}) has values {a.min()}..{a.max()}, outside "
                             f"0..255 and 0..65535: rescale it to uint8")  # fmt: skip
        a = _sixteen_to_eight(a)
    elif a.dtype.kind == "f":
        a = _float_to_eight(a.astype(np.float64), src)
    elif a.dtype != np.uint8:
        raise ImageError(f"image {what} of dtype {a.dtype}: expected uint8, uint16, bool or float")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:  # RGBA: onto black, as read_image does
        alpha = a[..., 3:].astype(np.uint16)
        return ((a[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    data: bytes | None = None,
) -> np.ndarray:
    """The image at `path` as uint8 RGB (H, W, 3), upright (EXIF applied); see the module doc.

    `max_pixels`: refuse images with more pixels than this (None: no limit of ours).
    `data`: the file's bytes, already in memory (an upload: nothing is read from disk, and
    `path` only names it in messages).
    """
    p = Path(path)
    with _open(p, max_pixels, "image", data) as im:
        a = _to_rgb(im, p)
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, (p, a.dtype, a.shape)
    return a


def _as_palette(palette) -> np.ndarray:
    """(n, 3) uint8 palette from None (VOC's 256 colours), an (n, 3) array or a flat list."""
    if palette is None:
        return voc_palette(256)
    a = np.asarray(palette)
    if a.ndim == 1 and a.size % 3 == 0:
        a = a.reshape(-1, 3)
    if a.ndim != 2 or a.shape[1] != 3 or not 1 <= len(a) <= 256:
        raise ValueError(f"a palette is 1..256 RGB colours, (n, 3); got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"palette colours must be 0..255; got {a.min()}..{a.max()}")
    return a.astype(np.uint8)


def _rgb_to_indices(rgb: np.ndarray, palette: np.ndarray, p: Path) -> np.ndarray:
    """Colours -> palette indices (the first index of a repeated colour); unknown ones raise."""
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pkeys = (palette[:, 0].astype(np.int32) << 16) | (palette[:, 1].astype(np.int32) << 8)
    pkeys |= palette[:, 2]
    uniq_p, first = np.unique(pkeys, return_index=True)  # sorted colours, first index of each
    pos = np.searchsorted(uniq_p, keys).clip(0, len(uniq_p) - 1)
    known = uniq_p[pos] == keys
    if not known.all():
        bad, where = np.unique(keys[~known], return_index=True)
        rows, cols = np.nonzero(~known)
        shown = [
            f"({k >> 16}, {(k >> 8) & 255}, {k & 255}) at row {rows[i]}, col {cols[i]}"
            for k, i in zip(bad[:5], where[:5], strict=True)
        ]
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        hint = (
            " JPEG compression changes colours: save masks as PNG."
            if p.suffix.lower() in (".jpg", ".jpeg")
            else ""
        )
        raise ImageError(
            f"mask {p}: {len(bad)} colour(s) are not in the palette of {len(palette)} colours: "
            f"{'; '.join(shown)}{more}. Colour masks must use the palette's exact colours "
            f"(default: PASCAL VOC's); pass the right palette, or save masks as palette/"
            f"single-channel PNGs of class indices.{hint}"
        )
    return first[pos].astype(np.uint8)


def _mask_values(im: Image.Image, palette, p: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        return np.array(im.convert("P") if mode == "PA" else im)
    if mode in ("L", "LA"):
        return np.array(im.getchannel(0))
    if mode == "1":
        return np.array(im.convert("L")) // 255
    if mode in ("RGB", "RGBA", "RGBX"):  # an alpha channel is ignored
        return _rgb_to_indices(np.array(im.convert("RGB")), _as_palette(palette), p)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        a = np.array(im)
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageError(
                f"mask {p} ({mode}) has values {a.min()}..{a.max()}, which do not fit in 0..255; "
                f"class indices must be 0..254 (255 = ignore): save it as an 8-bit PNG"
            )
        return a.astype(np.uint8)
    raise ImageError(
        f"mask {p} has pixel mode {mode!r}; a mask must be a palette, single-channel (8-bit) or "
        f"RGB PNG of class indices/colours: convert it"
    )


def read_mask(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    ignore_index: int = 255,
    palette=None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The class indices in the mask at `path`, uint8 (H, W).

    Palette PNG (VOC): its indices; 8/16-bit single channel: its values; RGB(A): each colour's
    index in `palette` ((n, 3) colours; default VOC's 256, so (224, 224, 192) -> 255), the alpha
    channel ignored. With `num_classes`, any value >= num_classes other than `ignore_index`
    raises ImageError naming the values and their pixel counts.
    """
    p = Path(path)
    with _open(p, max_pixels, "mask") as im:
        labels = _mask_values(im, palette, p)
    if num_classes is not None:
        check_labels(labels, num_classes, ignore_index=ignore_index, source=str(p))
    return labels.astype(np.uint8, copy=False)


def check_labels(
    labels: np.ndarray, num_classes: int, *, ignore_index: int = 255, source: str = "mask"
) -> None:
    """Raise ImageError if `labels` holds values >= num_classes other than `ignore_index`."""
    values, counts = np.unique(labels, return_counts=True)
    bad = (values >= num_classes) & (values != ignore_index)
    if bad.any():
        listed = ", ".join(f"{v} ({c} px)" for v, c in zip(values[bad], counts[bad], strict=True))
        raise ImageError(
            f"{source}: values {listed} are not classes: with num_classes={num_classes} labels "
            f"must be 0..{num_classes - 1} or {ignore_index} (ignore). Fix the mask, or raise "
            f"num_classes (for a folder data set: add lines to classes.txt)"
        )


def _labels_array(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.ndim != 2:
        raise ValueError(f"labels must be (H, W) class indices; got shape {a.shape}")
    if a.dtype.kind not in "uib":
        raise ValueError(f"labels must be integers; got dtype {a.dtype}")
    return a


def colorize(labels, palette=None) -> np.ndarray:
    """Class indices (H, W) -> uint8 RGB (H, W, 3) in `palette`'s colours (default VOC's)."""
    a = _labels_array(labels)
    pal = _as_palette(palette)
    if a.size and (a.min() < 0 or a.max() >= len(pal)):
        raise ValueError(
            f"labels {a.min()}..{a.max()} do not index a palette of {len(pal)} colours"
        )
    return pal[a.astype(np.intp)]


def write_mask(path: str | os.PathLike, labels, palette=None) -> None:
    """Save class indices (H, W) 0..255 as a palette PNG (VOC colours by default), atomically.

    `read_mask(path)` gives back exactly `labels` (as uint8).
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ImageError(f"mask {p}: masks are written as PNG (lossless); name it *.png")
    png = mask_png(labels, palette, source=f"mask {p}")
    atomic_write(p, lambda f: f.write(png), what="mask")


def mask_png(labels, palette=None, *, source: str = "mask") -> bytes:
    """The bytes `write_mask` writes: class indices (H, W) 0..255 as a palette PNG."""
    a = _labels_array(labels)
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ImageError(
            f"{source}: labels {a.min()}..{a.max()} do not fit in a palette PNG (0..255)"
        )
    pal = np.zeros((256, 3), dtype=np.uint8)
    given = _as_palette(palette)
    pal[: len(given)] = given
    im = Image.fromarray(a.astype(np.uint8))  # mode L; putpalette makes it P
    im.putpalette(pal.tobytes())
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return buffer.getvalue()
