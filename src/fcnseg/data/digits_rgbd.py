"""RGB-D digit scenes: the digit scenes in 3-D, with depth, HHA and a geometric second task.

A CPU-sized stand-in for NYUDv2 (RGB-D) and SIFT Flow (two tasks), so that the release's
nyud-fcn32s-* and siftflow-* nets train and score here in minutes (benchmarks/rgbd_digits.py).

Geometry (each scene drawn from its seed; world y up, metres; `fcnseg.data.depth_scenes`):
a pinhole camera (`intrinsics`: fx = fy = 0.9 size, centred) `height` 1.5-2.0 m above a
ground plane, pitched down 26-34 degrees and rolled -8..8 (so the ground is tilted in the
image), facing a wall 3.5-5 m away that fills the top of the picture. Digits lie on the
ground only, each a flat plate raised `lift` (0.10-0.35 m, its own) above it: a plate is the
back-projection of the digit's glyph onto the plane y = lift, so it keeps the glyph's shape in
the image, and its depth is the ground's depth there times (1 - lift / height). Plates are
drawn lowest first, so a higher (nearer) plate covers a lower one in colour, depth and labels.

Per pixel: colour as the digit scenes (a tinted digit over dark noise; the ground and the wall
each have their own dark colour); depth in millimetres as a 16-bit sensor stores it (rendered,
times 1 + N(0, `depth_noise`), rounded); HHA by `fcnseg.data.hha` from that stored depth (in
metres) and `intrinsics`; labels:

    sem   11 classes as the digit scenes: 0 background, 1 + digit on the plate (glyph > 0.5),
          255 on the glyph's anti-aliased rim (0.1 < glyph <= 0.5) where no plate is
    geo   3 classes GEO_CLASSES: 0 ground, 1 digit (a raised plate), 2 wall; no ignore. The rim
          is ground: the plate, and its depth, is exactly where the semantic label is a digit

Items are (image, target) in exactly the formats of `nyud:` and `siftflow:`:

    modality  color        uint8 (3, H, W), RGB
              hha          uint8 (3, H, W), HHA channels in file order
              depth        float32 (1, H, W), the stored values (millimetres; none missing)
              color-depth  float32 (4, H, W): R, G, B (0..255) then the stored depth
                           (`blank_color`: R, G, B all NYUDv2's mean colour, depth alone)
              color-hha    dict {"color": uint8 (3, H, W), "hha": uint8 (3, H, W)}
    task      sem          int64 (H, W), 11 classes (class_names = DIGIT_CLASSES)
              geo          int64 (H, W), 3 classes (class_names = GEO_CLASSES)
              both         dict {"sem": ..., "geo": ...}; head_classes names each head's classes

Item i of a split is a pure function of (seed, split, i and the options). All items are rendered
once per dataset (HHA too, ~40 ms per 64 x 64 image) and kept as arrays; datasets built with the
same options in one process share them (`_CACHE`, the last few), so a benchmark that trains six
nets on one data set renders it once. `scene(i)` gives one scene with its ground truth.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .depth_scenes import FLOOR, WALL, render_scene
from .digits import _SPLITS, DIGIT_CLASSES, DigitScenes, _overlap, _scaled_glyph
from .nyud import NYUD_MEANS

__all__ = ["GEO_CLASSES", "RGBD_MODALITIES", "RGBD_TASKS", "DigitScenesRGBD", "RGBDScene"]

GEO_CLASSES = ("ground", "digit", "wall")
GROUND, DIGIT, WALL_LABEL = 0, 1, 2
RGBD_MODALITIES = ("color", "hha", "depth", "color-depth", "color-hha")
RGBD_TASKS = ("sem", "geo", "both")
_NEEDS_HHA = ("hha", "color-hha")
# blank_color: every pixel NYUDv2's mean colour, which the nets' preprocessing maps to exactly 0
_MEAN_RGB = torch.tensor(NYUD_MEANS["color"][::-1], dtype=torch.float32).view(3, 1, 1)
_CACHE: OrderedDict = OrderedDict()  # options -> rendered arrays; the last _CACHE_SIZE
_CACHE_SIZE = 4


@dataclass
class RGBDScene:
    """One scene and its truth (all (H, W) unless said; metres and degrees)."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    depth: np.ndarray  # uint16 (H, W) millimetres as stored (noisy, rounded)
    sem: np.ndarray  # uint8: 0 background, 1..10 digits, 255 rim
    geo: np.ndarray  # uint8: GROUND, DIGIT, WALL_LABEL
    height: np.ndarray  # float64: true height above the ground (noise-free geometry)
    up: np.ndarray  # (3,) true up in camera coordinates (x right, y down, z forward)
    pose: dict  # camera height, pitch, roll, wall distance; lift of each plate


