"""Paired transforms keep labels on their pixels; pad_collate pads images and targets right.

The image encodes its own mask: image = label * 10 in all three channels. After any geometric
transform, every target pixel that is not ignored must still read image / 10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from fcnseg.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    ToTensor,
    pad_collate,
)
from fcnseg.weights import CAFFE_BGR, IMAGENET_RGB

IGNORE = 255


def _scene(seed: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, full target, interior target): blocky labels 0..20 with some ignore pixels.

    The interior target also ignores every pixel whose 3x3 neighbourhood holds more than one
    value: a bilinear sample there may blend two labels, so only nearest-exact geometry is
    checkable; elsewhere bilinear and nearest must agree exactly.
    """
    rng = np.random.default_rng(seed)
    block = int(rng.integers(1, 6))
    coarse = rng.integers(0, 21, (h // block + 1, w // block + 1))
    coarse[rng.random(coarse.shape) < 0.1] = IGNORE
    mask = np.kron(coarse, np.ones((block, block), np.int64))[:h, :w]
    image = np.where(mask == IGNORE, 255, mask * 10).astype(np.uint8)  # 255: no label's value
    lo = ndimage.minimum_filter(mask, size=3, mode="nearest")
    hi = ndimage.maximum_filter(mask, size=3, mode="nearest")
    interior = np.where(lo == hi, mask, IGNORE)
    img = torch.from_numpy(np.repeat(image[None], 3, axis=0))
    return img, torch.from_numpy(mask), torch.from_numpy(interior)


def _assert_aligned(image: torch.Tensor, target: torch.Tensor) -> None:
    assert image.dtype == torch.uint8 and target.dtype == torch.int64
    assert image.shape[1:] == target.shape
    assert (image[0] == image[1]).all() and (image[0] == image[2]).all()
    keep = target != IGNORE
    np.testing.assert_array_equal(image[0][keep].numpy(), (target[keep] * 10).numpy())


_shapes = st.tuples(st.integers(1, 48), st.integers(1, 48), st.integers(0, 2**31 - 1))


@settings(max_examples=50, deadline=None)
@given(_shapes)
def test_flip_keeps_alignment(args):
    h, w, seed = args
    image, mask, _ = _scene(seed, h, w)
    g = torch.Generator().manual_seed(seed)
    x, t = RandomHorizontalFlip(0.5, generator=g)(image, mask)
    _assert_aligned(x, t)


@settings(max_examples=50, deadline=None)
@given(_shapes, st.integers(1, 40), st.integers(1, 40))
def test_crop_keeps_alignment_and_pads_with_ignore(args, ch, cw):
    h, w, seed = args
    image, mask, _ = _scene(seed, h, w)
    g = torch.Generator().manual_seed(seed)
    x, t = RandomCrop((ch, cw), generator=g)(image, mask)
    assert t.shape == (ch, cw)
    _assert_aligned(x, t)
    if h < ch:  # padding sits at the bottom: image 0, target ignore
        assert (x[:, h:] == 0).all() and (t[h:] == IGNORE).all()
    if w < cw:
        assert (x[:, :, w:] == 0).all() and (t[:, w:] == IGNORE).all()


@settings(max_examples=50, deadline=None)
@given(_shapes, st.floats(0.2, 3.0), st.floats(0.0, 1.0))
def test_scale_keeps_alignment(args, lo, extra):
    h, w, seed = args
    image, _, interior = _scene(seed, h, w)
    g = torch.Generator().manual_seed(seed)
    x, t = RandomScale(lo, lo + extra, generator=g)(image, interior)
    _assert_aligned(x, t)


@settings(max_examples=50, deadline=None)
@given(_shapes, st.integers(1, 40))
def test_composition_keeps_alignment(args, crop):
    h, w, seed = args
    image, _, interior = _scene(seed, h, w)
    g = torch.Generator().manual_seed(seed)
    tf = Compose(
        [
            RandomScale(0.5, 2.0, generator=g),
            RandomHorizontalFlip(generator=g),
            RandomCrop(crop, generator=g),
        ]
    )
    x, t = tf(image, interior)
    assert t.shape == (crop, crop)
    _assert_aligned(x, t)


def test_scale_samples_pixel_centres_not_corners():
    # width 30 -> 10: output pixel i covers input 3i..3i+2, whose centre is 3i+1. Bilinear
    # (align_corners=False) reads exactly 3i+1; torch's plain "nearest" would read 3i.
    labels = torch.arange(30).remainder(3).repeat(4, 1)  # 0 1 2 0 1 2 ...
    image = (labels * 10).to(torch.uint8).expand(3, -1, -1)
    x, t = RandomScale(1 / 3, 1 / 3)(image, labels)
    assert t.shape == (1, 10)
    assert (t == 1).all(), t
    _assert_aligned(x, t)


def test_scale_keeps_uint8_and_float():
    image, mask, _ = _scene(0, 20, 30)
    x, t = RandomScale(2.0, 2.0)(image, mask)
    assert x.dtype == torch.uint8 and x.shape == (3, 40, 60) and t.shape == (40, 60)
    x, _ = RandomScale(0.5, 0.5)(image.float(), mask)
    assert x.dtype == torch.float32 and x.shape == (3, 10, 15)


def test_generator_makes_transforms_reproducible():
    image, mask, _ = _scene(3, 40, 40)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        tf = Compose([RandomScale(0.5, 1.5, generator=g), RandomCrop(17, generator=g)])
        return [tf(image, mask) for _ in range(5)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) and torch.equal(s, u) for (x, s), (y, u) in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c, strict=True))


