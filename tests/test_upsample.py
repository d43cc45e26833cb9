"""Per-class upsampling (ClassUpsample): the dense transposed conv's results, C times less work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models import build_model
from fcnseg.models.init import bilinear_upsampler
from fcnseg.models.upsample import ClassUpsample, diagonal_kernel


def _dense(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The plain dense op on the same weight (what nn.ConvTranspose2d computes)."""
    return F.conv_transpose2d(x, layer.weight, layer.bias, layer.stride, layer.padding)


def _spy(monkeypatch) -> list[int]:
    """Record the `groups` of every conv_transpose2d call made through F."""
    calls, real = [], F.conv_transpose2d

    def spy(*args, **kw):
        calls.append(args[6] if len(args) > 6 else kw.get("groups", 1))
        return real(*args, **kw)

    monkeypatch.setattr(F, "conv_transpose2d", spy)
    return calls


@pytest.mark.parametrize("factor,pad,channels_last", [(32, 0, False), (8, 4, True), (2, 1, False)])
def test_frozen_matches_dense_in_float64_outputs_and_input_grads(factor, pad, channels_last):
    torch.manual_seed(0)
    C = 5
    up = bilinear_upsampler(C, factor, padding=pad, trainable=False).double()
    assert isinstance(up, ClassUpsample) and up.per_class_kernel() is not None
    x = torch.randn(2, C, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = up(x1), _dense(up, x2)
    assert y1.shape == y2.shape
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_per_class_path_taken_only_when_exact(monkeypatch):
    torch.manual_seed(0)
    up = bilinear_upsampler(4, 2, trainable=True)
    x = torch.randn(1, 4, 5, 5)
    calls = _spy(monkeypatch)
    up(x)  # learnable, autograd on: the dense op (its weight gradient has off-diagonal terms)
    with torch.no_grad():
        up(x)  # no weight gradient needed: per class
    up.weight.requires_grad_(False)
    up(x)  # frozen: per class
    assert calls == [1, 4, 4]


def test_learnable_in_training_keeps_the_dense_weight_gradient():
    """The dense op's weight gradient is non-zero off the diagonal: it must be kept as is."""
    torch.manual_seed(0)
    up = bilinear_upsampler(3, 2, trainable=True).double()
    ref = nn.ConvTranspose2d(3, 3, 4, stride=2, bias=False).double()
    ref.load_state_dict(up.state_dict())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    g = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    up(x).backward(g)
    ref(x).backward(g)
    torch.testing.assert_close(up.weight.grad, ref.weight.grad, rtol=0, atol=0)
    off = up.weight.grad.clone()
    off[torch.arange(3), torch.arange(3)] = 0
    assert off.abs().max() > 0  # so training moves the kernel off the diagonal


def test_non_diagonal_kernel_falls_back_to_dense(monkeypatch):
    torch.manual_seed(0)
    up = bilinear_upsampler(3, 4, trainable=False).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    per_class = up(x)
    with torch.no_grad():
        up.weight[0, 1, 2, 2] = 0.5  # in-place: bumps the version, the cached check is redone
    assert up.per_class_kernel() is None and diagonal_kernel(up.weight) is None
    calls = _spy(monkeypatch)
    y = up(x)
    assert calls == [1]
    torch.testing.assert_close(y, _dense(up, x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y, per_class)  # the off-diagonal entry is really used


def test_cache_follows_load_state_dict_dtype_and_replacement():
    torch.manual_seed(0)
    up = bilinear_upsampler(3, 2, trainable=False)
    x = torch.randn(1, 3, 4, 4)
    assert up.per_class_kernel() is not None
    dense_w = torch.randn(3, 3, 4, 4)
    up.load_state_dict({"weight": dense_w})  # a user's non-diagonal file
    torch.testing.assert_close(up(x), _dense(up, x))
    up.double()  # new data: the check is redone on it
    assert up.per_class_kernel() is None
    up.weight = nn.Parameter(torch.zeros(3, 3, 4, 4, dtype=torch.float64), requires_grad=False)
    assert up.per_class_kernel() is not None  # zeros are diagonal
    with torch.no_grad():
        up.weight.data[0, 2] = 1.0  # a write through .data does not bump the version ...
        up.refresh()  # ... so it needs refresh()
    assert up.per_class_kernel() is None


def test_inference_mode_and_inference_tensors():
    up = bilinear_upsampler(3, 2, trainable=False)
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode():
        y = up(x)
        inf = bilinear_upsampler(3, 2, trainable=False)  # weight is an inference tensor
        torch.testing.assert_close(inf(x), y)
    torch.testing.assert_close(y, _dense(up, x))


@pytest.mark.parametrize("half", ["autocast", "weights"])
def test_bf16_keeps_the_dense_ops_dtype_and_values(half):
    torch.manual_seed(0)
    up = bilinear_upsampler(4, 8, padding=4, trainable=False)
    x = torch.randn(2, 4, 5, 5)
    if half == "weights":
        up, x = up.bfloat16(), x.bfloat16()
        ref = _dense(up, x)
        y = up(x)
    else:
        with torch.autocast("cpu", torch.bfloat16):
            ref, y = _dense(up, x), up(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_float64_under_autocast_stays_float64_as_the_dense_op():
    up = bilinear_upsampler(3, 4, trainable=False).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.autocast("cpu", torch.bfloat16):
        ref, y = _dense(up, x), up(x)
    assert y.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_strict_state_dict_round_trip_unchanged():
    model = build_model("fcn8s_vgg16", num_classes=5, width=0.0625)
    sd = model.state_dict()
    ups = {n: m for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    assert ups and all(isinstance(m, ClassUpsample) for m in ups.values())
    for name, m in ups.items():
        assert m.bias is None and sd[f"{name}.weight"].shape[:2] == (5, 5)
    other = build_model("fcn8s_vgg16", num_classes=5, width=0.0625)
    other.load_state_dict(sd, strict=True)
    assert set(other.state_dict()) == set(sd)
    x = torch.randn(1, 3, 40, 44)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model.eval()(x))
