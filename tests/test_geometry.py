"""Crop offsets are derived from layer geometry and reproduce the reference's numbers."""

from fractions import Fraction

import pytest
from torch import nn

import fcnseg
from fcnseg.models.geometry import IDENTITY, CoordMap, compose, coord_map, crop_offset


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fcn32s_vgg16", {"upscore": 19}),
        ("fcn16s_vgg16", {"score_pool4": 5, "upscore16": 27}),
        ("fcn8s_vgg16", {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}),
        ("fcn8s_atonce_vgg16", {"score_pool4": 5, "score_pool3": 9, "upscore8": 31}),
        ("fcn32s_alexnet", {"upscore": 18}),
    ],
)
def test_reference_crop_offsets(name, expected):
    model = fcnseg.build_model(name, num_classes=3, width=0.125)
    assert model.crop_offsets == expected


def test_same_layout_has_zero_offsets():
    model = fcnseg.build_model("fcn8s_vgg16", num_classes=3, width=0.125, layout="same")
    assert set(model.crop_offsets.values()) == {0}


def test_coord_map_of_layers():
    # conv k3 p100: out = in + 99; pool 2/2: out = in/2 - 1/4; deconv k64 s32: out = 32 in + 31.5
    assert coord_map(nn.Conv2d(3, 3, 3, padding=100)) == CoordMap(Fraction(1), Fraction(99))
    assert coord_map(nn.MaxPool2d(2, 2)) == CoordMap(Fraction(1, 2), Fraction(-1, 4))
    assert coord_map(nn.ConvTranspose2d(1, 1, 64, 32)) == CoordMap(Fraction(32), Fraction(63, 2))
    assert coord_map(nn.ReLU()) == IDENTITY
    m = compose([nn.Conv2d(1, 1, 3, padding=1), nn.MaxPool2d(2, 2)])
    assert m.then(m.inverse().then(m)) == m


def test_crop_offset_rejects_misalignment():
    a = CoordMap(Fraction(1), Fraction(3, 2))
    with pytest.raises(ValueError, match="fraction of a pixel"):
        crop_offset(a, IDENTITY)
    with pytest.raises(ValueError, match="different scales"):
        crop_offset(CoordMap(Fraction(2), Fraction(0)), IDENTITY)
    assert crop_offset(CoordMap(Fraction(1), Fraction(7)), IDENTITY) == 7