def test_flip_probability_extremes():
    image, mask, _ = _scene(1, 5, 7)
    assert torch.equal(RandomHorizontalFlip(1.0)(image, mask)[1], mask.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(image, mask)[1], mask)


@pytest.mark.parametrize("pp", [IMAGENET_RGB, CAFFE_BGR], ids=["imagenet_rgb", "caffe_bgr"])
def test_normalize_matches_preprocessing(pp):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    image, target = ToTensor()(hwc, np.zeros((6, 7), np.uint8))
    assert image.shape == (3, 6, 7) and image.dtype == torch.uint8 and target.dtype == torch.int64
    x, t = Normalize(pp)(image, target)
    assert x.dtype == torch.float32 and t is target
    torch.testing.assert_close(x, pp(hwc))


def test_transforms_reject_mismatched_pairs():
    with pytest.raises(ValueError, match=r"\(3, 4, 5\) and \(4, 6\)"):
        RandomCrop(2)(torch.zeros(3, 4, 5), torch.zeros(4, 6))
    with pytest.raises(TypeError, match="ToTensor"):
        RandomHorizontalFlip()(np.zeros((4, 5, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="min_scale"):
        RandomScale(2.0, 1.0)
    with pytest.raises(ValueError, match="size"):
        RandomCrop(0)


def test_pad_collate_pads_bottom_right():
    a = (torch.full((3, 4, 5), 7, dtype=torch.uint8), torch.full((4, 5), 1))
    b = (torch.full((3, 6, 3), 9, dtype=torch.uint8), torch.full((6, 3), 2))
    images, targets = pad_collate([a, b])
    assert images.shape == (2, 3, 6, 5) and images.dtype == torch.float32
    assert targets.shape == (2, 6, 5) and targets.dtype == torch.int64
    assert (images[0, :, :4, :5] == 7).all() and (images[0, :, 4:] == 0).all()
    assert (targets[0, :4, :5] == 1).all() and (targets[0, 4:] == IGNORE).all()
    assert (images[1, :, :, :3] == 9).all() and (images[1, :, :, 3:] == 0).all()
    assert (targets[1, :, 3:] == IGNORE).all()


def test_pad_collate_size_divisor_and_fill_values():
    a = (torch.ones(3, 5, 9), torch.zeros(5, 9, dtype=torch.long))
    images, targets = pad_collate([a], size_divisor=8, ignore_index=-1, pad_value=-2.5)
    assert images.shape == (1, 3, 8, 16) and targets.shape == (1, 8, 16)
    assert (images[0, :, 5:] == -2.5).all() and (images[0, :, :, 9:] == -2.5).all()
    assert (targets[0, 5:] == -1).all() and (targets[0, :5, :9] == 0).all()
    same, _ = pad_collate([a, a], size_divisor=1)
    assert same.shape == (2, 3, 5, 9)


def test_pad_collate_errors():
    with pytest.raises(ValueError, match="empty"):
        pad_collate([])
    with pytest.raises(ValueError, match="item 1"):
        pad_collate(
            [(torch.zeros(3, 2, 2), torch.zeros(2, 2)), (torch.zeros(3, 2, 2), torch.zeros(3, 2))]
        )
