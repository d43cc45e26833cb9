"""HHA from depth on scenes of known geometry, ray-cast through a pinhole camera
(fcnseg.data.depth_scenes: a floor seen from a pitched and rolled camera, a wall, a box on the
floor). Each pixel knows its true height above the floor and its true angle to gravity (0 for
the floor and the box top, 90 for the wall and the box sides), so every channel is checked
against the truth away from depth edges (where a fit window straddles two surfaces).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnseg.data import hha
from fcnseg.data import hha_planes as planes
from fcnseg.data.depth_scenes import interior, render_scene
from fcnseg.data.hha import CAMERAS, estimate_geometry, hha_file, parse_intrinsics, read_depth
from fcnseg.data.io import ImageError

K = CAMERAS["nyud"]  # 640 x 480


def render(*, size=(240, 320), intrinsics=None, **scene):
    """(depth, true height, true angle, true up, surface) of a scene seen at half NYUD size."""
    k = intrinsics or (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2)
    s = render_scene(k, size, **scene)
    return s.depth, s.height, s.angle, s.up, s.surface


def _degrees(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b), -1, 1))))


SCENES = {
    "floor, tilted camera": dict(pitch=35.0, roll=8.0, wall=50.0),
    "wall and floor": dict(pitch=15.0, roll=-5.0, wall=3.0),
    "box on the floor": dict(
        pitch=25.0, roll=3.0, wall=5.0, box=((-0.4, 0.5), (0, 0.6), (2.2, 2.9))
    ),
}


@pytest.mark.parametrize("name", list(SCENES))
def test_gravity_height_and_angle_match_the_scene(name):
    depth, height, angle, up, surface = render(**SCENES[name])
    g = estimate_geometry(depth, (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2))
    assert _degrees(g.up, up) < 2.0  # the bound; exact planes give ~0.01 degrees
    assert g.up @ up > 0  # up, not down
    inner = interior(surface)
    # angle to gravity within 2 degrees on every surface's interior
    assert np.abs(g.angle - angle)[inner].max() < 2.0
    # height above the lowest point (the floor, 0) within 2 cm
    assert np.abs(g.height - height)[inner].max() < 0.02
    image = hha(depth, (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2))
    assert image.dtype == np.uint8 and image.shape == (*depth.shape, 3)
    # the encoded channels: height in cm (clipped at 255), angle + 38, disparity 31000 / cm
    want_h = np.clip(np.rint(height * 100), 0, 255)
    assert np.abs(image[..., 1].astype(int) - want_h)[inner].max() <= 2
    assert np.abs(image[..., 2].astype(int) - (angle + 38))[inner].max() <= 2
    want_d = np.clip(np.rint(31000 / np.maximum(depth * 100, 100)), 0, 255)
    assert np.abs(image[..., 0].astype(int) - want_d).max() <= 1  # everywhere: no fit involved
    for s, a in ((1, 38), (2, 128), (3, 38), (4, 128)):  # every surface type, as the paper shows
        if (surface == s).any():
            assert np.median(image[..., 2][inner & (surface == s)]) == a


def test_gravity_survives_noise_and_a_large_tilt():
    depth, _, _, up, _ = render(
        pitch=40.0, roll=-12.0, wall=4.0, box=((-0.3, 0.3), (0, 0.4), (2.5, 3))
    )
    rng = np.random.default_rng(0)
    noisy = depth * (1 + rng.normal(0, 0.003, depth.shape))  # 0.3 % depth noise
    g = estimate_geometry(noisy, (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2))
    assert _degrees(g.up, up) < 2.0


def test_missing_depth_is_filled_and_never_nan():
    depth, _, _, up, surface = render(**SCENES["box on the floor"])
    holes = depth.copy()
    holes[100:130, 50:90] = 0  # a hole on the floor
    holes[:, :3] = 0  # a missing border, as the Kinect leaves
    holes[5, 200] = np.nan  # not finite counts as missing too
    k = (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2)
    g = estimate_geometry(holes, k)
    assert g.missing.sum() == 30 * 40 + 240 * 3 + 1
    assert _degrees(g.up, up) < 2.0
    image = hha(holes, k)
    full = hha(depth, k)
    assert np.isfinite(g.height).all() and np.isfinite(g.angle).all()
    # a filled pixel takes its nearest valid neighbour's depth: on the flat floor, nearly the same
    inner = interior(surface)[100:130, 50:90]
    diff = np.abs(image[100:130, 50:90].astype(int) - full[100:130, 50:90].astype(int))
    assert diff[..., 2][inner].max() <= 2  # the floor's angle survives the hole
    assert diff[..., 0].max() <= 20  # disparity from the nearest valid pixel


def test_no_point_0_9_m_below_the_camera_puts_ground_1_3_m_below_it():
    # camera 0.5 m above the floor: no point 0.9 m below it, so Gupta's rule applies
    depth, *_ = render(pitch=0.0, wall=2.0, height=0.5, size=(60, 80))
    k = (K[0] / 8, K[1] / 8, K[2] / 8, K[3] / 8)
    g = estimate_geometry(depth, k)
    along = g.points @ g.up
    np.testing.assert_allclose(g.height, along + 1.3)


def test_bad_inputs_raise_clear_errors():
    k = (K[0] / 8, K[1] / 8, K[2] / 8, K[3] / 8)
    with pytest.raises(ValueError, match="no valid pixel"):
        hha(np.zeros((10, 10)), k)
    with pytest.raises(ValueError, match="negative"):
        hha(-np.ones((10, 10)), k)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        hha(np.ones((2, 10, 10)), k)
    with pytest.raises(ValueError, match="four numbers"):
        hha(np.ones((10, 10)), (1, 2, 3))
    with pytest.raises(ValueError, match="> 0"):
        hha(np.ones((10, 10)), (0, 1, 1, 1))


def test_intrinsics_parsing():
    assert parse_intrinsics(None, "nyud") == CAMERAS["nyud"]
    assert parse_intrinsics("1,2,3,4", None) == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="one of the two"):
        parse_intrinsics(None, None)
    with pytest.raises(ValueError, match="known cameras are nyud"):
        parse_intrinsics(None, "kinect2")
    with pytest.raises(ValueError, match="four numbers"):
        parse_intrinsics("1,2,x", None)


def _save_depth_png(path, depth_m):
    Image.fromarray(np.rint(depth_m * 1000).astype(np.uint16)).save(path)  # mode I;16


def test_hha_file_reads_16_bit_millimetres_and_writes_png(tmp_path):
    depth, *_ = render(**SCENES["wall and floor"])
    src = tmp_path / "d.png"
    _save_depth_png(src, depth)
    assert read_depth(src).dtype == np.uint16
    np.testing.assert_array_equal(read_depth(src), np.rint(depth * 1000))
    k = (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2)
    out = tmp_path / "hha.png"
    image = hha_file(src, out, k)
    back = np.array(Image.open(out))
    np.testing.assert_array_equal(back, image)
    # millimetre quantisation changes almost nothing
    assert np.abs(image.astype(int) - hha(depth, k).astype(int)).max() <= 2
    with pytest.raises(FileExistsError):
        hha_file(src, out, k)
    hha_file(src, out, k, overwrite=True)
    with pytest.raises(FileExistsError):
        hha_file(src, src, k, overwrite=True)  # never the input
    assert not list(tmp_path.glob("*.part"))


def test_read_depth_refuses_eight_bit_pictures(tmp_path):
    Image.new("L", (4, 3), 7).save(tmp_path / "d8.png")
    with pytest.raises(ImageError, match="16-bit single-channel"):
        read_depth(tmp_path / "d8.png")
    with pytest.raises(ImageError, match="no such file"):
        read_depth(tmp_path / "none.png")


def test_cli_hha_writes_once_and_refuses_to_overwrite(tmp_path, capsys):
    from fcnseg.cli import main

    depth, *_ = render(**SCENES["box on the floor"])
    src, out = tmp_path / "depth.png", tmp_path / "hha.png"
    _save_depth_png(src, depth)
    k = ",".join(str(v / 2) for v in K)
    assert main(["hha", str(src), "--intrinsics", k, "-o", str(out)]) == 0
    first = np.array(Image.open(out))
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert main(["hha", str(src), "--intrinsics", k, "-o", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["hha", str(src), "--camera", "nyud", "-o", str(out), "--overwrite"]) == 0
    assert not np.array_equal(np.array(Image.open(out)), first)  # another camera, other HHA
    assert main(["hha", str(src), "-o", str(tmp_path / "x.png")]) == 1
    assert "--intrinsics fx,fy,cx,cy" in capsys.readouterr().err
    assert main(["hha", str(src), "--camera", "nyud", "--depth-scale", "0", "-o",
                 str(tmp_path / "y.png")]) == 1  # fmt: skip
    assert "--depth-scale must be > 0" in capsys.readouterr().err


def test_renderer_depth_is_exact():
    # a level camera 1 m above the floor, a wall 3 m ahead: wall depth is 3 everywhere; a floor
    # pixel in row v lies where the ray meets y = 0: z = 1 m * fy / (v - cy)
    k = (100.0, 100.0, 40.0, 30.0)
    s = render_scene(k, (60, 80), pitch=0.0, height=1.0, wall=3.0)
    assert (s.depth[s.surface == 2] == 3.0).all()
    v = np.nonzero((s.surface == 1).any(axis=1))[0]
    np.testing.assert_allclose(s.depth[v, 0], 100.0 / (v - 30.0))
    np.testing.assert_allclose(s.up, [0, -1, 0], atol=1e-12)


def test_real_depth_middlebury_motorcycle():
    """A real depth map: Middlebury 2014's Motorcycle (structured-light ground truth), as the
    scikit-image wheel ships it (skimage.data.stereo_motorcycle, 741 x 500, calibration in its
    docstring). A motorcycle on a concrete floor before shelves. The floor is level, so its own
    plane (fitted to three floor patches) is the true up; the shelves' back wall is vertical."""
    from skimage import data  # a dependency of fcnseg (the demo's cat photo)

    _, _, disp = data.stereo_motorcycle()
    f, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001
    known = np.isfinite(disp)  # inf / NaN: no ground truth (7 % of pixels)
    depth = np.where(known, f * baseline / (np.where(known, disp, 0) + doffs), 0.0)
    g = estimate_geometry(depth, (f, f, cx, cy))
    floor = np.zeros(depth.shape, bool)
    floor[440:500, 0:110] = floor[460:500, 250:480] = floor[420:500, 690:741] = True
    floor &= known
    pts = g.points[floor] - g.points[floor].mean(0)
    normal = np.linalg.svd(pts, full_matrices=False)[2][-1]
    assert _degrees(g.up, normal) < 3.0  # measured 1.1
    image = hha(depth, (f, f, cx, cy))
    assert image.shape == (500, 741, 3) and image.dtype == np.uint8
    assert abs(np.median(image[..., 2][floor]) - 38) <= 3  # floor: angle 0 (+ 38)
    assert np.median(image[..., 1][floor]) <= 3  # floor: height ~0 cm
    wall = np.zeros(depth.shape, bool)
    wall[0:60, 380:700] = True
    assert abs(np.median(image[..., 2][wall & known]) - 128) <= 4  # wall: angle 90 (+ 38)


