"""read_image / read_mask / write_mask: every pixel mode, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fcnseg.categories import voc_palette
from fcnseg.data import ImageError, colorize, read_image, read_mask, write_mask

VOC_EXAMPLES = Path(
    "/usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc"
)


def _real_jpeg() -> Path:
    p = VOC_EXAMPLES / "JPEGImages" / "2011_000003.jpg"
    if not p.is_file():
        pytest.fail(f"{p} is missing: apt-get install labelme-examples (real VOC photos)")
    return p


def _raises(path: Path, fn=read_image, **kw) -> str:
    with pytest.raises(ImageError) as e:
        fn(path, **kw)
    msg = str(e.value)
    assert path.name in msg, msg
    return msg


# --------------------------------------------------------------------------- pixel modes


def test_rgb_jpeg_is_uint8_hw3():
    a = read_image(_real_jpeg())
    assert a.dtype == np.uint8 and a.shape == (338, 500, 3)


def test_grayscale_repeated_into_three_channels(tmp_path):
    g = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(g).save(tmp_path / "g.png")
    a = read_image(tmp_path / "g.png")
    assert a.shape == (6, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], g)


def test_one_bit_is_black_and_white(tmp_path):
    Image.fromarray(np.array([[0, 1], [1, 0]], bool)).convert("1").save(tmp_path / "b.png")
    a = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(a[..., 0], [[0, 255], [255, 0]])


def test_alpha_is_composited_onto_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 0], [128, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = read_image(tmp_path / "rgba.png")
    np.testing.assert_array_equal(a[0, 0], (200, 100, 50))  # opaque: unchanged
    np.testing.assert_array_equal(a[0, 1], (0, 0, 0))  # transparent: black
    np.testing.assert_array_equal(a[1, 0], (100, 50, 25))  # half: half way to black

    la = Image.fromarray(np.array([[[200, 128]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png")[0, 0], (100, 100, 100))


def test_palette_image_gives_its_colours(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx)
    im.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    a = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(a[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(a[1, 0], (0, 0, 255))

    im.info["transparency"] = 1  # index 1 transparent -> black
    im.save(tmp_path / "pt.png", transparency=1)
    a = read_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(a[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(a[0, 0], (10, 20, 30))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    a = read_image(tmp_path / "cmyk.jpg")
    assert a.shape == (16, 16, 3)
    assert np.abs(a.astype(int) - (255, 0, 0)).max() <= 3  # red


@pytest.mark.parametrize("kind", ["png", "tiff_big_endian", "int32_tiff"])
def test_sixteen_bit_is_rescaled_not_clipped(tmp_path, kind):
    v = np.array([[0, 257, 32768, 65535]], np.uint16)
    p = tmp_path / ("a.png" if kind == "png" else "a.tif")
    if kind == "png":
        Image.fromarray(v).save(p)  # 16-bit grayscale PNG
    elif kind == "tiff_big_endian":
        Image.fromarray(v.astype(">u2")).save(p)
    else:
        Image.fromarray(v.astype(np.int32)).save(p)
    assert Image.open(p).mode == {"png": "I;16", "tiff_big_endian": "I;16B"}.get(kind, "I")
    a = read_image(p)
    np.testing.assert_array_equal(a[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_sixteen_bit_rgb_png_keeps_the_high_byte(tmp_path):
    import zlib

    # a 1x2 RGB 16-bit PNG written by hand (Pillow writes no 16-bit RGB)
    rows = b"\x00" + np.array([65535, 32768, 0, 0, 0, 65535], ">u2").tobytes()

    def chunk(tag, data):
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
    (tmp_path / "rgb16.png").write_bytes(png + chunk(b"IEND", b""))
    a = read_image(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(a[0], [[255, 128, 0], [0, 0, 255]])


def test_float_image(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif")[0, :, 0], [0, 128, 255])
    Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32)).save(tmp_path / "g.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "g.tif")[0, :, 0], [0, 100, 255])
    Image.fromarray(np.array([[-3.0, 1000.0]], np.float32)).save(tmp_path / "h.tif")
    assert "-3..1000" in _raises(tmp_path / "h.tif")


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40: left half red, right half blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    a = read_image(tmp_path / "rot.jpg")
    assert a.shape == (40, 20, 3)  # displayed upright: portrait
    top, bottom = a[5, 10], a[35, 10]
    # 6: rotate 90 clockwise to show (left -> top); 8: 90 counter-clockwise (left -> bottom)
    red, blue = (top, bottom) if orientation == 6 else (bottom, top)
    assert red[0] > 200 and red[2] < 50, red
    assert blue[2] > 200 and blue[0] < 50, blue


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    assert "no such file" in _raises(tmp_path / "nope.jpg")


def test_folder_is_not_a_file(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    assert "folder" in _raises(tmp_path / "dir.jpg")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "0 bytes" in _raises(tmp_path / "empty.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    msg = _raises(tmp_path / "notes.jpg")
    assert "not an image" in msg and "these are" in msg


def test_truncated_jpeg(tmp_path):
    data = _real_jpeg().read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _raises(tmp_path / "half.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(tmp_path):
    Image.open(_real_jpeg()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _raises(tmp_path / "half.png")
    assert "truncated or corrupt" in _raises(tmp_path / "half.png", fn=read_mask)


def test_corrupt_png_checksum(tmp_path):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    i = data.index(b"IDAT") + 6
    data[i] ^= 0xFF  # flip a byte of the compressed pixels
    (tmp_path / "bad.png").write_bytes(bytes(data))
    _raises(tmp_path / "bad.png")


def test_truncation_check_refuses_when_pillow_is_told_to_ignore_it(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert "LOAD_TRUNCATED_IMAGES" in _raises(tmp_path / "ok.png")


def test_pixel_limit_guard(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "big.png")
    msg = _raises(tmp_path / "big.png", max_pixels=4999)
    assert "100 x 50 = 5,000 pixels" in msg and "max_pixels" in msg
    assert read_image(tmp_path / "big.png", max_pixels=5000).shape == (50, 100, 3)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (50, 100, 3)
    _raises(tmp_path / "big.png", fn=read_mask, max_pixels=10)


def test_pillows_own_bomb_limits_are_replaced_or_explained(tmp_path, monkeypatch):
    import warnings

    Image.new("L", (40, 40)).save(tmp_path / "warn.png")  # 1,600 px: Pillow would warn
    Image.new("L", (50, 50)).save(tmp_path / "refuse.png")  # 2,500 px: Pillow refuses
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our max_pixels decides, without Pillow's warning
        assert read_image(tmp_path / "warn.png", max_pixels=None).shape == (40, 40, 3)
    assert "MAX_IMAGE_PIXELS" in _raises(tmp_path / "refuse.png", max_pixels=None)


# --------------------------------------------------------------------------- masks


def _labels(h=7, w=9, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 21, (h, w)).astype(np.uint8)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = 255  # VOC-style ignore border
    return m


def test_write_mask_round_trips_exactly(tmp_path):
    m = _labels()
    write_mask(tmp_path / "m.png", m)
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "P"
    assert im.getpalette()[: 3 * 256] == voc_palette(256).ravel().tolist()
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", num_classes=21), m)
    write_mask(tmp_path / "t.png", torch.from_numpy(m.astype(np.int64)))  # tensors too
    np.testing.assert_array_equal(read_mask(tmp_path / "t.png"), m)
    assert not list(tmp_path.glob("*.part"))


def test_write_mask_refuses_jpeg_and_out_of_range(tmp_path):
    with pytest.raises(ImageError, match=r"m\.jpg"):
        write_mask(tmp_path / "m.jpg", _labels())
    with pytest.raises(ImageError, match="256"):
        write_mask(tmp_path / "m.png", np.full((2, 2), 256))


def test_single_channel_mask(tmp_path):
    m = _labels()
    Image.fromarray(m).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png", num_classes=21), m)


def test_all_ignore_mask(tmp_path):
    write_mask(tmp_path / "ign.png", np.full((5, 6), 255, np.uint8))
    m = read_mask(tmp_path / "ign.png", num_classes=21)
    assert (m == 255).all() and m.shape == (5, 6)


def test_rgb_voc_mask_maps_back_to_indices(tmp_path):
    m = _labels()
    rgb = colorize(m)
    np.testing.assert_array_equal(rgb[0, 0], (224, 224, 192))  # VOC's boundary colour
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", num_classes=21), m)
    rgba = np.concatenate([rgb, np.full((*m.shape, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), m)


def test_rgb_mask_with_own_palette(tmp_path):
    pal = np.array([[0, 0, 0], [255, 255, 255], [9, 9, 9]], np.uint8)
    m = np.array([[0, 1], [2, 2]], np.uint8)
    Image.fromarray(pal[m]).save(tmp_path / "own.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "own.png", palette=pal), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "own.png", palette=pal.ravel()), m)


def test_unknown_colours_are_listed_with_a_position(tmp_path):
    rgb = colorize(_labels())
    rgb[2, 3] = (1, 2, 3)
    rgb[4, 5] = (250, 1, 1)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    msg = _raises(tmp_path / "odd.png", fn=read_mask)
    assert "2 colour(s)" in msg
    assert "(1, 2, 3) at row 2, col 3" in msg and "(250, 1, 1) at row 4, col 5" in msg


def test_many_unknown_colours_show_five(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :, 0] = [1, 2, 3, 4]
    rgb[1, :, 0] = [5, 6, 7, 9]
    Image.fromarray(rgb).save(tmp_path / "many.png")
    msg = _raises(tmp_path / "many.png", fn=read_mask)
    assert "8 colour(s)" in msg and "and 3 more" in msg


def test_jpeg_mask_hint(tmp_path):
    rgb = colorize(_labels(32, 32))
    Image.fromarray(rgb).save(tmp_path / "lossy.jpg", quality=60)
    assert "save masks as PNG" in _raises(tmp_path / "lossy.jpg", fn=read_mask)


def test_out_of_range_values_are_named_with_counts(tmp_path):
    m = _labels()
    m[1, 1:4] = 30
    m[2, 2] = 21
    write_mask(tmp_path / "oor.png", m)
    msg = _raises(tmp_path / "oor.png", fn=read_mask, num_classes=21)
    assert "21 (1 px)" in msg and "30 (3 px)" in msg
    values = msg.split(str(tmp_path / "oor.png"))[1].split("are not classes")[0]
    assert "255" not in values  # ignore is not reported (the path may hold "pytest-255")
    np.testing.assert_array_equal(read_mask(tmp_path / "oor.png", num_classes=31), m)
    write_mask(tmp_path / "ign.png", np.where(m == 255, 100, m))
    read_mask(tmp_path / "ign.png", num_classes=31, ignore_index=100)  # a custom ignore value
    with pytest.raises(ImageError, match="100 \\(28 px\\)"):
        read_mask(tmp_path / "ign.png", num_classes=31)


def test_sixteen_bit_mask_only_when_values_fit(tmp_path):
    m = _labels().astype(np.uint16)
    Image.fromarray(m).save(tmp_path / "fits.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "fits.png", num_classes=21), m)
    m[3, 3] = 1000
    Image.fromarray(m).save(tmp_path / "wide.png")
    assert "0..1000" in _raises(tmp_path / "wide.png", fn=read_mask)


def test_float_mask_is_refused(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    assert "'F'" in _raises(tmp_path / "f.tif", fn=read_mask)


def test_colorize_checks_range():
    assert colorize(np.array([[0, 15]])).tolist() == [[[0, 0, 0], [192, 128, 128]]]
    with pytest.raises(ValueError, match="palette of 3"):
        colorize(np.array([[3]]), palette=np.zeros((3, 3), np.uint8))
