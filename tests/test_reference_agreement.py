"""fcnseg's reference-layout FCNs against an independent functional oracle (tests/reference_fcn.py).

The oracle is written from FCN.md with hard-coded Caffe crop offsets and the key names of the
PyTorch port of the reference release; it shares no code with fcnseg. Parameters are random
(including score layers and transposed convolutions), so every branch, crop and stride shows.
"""

from __future__ import annotations

import pytest
import torch
from reference_fcn import (
    VARIANTS,
    reference_forward,
    reference_shapes,
    reference_state_dict,
)

import fcnseg

MODEL_NAMES = {
    "fcn32s": "fcn32s_vgg16",
    "fcn16s": "fcn16s_vgg16",
    "fcn8s": "fcn8s_vgg16",
    "fcn8s_atonce": "fcn8s_atonce_vgg16",
}
NUM_CLASSES = 5
WIDTH = 0.125
SIZES = [(1, 1), (31, 45), (64, 64), (97, 130)]

# float64 comparison: implementation noise is ~1e-14 relative, far below these.
RTOL64 = 1e-6
ATOL64_REL = 1e-8


def _seed(*parts: object) -> int:
    return sum((i + 1) * ord(ch) for i, ch in enumerate(repr(parts))) % (2**31)


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _build(variant: str, num_classes: int = NUM_CLASSES, width: float = WIDTH):
    return fcnseg.build_model(MODEL_NAMES[variant], num_classes=num_classes, width=width)


def _assert_outputs_close(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol_rel: float):
    assert isinstance(out, torch.Tensor), f"model returned {type(out).__name__}, not a tensor"
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    scale = max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol_rel * scale)


@pytest.fixture(scope="module", params=VARIANTS)
def loaded(request):
    """(variant, float64 eval model with the oracle's random weights, the float32 state dict)."""
    variant = request.param
    sd = reference_state_dict(variant, NUM_CLASSES, WIDTH, _gen("sd", variant))
    model = _build(variant)
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.double()
    return variant, model, sd


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("width", [WIDTH, 0.1, 1 / 64])  # 1/64: the smallest width taken
def test_state_dict_keys_and_shapes_match_port(variant, width):
    model = _build(variant, width=width)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = reference_shapes(variant, NUM_CLASSES, width)
    assert set(got) == set(want), (
        f"missing: {sorted(set(want) - set(got))}, extra: {sorted(set(got) - set(want))}"
    )
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shape mismatches (got, want): {wrong}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_port_state_dict_loads_strictly(variant):
    sd = reference_state_dict(variant, NUM_CLASSES, WIDTH, _gen("strict", variant))
    model = _build(variant)
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    after = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(after[k].float(), v), f"{k} did not load as given"


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_forward_matches_reference(loaded, size):
    variant, model, sd = loaded
    x = torch.randn(2, 3, *size, generator=_gen("x", variant, size), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        ref = reference_forward(variant, sd, x)
    assert ref.shape == (2, NUM_CLASSES, *size)
    _assert_outputs_close(out, ref, RTOL64, ATOL64_REL)


def test_eval_forward_is_deterministic(loaded):
    """Inference has no dropout: two passes give identical logits."""
    _, model, _ = loaded
    x = torch.randn(1, 3, 40, 52, generator=_gen("det"), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


# --- oracle self-checks: the agreement test above can see each branch and scaling ------------


def _max_rel_change(variant, sd, sd2, size=(64, 64)):
    x = torch.randn(2, 3, *size, generator=_gen("self", variant), dtype=torch.float64)
    a = reference_forward(variant, sd, x)
    b = reference_forward(variant, sd2, x)
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


@pytest.mark.parametrize(
    ("variant", "layer"),
    [
        ("fcn16s", "score_pool4"),
        ("fcn8s", "score_pool4"),
        ("fcn8s", "score_pool3"),
        ("fcn8s_atonce", "score_pool4"),
        ("fcn8s_atonce", "score_pool3"),
    ],
)
def test_oracle_skip_weights_are_visible(variant, layer):
    """Zeroing a skip layer's weights (keeping its bias) moves the output far beyond tolerance,
    so a model that dropped, mis-scaled or mis-cropped that skip would fail the agreement test."""
    sd = reference_state_dict(variant, NUM_CLASSES, WIDTH, _gen("sd", variant))
    sd2 = dict(sd)
    sd2[f"{layer}.weight"] = torch.zeros_like(sd[f"{layer}.weight"])
    # At-once pool3 is scaled by 1e-4, so its share of the logits is small (~1e-4 relative):
    # still tens of times the tolerance, which is what matters.
    assert _max_rel_change(variant, sd, sd2) > 20 * (ATOL64_REL + RTOL64)


def test_oracle_atonce_scaling_is_visible():
    sd = reference_state_dict("fcn8s", NUM_CLASSES, WIDTH, _gen("sd", "fcn8s"))
    x = torch.randn(2, 3, 64, 64, generator=_gen("atonce"), dtype=torch.float64)
    a = reference_forward("fcn8s", sd, x)
    b = reference_forward("fcn8s_atonce", sd, x)
    assert float((a - b).abs().max()) > 20 * (ATOL64_REL + RTOL64) * float(a.abs().max())


# --- full size --------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_width_fcn8s_matches_reference():
    variant = "fcn8s"
    sd = reference_state_dict(variant, 21, 1.0, _gen("full", variant))
    model = _build(variant, num_classes=21, width=1.0)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(1, 3, 40, 50, generator=_gen("full-x"))
    with torch.no_grad():
        out = model(x)
        ref = reference_forward(variant, sd, x)
    assert ref.shape == (1, 21, 40, 50)
    # float32 over 15 convolutions with fan-in up to 25088: tolerance relative to the logit scale.
    _assert_outputs_close(out, ref, rtol=1e-4, atol_rel=1e-5)