# --- issue 22 item 9: banded HHA (memory, time), sensor outliers --------------------------------


def _degraded(depth, seed=0):
    """0.3 % noise, millimetre steps, 5 % of pixels missing and a missing blob (Kinect-like)."""
    rng = np.random.default_rng(seed)
    d = np.rint(depth * (1 + rng.normal(0, 0.003, depth.shape)) * 1000) / 1000
    d[rng.random(d.shape) < 0.05] = 0.0
    d[10:22, 30:52] = 0.0
    return d


@pytest.mark.parametrize("name", list(SCENES))
@pytest.mark.parametrize("degrade", [False, True], ids=["exact", "noise+holes"])
def test_banded_hha_equals_the_whole_frame_version(name, degrade):
    """tests/hha_reference.py is fcnseg's HHA before the banded rewrite: the same within 1 level
    (float rounding) on every channel, and identical almost everywhere."""
    import hha_reference

    k = (K[0] / 4, K[1] / 4, K[2] / 4, K[3] / 4)
    depth = render_scene(k, (120, 160), **SCENES[name]).depth
    if degrade:
        depth = _degraded(depth)
    want = hha_reference.hha(depth, k).astype(int)
    got = hha(depth, k).astype(int)
    assert np.abs(got - want).max() <= 1
    assert (got == want).all(-1).mean() > 0.995