class DigitScenesRGBD(DigitScenes):
    """(image, target) pairs of RGB-D digit scenes; formats and geometry in the module doc.

    `modality` (RGBD_MODALITIES) and `task` (RGBD_TASKS) as the `nyud:` and `siftflow:`
    options; the other options as `DigitScenes` (digits per scene, their scale and overlap,
    bold, train_per_class) plus `lift` (range of plate heights, metres), `depth_noise`
    (relative sensor noise, 0 for exact depth) and `blank_color` (color-depth only: the colour
    channels hold NYUDv2's mean colour everywhere, which the release's preprocessing turns
    into zeros, so that the early-fusion net nyud-fcn32s-color-d sees depth alone).
    """

    head_classes: dict[str, tuple[str, ...]]

    def __init__(
        self,
        split: str = "train",
        n: int = 2000,
        *,
        size: int = 64,
        digits: tuple[int, int] = (1, 3),
        scale: tuple[float, float] = (1.3, 1.9),
        max_overlap: float = 0.1,
        bold: int = 0,
        train_per_class: int = 400,
        seed: int = 0,
        modality: str = "color",
        task: str = "sem",
        lift: tuple[float, float] = (0.1, 0.35),
        depth_noise: float = 0.002,
        blank_color: bool = False,
        transforms=None,
    ):
        if modality not in RGBD_MODALITIES:
            raise ValueError(f"digits-rgbd modality '{modality}' unknown: use one of "
                             f"{', '.join(RGBD_MODALITIES)}")  # fmt: skip
        if task not in RGBD_TASKS:
            raise ValueError(f"digits-rgbd task '{task}' unknown: use one of "
                             f"{', '.join(RGBD_TASKS)}")  # fmt: skip
        if not (0 < lift[0] <= lift[1] <= 1.0):
            raise ValueError(f"digits-rgbd lift must be a range within (0, 1] metres, got {lift}")
        if not 0 <= depth_noise <= 0.05:
            raise ValueError(f"digits-rgbd depth_noise must be in 0..0.05 (relative), got "
                             f"{depth_noise}")  # fmt: skip
        if blank_color and modality != "color-depth":
            raise ValueError(f"digits-rgbd blank_color is for modality color-depth (a depth-only "
                             f"run of the early-fusion net), not {modality}")  # fmt: skip
        if size < 32:
            raise ValueError(f"digits-rgbd size must be >= 32 pixels, got {size}")
        super().__init__(split, n, size=size, digits=digits, scale=scale, max_overlap=max_overlap,
                         bold=bold, train_per_class=train_per_class, seed=seed,
                         transforms=transforms)  # fmt: skip
        self.modality, self.task, self.blank_color = modality, task, bool(blank_color)
        self.lift, self.depth_noise = (float(lift[0]), float(lift[1])), float(depth_noise)
        f = 0.9 * size
        self.intrinsics = (f, f, (size - 1) / 2, (size - 1) / 2)
        heads = {"sem": tuple(DIGIT_CLASSES), "geo": GEO_CLASSES}
        self.head_classes = heads if task == "both" else {task: heads[task]}
        self.class_names = list(heads["geo" if task == "geo" else "sem"])
        self.num_classes = len(self.class_names)
        key = (split, n, size, tuple(digits), tuple(scale), max_overlap, bold, train_per_class,
               seed, self.lift, self.depth_noise)  # fmt: skip
        self._arrays = _cached(key, lambda: self._render_all())
        if modality in _NEEDS_HHA and "hha" not in self._arrays:
            self._arrays["hha"] = self._hha_all()

    # ------------------------------------------------------------------ items

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(f"scene {i} out of range (0..{self.n - 1})")
        a = self._arrays

        def chw(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

        m = self.modality
        if m == "color":
            image = chw(a["image"][i])
        elif m == "hha":
            image = chw(a["hha"][i])
        elif m == "color-hha":
            image = {"color": chw(a["image"][i]), "hha": chw(a["hha"][i])}
        else:
            depth = torch.from_numpy(a["depth"][i].astype(np.float32))[None]  # (1, H, W)
            color = _MEAN_RGB if self.blank_color else chw(a["image"][i]).float()
            image = depth if m == "depth" else torch.cat([color.expand(3, *depth.shape[1:]), depth])
        targets = {k: torch.from_numpy(a[k][i].astype(np.int64)) for k in self.head_classes}
        target = targets if self.task == "both" else targets[self.task]
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene i as the digit scenes give it: image uint8 (H, W, 3), semantic target uint8."""
        s = self.scene(i)
        return s.image, s.sem

    def hha_image(self, i: int) -> np.ndarray:
        """Scene i's HHA, uint8 (H, W, 3): from the stored depth, as every item's."""
        from .hha import hha

        return hha(self._arrays["depth"][i].astype(np.float64) / 1000.0, self.intrinsics)

    # ------------------------------------------------------------------ rendering

    def scene(self, i: int) -> RGBDScene:
        """Scene i with its truth; a pure function of (seed, split, i, options)."""
        if not 0 <= i < self.n:
            raise IndexError(f"scene {i} out of range (0..{self.n - 1})")
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], i, 3])
        s = self.size
        pose = {"height": rng.uniform(1.5, 2.0), "pitch": rng.uniform(26, 34),
                "roll": rng.uniform(-8, 8), "wall": rng.uniform(3.5, 5.0)}  # fmt: skip
        pose = {k: float(v) for k, v in pose.items()}
        g = render_scene(self.intrinsics, (s, s), pitch=pose["pitch"], roll=pose["roll"],
                         height=pose["height"], wall=pose["wall"])  # fmt: skip
        depth, height = g.depth.copy(), g.height.copy()
        geo = np.where(g.surface == WALL, WALL_LABEL, GROUND).astype(np.uint8)
        # where a whole glyph may go: the ground, 2 pixels clear of the wall
        from scipy.ndimage import binary_erosion

        room = binary_erosion(g.surface == FLOOR, iterations=2)
        canvas = np.zeros((s, s), np.float32)  # digit intensity in [0, 1]
        colour = np.zeros((s, s, 3), np.float32)
        sem = np.zeros((s, s), np.uint8)
        count = int(rng.integers(self.digits[0], self.digits[1] + 1))
        lifts = np.sort(rng.uniform(*self.lift, count))  # lowest first: nearer plates cover
        boxes, placed = [], []
        for lift in lifts:
            k = int(rng.integers(len(self.images)))
            glyph = _scaled_glyph(self.images[k], float(rng.uniform(*self.scale)))
            box = _place_on(room, glyph, boxes, self.max_overlap, rng)
            if box is None:  # no room left on this ground
                continue
            y, x, h, w = box
            boxes.append(box)
            placed.append(float(lift))
            region = (slice(y, y + h), slice(x, x + w))
            tint = rng.uniform(0.55, 1.0, 3).astype(np.float32)
            colour[region] = np.where(glyph[..., None] > canvas[region][..., None],
                                      tint, colour[region])  # fmt: skip
            canvas[region] = np.maximum(canvas[region], glyph)
            plate = glyph > 0.5
            label = sem[region]
            label[(glyph > 0.1) & ~plate & (label == 0)] = 255  # stroke rim: ignore
            label[plate] = 1 + self.labels[k]
            geo[region][plate] = DIGIT
            ground_depth = g.depth[region]  # the ground's, under the plate
            depth[region][plate] = ground_depth[plate] * (1 - lift / pose["height"])
            height[region][plate] = lift
        pose["lifts"] = placed
        ground_c, wall_c = rng.uniform(0.0, 0.25, (2, 3)).astype(np.float32)
        background = np.where((g.surface == WALL)[..., None], wall_c, ground_c)
        noise = rng.normal(0.0, 0.03, (s, s, 3)).astype(np.float32)
        a = canvas[..., None]
        image = ((1 - a) * background + a * colour + noise).clip(0, 1)
        sensed = depth * (1 + rng.normal(0.0, self.depth_noise, depth.shape)) * 1000.0
        stored = np.clip(np.rint(sensed), 1, 65535).astype(np.uint16)
        image = (image * 255).round().astype(np.uint8)
        return RGBDScene(image, stored, sem, geo, height, g.up, pose)

    def _render_all(self) -> dict[str, np.ndarray]:
        scenes = [self.scene(i) for i in range(self.n)]
        return {k: np.stack([getattr(sc, k) for sc in scenes])
                for k in ("image", "depth", "sem", "geo")}  # fmt: skip

    def _hha_all(self) -> np.ndarray:
        return np.stack([self.hha_image(i) for i in range(self.n)])


def _cached(key, make) -> dict:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = _CACHE[key] = make()
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def _place_on(room: np.ndarray, glyph: np.ndarray, boxes, max_overlap: float, rng):
    """A random (y, x, h, w) where every stroke pixel of `glyph` lies in `room` and the box
    overlaps each earlier box by <= max_overlap of the smaller's area; None after 30 tries."""
    h, w = glyph.shape
    size_y, size_x = room.shape
    rows = np.nonzero(room.any(axis=1))[0]
    if len(rows) == 0 or h > size_y or w > size_x:
        return None
    strokes = glyph > 0.1
    for _ in range(30):
        y = int(rng.integers(rows[0], size_y - h + 1)) if rows[0] <= size_y - h else None
        if y is None:
            return None
        x = int(rng.integers(size_x - w + 1))
        if not room[y : y + h, x : x + w][strokes].all():
            continue
        if all(_overlap((y, x, h, w), b) <= max_overlap for b in boxes):
            return y, x, h, w
    return None
