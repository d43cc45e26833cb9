"""An independent description and forward of the reference release's nets, for the tests.

Written from FCN.md (sections 1, 3, 8 and 11) only; it shares no code with ``fcnseg``:

- `release_layers(net, width)`: the release's learnable layers in net order, with their
  Caffe type and blob shapes (what a .caffemodel of that net holds);
- `write_caffemodel(path, layers, form)`: a minimal protobuf writer of NetParameter, in the
  current (``layer``, field 100) or the old V1 (``layers``, field 2, legacy 4-d shapes) form;
- `caffe_forward(net, blobs, x)`: the net's forward in ``torch.nn.functional`` plus slicing, on
  the blobs as the file holds them: InnerProduct fc6 / fc7 are applied as matrices to every
  window (unfold + matmul, the sliding-window view), grouped convolutions as separate halves,
  Caffe's LRN by its formula, crop offsets as the reference's hard-coded numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASSES = {"voc": 21, "nyud": 40, "pascalcontext": 60}
SIFTFLOW = {"sem": 33, "geo": 3}
VGG = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))  # block, convs, channels
# CaffeNet (FCN.md 8): name, out, kernel, stride, pad, group
CAFFENET = (("conv1", 96, 11, 4, 100, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
            ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2))  # fmt: skip
# deconvolutions: name -> (kernel, stride); reference crops (FCN.md 3)
UPS = {"fcn32s": [("upscore", 64, 32)],
       "fcn16s": [("upscore2", 4, 2), ("upscore16", 32, 16)],
       "fcn8s": [("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)],
       "alexnet": [("upscore", 63, 32)]}  # fmt: skip
CROPS = {"fcn32s": {"out": 19}, "fcn16s": {"pool4": 5, "out": 27},
         "fcn8s": {"pool4": 5, "pool3": 9, "out": 31}, "alexnet": {"out": 18}}  # fmt: skip
ATONCE = {"pool4": 0.01, "pool3": 0.0001}


def c(n: int, width: float) -> int:
    return max(1, round(n * width))


def parse(net: str) -> dict:
    """What the folder name says: dataset, variant, outputs and inputs."""
    dataset, rest = net.split("-", 1)
    variant = "alexnet" if rest == "fcn-alexnet" else rest.split("-")[0]
    outputs = dict(SIFTFLOW) if dataset == "siftflow" else {"": CLASSES[dataset]}
    return {
        "dataset": dataset,
        "variant": variant,
        "atonce": rest.endswith("atonce"),
        "outputs": outputs,
        "streams": ["color", "hha"] if rest.endswith("color-hha") else [""],
        "in_channels": 4 if rest.endswith("color-d") else 3,
    }


def _vgg(width: float, suffix: str, in_ch: int, first: str) -> list[tuple]:
    layers, cin = [], in_ch
    for b, n, ch in VGG:
        for i in range(1, n + 1):
            name = first if (b, i) == (1, 1) else f"conv{b}_{i}"
            layers.append(
                (name + suffix, "Convolution", [(c(ch, width), cin, 3, 3), (c(ch, width),)])
            )
            cin = c(ch, width)
    fc = c(4096, width)
    layers.append((f"fc6{suffix}", "Convolution", [(fc, cin, 7, 7), (fc,)]))
    layers.append((f"fc7{suffix}", "Convolution", [(fc, fc, 1, 1), (fc,)]))
    return layers


def release_layers(net: str, width: float = 1.0) -> list[tuple[str, str, list[tuple]]]:
    """(layer name, Caffe type, blob shapes) of every layer with weights, in net order."""
    p = parse(net)
    fc = c(4096, width)
    if p["variant"] == "alexnet":
        layers, cin = [], 3
        for name, out, k, _s, _p, g in CAFFENET:
            layers.append(
                (name, "Convolution", [(c(out, width), cin // g, k, k), (c(out, width),)])
            )
            cin = c(out, width)
        layers.append(("fc6", "Convolution", [(fc, cin, 6, 6), (fc,)]))
        layers.append(("fc7", "Convolution", [(fc, fc, 1, 1), (fc,)]))
    else:
        first = "conv1_1_bgrd" if p["in_channels"] == 4 else "conv1_1"
        layers = [lay for s in p["streams"] for lay in _vgg(width, s, p["in_channels"], first)]
    for out, C in p["outputs"].items():
        sfx = f"_{out}" if out else ""
        for s in p["streams"]:
            layers.append((f"score_fr{sfx}{s}", "Convolution", [(C, fc, 1, 1), (C,)]))
        ups = dict((n, k) for n, k, _ in UPS[p["variant"]])
        if "upscore2" in ups:
            layers.append((f"upscore2{sfx}", "Deconvolution", [(C, C, 4, 4)]))
            if p["atonce"]:
                layers.append(("scale_pool4", "Scale", [(c(512, width),)]))
            layers.append((f"score_pool4{sfx}", "Convolution", [(C, c(512, width), 1, 1), (C,)]))
        if "upscore_pool4" in ups:
            layers.append((f"upscore_pool4{sfx}", "Deconvolution", [(C, C, 4, 4)]))
            if p["atonce"]:
                layers.append(("scale_pool3", "Scale", [(c(256, width),)]))
            layers.append((f"score_pool3{sfx}", "Convolution", [(C, c(256, width), 1, 1), (C,)]))
        name, k, _ = UPS[p["variant"]][-1]
        layers.append((f"{name}{sfx}", "Deconvolution", [(C, C, k, k)]))
    return layers


def expected_state_shapes(net: str, width: float = 1.0) -> dict[str, tuple]:
    """The PyTorch names: layer + .weight / .bias; the at-once Scale blobs are not parameters."""
    return {f"{name}.{('weight', 'bias')[i]}": shape
            for name, kind, shapes in release_layers(net, width) if kind != "Scale"
            for i, shape in enumerate(shapes)}  # fmt: skip


def random_blobs(net: str, width: float, seed: int = 0, fc_as_matrix: bool = False) -> dict:
    """Random blobs for every layer (scores and deconvolutions too, so every path shows).

    fc_as_matrix: fc6 / fc7 as a classifier's InnerProduct (out, in) matrices.
    """
    g = torch.Generator().manual_seed(seed)
    blobs: dict[str, list[torch.Tensor]] = {}
    for name, kind, shapes in release_layers(net, width):
        if kind == "Scale":
            blobs[name] = [torch.full(shapes[0], ATONCE[name.removeprefix("scale_")])]
            continue
        w_shape = shapes[0]
        # a deconvolution output pixel sums ~ C x (k / stride)^2 = 4C taps; a conv its fan-in
        fan = 4 * w_shape[0] if kind == "Deconvolution" else math.prod(w_shape[1:])
        w = torch.randn(w_shape, generator=g) * (2.0 / fan) ** 0.5
        ts = [w] + [0.1 * torch.randn(s, generator=g) for s in shapes[1:]]
        if fc_as_matrix and name.startswith(("fc6", "fc7")):
            ts[0] = ts[0].reshape(w_shape[0], -1)
        blobs[name] = ts
    return blobs


# ---------------------------------------------------------------- protobuf writer (FCN.md 11)

V1_TYPES = {"Convolution": 4, "Deconvolution": 39, "InnerProduct": 14, "ReLU": 18, "Pooling": 17}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:  # length-delimited (wire type 2)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _int(num: int, v: int) -> bytes:  # varint (wire type 0)
    return _varint(num << 3) + _varint(v)


def _blob(t: torch.Tensor, legacy: bool, double: bool) -> bytes:
    if legacy:  # num, channels, height, width: the shape right-aligned in 4-d
        dims = [1] * (4 - t.dim()) + list(t.shape)
        head = b"".join(_int(i, d) for i, d in enumerate(dims, start=1))
    else:
        head = _field(7, _field(1, b"".join(_varint(d) for d in t.shape)))
    a = t.detach().contiguous().numpy()
    data = a.astype("<f8" if double else "<f4").tobytes()  # packed, little-endian
    return head + _field(8 if double else 5, data)


def write_caffemodel(path, net: str, blobs: dict, form: str = "layer", double=False) -> None:
    """A NetParameter with `blobs` {layer: [tensors]} in net order, ReLUs between (no blobs).

    form "layer": LayerParameter (field 100) with type strings and `shape.dim`;
    form "v1": V1LayerParameter (field 2) with type enums and legacy num/channels/height/width.
    Layers whose blobs are 2-d are written as InnerProduct.
    """
    out = [_field(1, net.encode())]
    for name, ts in blobs.items():
        kind = "Deconvolution" if name.startswith("upscore") else "Convolution"
        kind = "InnerProduct" if ts[0].dim() == 2 else kind
        kind = "Scale" if name.startswith("scale_") else kind
        layers = [(name, kind, ts), (f"relu_{name}", "ReLU", [])]
        for lname, ltype, lts in layers:
            if form == "layer":
                msg = _field(1, lname.encode()) + _field(2, ltype.encode())
                msg += b"".join(_field(7, _blob(t, False, double)) for t in lts)
                out.append(_field(100, msg))
            else:
                msg = _field(4, lname.encode()) + _int(5, V1_TYPES[ltype])
                msg += b"".join(_field(6, _blob(t, True, double)) for t in lts)
                out.append(_field(2, msg))
    with open(path, "wb") as f:
        f.write(b"".join(out))


# ---------------------------------------------------------------- the forward


def _conv(x, w, b, pad=0, stride=1, groups=1):
    """Caffe convolution; groups run as separate slices; a 2-d weight is an InnerProduct
    applied to every k x k window (k from the input channels), i.e. sliding-window FC."""
    if w.dim() == 2:
        k = round((w.shape[1] / x.shape[1]) ** 0.5)
        cols = F.unfold(x, k)  # (N, C*k*k, L) in (C, H, W) order, as a classifier flattens
        y = torch.matmul(w, cols) + b[:, None]
        return y.reshape(x.shape[0], w.shape[0], x.shape[2] - k + 1, x.shape[3] - k + 1)
    if groups == 1:
        return F.conv2d(x, w, b, stride=stride, padding=pad)
    xs, ws, bs = x.chunk(groups, 1), w.chunk(groups, 0), b.chunk(groups, 0)
    return torch.cat([F.conv2d(a, v, u, stride=stride, padding=pad)
                      for a, v, u in zip(xs, ws, bs, strict=True)], 1)  # fmt: skip


def _lrn(x, size=5, alpha=1e-4, beta=0.75):
    """Caffe ACROSS_CHANNELS: x / (1 + alpha / size * sum over `size` neighbours x^2)^beta."""
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, size // 2, size // 2)).squeeze(1)
    s = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    return x / (1 + alpha / size * s) ** beta


def _pool(x, k=2, s=2):
    return F.max_pool2d(x, k, s, ceil_mode=True)


def _crop(x, o, h, w):
    assert x.shape[2] >= o + h and x.shape[3] >= o + w, (x.shape, o, h, w)
    return x[:, :, o : o + h, o : o + w]


def _vgg_forward(b, x, suffix, first):
    feats, h = {}, x
    for blk, n, _ in VGG:
        for i in range(1, n + 1):
            name = (first if (blk, i) == (1, 1) else f"conv{blk}_{i}") + suffix
            h = F.relu(_conv(h, *b[name], pad=100 if (blk, i) == (1, 1) else 1))
        h = _pool(h)
        feats[f"pool{blk}"] = h
    h = F.relu(_conv(h, *b[f"fc6{suffix}"]))
    feats["fc7"] = F.relu(_conv(h, *b[f"fc7{suffix}"]))
    return feats


def _caffenet_forward(b, x):
    h = x
    for name, _, _, s, p, g in CAFFENET:
        h = F.relu(_conv(h, *b[name], pad=p, stride=s, groups=g))
        if name in ("conv1", "conv2", "conv5"):
            h = F.max_pool2d(h, 3, 2, ceil_mode=True)
        if name in ("conv1", "conv2"):
            h = _lrn(h)
    h = F.relu(_conv(h, *b["fc6"]))
    return {"fc7": F.relu(_conv(h, *b["fc7"]))}


def caffe_forward(net: str, blobs: dict, x):
    """The net's inference forward on `blobs` ({layer: [weight, bias]}, as in the file).

    x: a tensor, or {"color": ..., "hha": ...} for nyud-fcn32s-color-hha. Returns a tensor,
    or {"sem": ..., "geo": ...} for SIFT Flow.
    """
    p = parse(net)
    b = {k: [t.double() for t in v] for k, v in blobs.items()}
    xs = {s: (x[s] if s else x).double() for s in p["streams"]}
    H, W = next(iter(xs.values())).shape[2:]
    first = "conv1_1_bgrd" if p["in_channels"] == 4 else "conv1_1"
    feats = {}
    for s, xi in xs.items():
        f = _caffenet_forward(b, xi) if p["variant"] == "alexnet" else _vgg_forward(b, xi, s, first)
        feats[s] = f
    crops, ups = CROPS[p["variant"]], UPS[p["variant"]]
    outs = {}
    for out in p["outputs"]:
        sfx = f"_{out}" if out else ""
        scores = [_conv(feats[s]["fc7"], *b[f"score_fr{sfx}{s}"]) for s in p["streams"]]
        score = scores[0] if len(scores) == 1 else 0.5 * scores[0] + 0.5 * scores[1]
        for up, tap in zip(ups[:-1], ("pool4", "pool3"), strict=False):
            name, _, stride = up
            u = F.conv_transpose2d(score, b[f"{name}{sfx}"][0], stride=stride)
            f = feats[""][tap] * (ATONCE[tap] if p["atonce"] else 1.0)
            t = _crop(_conv(f, *b[f"score_{tap}{sfx}"]), crops[tap], *u.shape[2:])
            score = u + t
        name, _, stride = ups[-1]
        y = F.conv_transpose2d(score, b[f"{name}{sfx}"][0], stride=stride)
        outs[out] = _crop(y, crops["out"], H, W)
    return outs.get("", outs)