def test_hha_does_not_depend_on_bands_or_threads(monkeypatch):
    k = (K[0] / 4, K[1] / 4, K[2] / 4, K[3] / 4)
    depth = _degraded(render_scene(k, (120, 160), **SCENES["box on the floor"]).depth)
    monkeypatch.setattr(planes, "_BAND_PIXELS", (10**9, 10**9))  # the frame in one band
    one = hha(depth, k)
    monkeypatch.setattr(planes, "_BAND_PIXELS", (1, 1))  # bands of 2 rows (the stride)
    monkeypatch.setattr(planes, "_THREADED_PIXELS", 0)  # on two threads
    assert len(list(planes._bands(120, 160, 2))) == 60
    np.testing.assert_array_equal(hha(depth, k), one)


def test_hha_peak_memory_is_under_64_bytes_per_pixel():
    """The whole-frame version took ~650 bytes per pixel (a 6000 x 6000 frame: MemoryError);
    benchmarks/hha.py --memory measures the big frames' resident size."""
    import tracemalloc

    depth = _degraded(render_scene(K, (480, 640), **SCENES["box on the floor"]).depth)
    hha(depth[:60, :80].copy(), (K[0] / 8, K[1] / 8, K[2] / 8, K[3] / 8))  # imports
    tracemalloc.start()
    try:
        image = hha(depth, K)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.shape == (480, 640, 3)
    assert peak / depth.size < 64, f"{peak / depth.size:.0f} bytes per pixel"


def test_sensor_outliers_do_not_saturate_the_height_channel():
    """20 pixels read at 79 m along rays that point at the floor lie ~25 m below it. Gupta's
    ground (the lowest point) would put every real pixel 25 m up: height 255 everywhere. Points
    more than 0.5 m below the 1st percentile, fewer than 1 % of the pixels, are not the ground."""
    depth, height, _, _, surface = render(**SCENES["box on the floor"])
    k = (K[0] / 2, K[1] / 2, K[2] / 2, K[3] / 2)
    clean = hha(depth, k)
    spiky = depth.copy()
    spiky[-1, 100:120] = 79.0
    image = hha(spiky, k)
    away = np.ones(depth.shape, bool)
    away[-1, 100:120] = False
    # the same heights (the outliers' own bad normals move the gravity estimate a hair)
    assert np.abs(image[..., 1].astype(int) - clean[..., 1])[away].max() <= 1
    assert (image[-1, 100:120, 1] == 0).all()  # the outliers themselves: below the ground
    inner = interior(surface)
    want = np.clip(np.rint(height * 100), 0, 255)
    assert np.abs(image[..., 1].astype(int) - want)[inner & away].max() <= 2
    assert (image[..., 1] == 255).mean() < 0.5  # the wall above 2.55 m only


def test_ground_rule_ignores_fewer_than_1_percent_far_below():
    from fcnseg.data.hha import _ground

    rng = np.random.default_rng(0)
    floor = -1.4 + rng.normal(0, 0.005, 10_000)  # 1.4 m below the camera
    valid = np.ones(10_000, bool)
    assert _ground(floor, valid) == floor.min()  # no outlier: Gupta's lowest point
    few = floor.copy()
    few[:50] = -25.0  # 0.5 %: outliers
    assert _ground(few, valid) == floor[50:].min()
    many = floor.copy()
    many[:300] = -3.0  # 3 %: a lower floor (stairs down), the ground as in Gupta's code
    assert _ground(many, valid) == -3.0
    near = floor.copy()
    near[:50] = -1.8  # 0.4 m below the rest: within 0.5 m, kept
    assert _ground(near, valid) == -1.8
    assert _ground(floor, valid & (floor > -1.4)) >= -1.4  # only valid pixels count
    assert _ground(np.full(10, -0.5), np.ones(10, bool)) == -1.3  # Gupta: no floor in view
