"""Weights that reach users: the release's registry and a downloader for the real world.

Every download case runs against an HTTP server on 127.0.0.1 started here (http.server in a
thread); nothing else is reachable (sockets to other hosts fail the test). Each failing case must
end in one `DownloadError` naming the weights, every url tried and what happened, and the cache
paths where a file downloaded by hand is picked up, with nothing left in the cache.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from caffemodel_writer import write_caffemodel

import fcnseg
import fcnseg.weights as W
import fcnseg.weights.download as D
from fcnseg.cli import main

PAYLOAD = bytes(range(256)) * 4096 + b"end"  # 1 MB and a bit: several chunks
MD5 = hashlib.md5(PAYLOAD).hexdigest()

# ------------------------------------------------------------------------------ the server


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes by path; `hits` counts requests per path (the server's own record)."""

    hits: ClassVar[dict[str, int]] = {}
    files: ClassVar[dict[str, Path]] = {}  # /files/<name> serves this file
    ranges: ClassVar[list[str]] = []

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream", **headers):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(headers.pop("length", len(body))))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, *, honour_range=True, drop_first=False, stall_first=False):
        """PAYLOAD; the first request can be cut (closed) or stalled halfway."""
        n = self.hits[self.path]
        rng = self.headers.get("Range")
        if rng:
            self.ranges.append(rng)
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and honour_range else 0
        body = PAYLOAD[start:]
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if (drop_first or stall_first) and n == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if stall_first:
                time.sleep(3.0)  # longer than the client's timeout (1 s here)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        url = urlparse(self.path)
        q = parse_qs(url.query)
        route = url.path
        if route == "/file.bin":
            self._file()
        elif route == "/drop.bin":
            self._file(drop_first=True)
        elif route == "/drop-norange.bin":
            self._file(drop_first=True, honour_range=False)
        elif route == "/stall.bin":
            self._file(stall_first=True)
        elif route == "/always-drop.bin":
            self._always_drop()
        elif route == "/404.bin":
            self._send(404, b"<html><title>404</title>no such file</html>", "text/html")
        elif route == "/uc":  # Google Drive: large files get the virus-scan page first
            if q.get("confirm") == ["t"] and q.get("id") == ["big"]:
                self._file()
            elif q.get("style") == ["old"]:  # the older page: a link with confirm=TOKEN
                self._send(200, _OLD_DRIVE_PAGE, "text/html; charset=utf-8")
            else:
                self._send(200, _DRIVE_PAGE, "text/html; charset=utf-8")
        elif route == "/download":  # the newer page's form action
            if q.get("confirm") == ["t"] and q.get("id") == ["big"] and q.get("uuid"):
                self._file()
            else:
                self._send(400, b"bad form", "text/plain")
        elif route == "/login":
            self._send(200, _LOGIN_PAGE, "text/html")
        elif route == "/quota":
            self._send(200, _QUOTA_PAGE, "text/html")
        elif route == "/page-as-binary.bin":  # an error page served as a binary type
            self._send(200, _QUOTA_PAGE)
        elif route.startswith("/files/") and route[7:] in self.files:
            self._send(200, self.files[route[7:]].read_bytes())
        elif route == "/empty.bin":
            self._send(200, b"")
        else:
            self._send(404, b"", "text/plain")

    def _always_drop(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[:1000])
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


_DRIVE_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" value="Download anyway"/>
<input type="hidden" name="id" value="big"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234-5">
</form></body></html>"""
_OLD_DRIVE_PAGE = b"""<html><head><title>Google Drive - Virus scan warning</title></head><body>
<a id="uc-download-link" href="/uc?export=download&amp;confirm=t&amp;id=big">Download anyway</a>
</body></html>"""
_LOGIN_PAGE = b"""<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head>
<body><form action="/signin"><input type="email" name="identifier">
<input type="password" name="Passwd"></form></body></html>"""
_QUOTA_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>
<body>Too many users have viewed or downloaded this file recently.</body></html>"""


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _only_localhost(monkeypatch):
    """Connections go to 127.0.0.1 only; the client gives up after 1 s without data (0.3 s
    failed now and then on a loaded 2-core machine: a server thread not scheduled in time)."""
    real = socket.create_connection

    def local_only(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)
    monkeypatch.setattr(D, "TIMEOUT", 1.0)
    Handler.hits.clear()
    Handler.ranges.clear()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(D, "cache_dir", lambda: tmp_path / "cache")
    return tmp_path / "cache"


def _spec(*urls_md5, name="test-weights") -> W.ReferenceWeights:
    """A registry entry whose sources are the given (url, md5) pairs, cached as s<i>.bin."""
    sources = tuple(W.Source(url, f"s{i}.bin", md5=md5) for i, (url, md5) in enumerate(urls_md5))
    return replace(W.REFERENCE_WEIGHTS["voc-fcn8s"], net=name, sources=sources)


def _listing(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ---------------------------------------------------------------------------- good downloads


@pytest.mark.parametrize(
    "path",
    [
        "/file.bin",
        "/drop.bin",
        "/drop-norange.bin",
        "/stall.bin",
        "/uc?id=big",
        "/uc?id=big&style=old",
    ],
)
def test_download_arrives_intact(server, cache, path):
    """Plain; cut halfway (resumed with Range, or restarted when Range is ignored); stalled
    halfway (timeout, resumed); Google Drive's confirmation page (new form and old link)."""
    got = D.fetch(_spec((server + path, MD5)), progress=False)
    assert got == cache / "s0.bin" and got.read_bytes() == PAYLOAD
    assert _listing(cache) == ["s0.bin"]  # no temp file left beside it
    if path in ("/drop.bin", "/stall.bin"):
        assert Handler.ranges and Handler.ranges[0] == f"bytes={len(PAYLOAD) // 2}-"


def test_cached_file_is_used_and_a_hand_placed_file_too(server, cache):
    spec = _spec((server + "/file.bin", MD5))
    D.fetch(spec, progress=False)
    D.fetch(spec, progress=False)
    assert Handler.hits == {"/file.bin": 1}
    # a file put by hand where the error message says, under the second source's name
    spec2 = _spec((server + "/404.bin", None), (server + "/file.bin", MD5), name="other")
    (cache / "s0.bin").unlink()
    (cache / "s1.bin").write_bytes(PAYLOAD)
    assert D.fetch(spec2, progress=False) == cache / "s1.bin"
    assert "/404.bin" not in Handler.hits


def test_next_source_after_a_dead_one(server, cache):
    spec = _spec((server + "/404.bin", None), (server + "/login", None),
                 (server + "/file.bin", MD5))  # fmt: skip
    assert D.fetch(spec, progress=False) == cache / "s2.bin"
    assert _listing(cache) == ["s2.bin"]


# ------------------------------------------------------------------------------- failures

FAILURES = {
    # case: (path, md5 or None, what the user is told about that url)
    "404": ("/404.bin", None, r"HTTP 404"),
    "login page": ("/login", None, r"a login page \('Sign in - Google Accounts'\)"),
    "quota page": ("/quota", None, r"an HTML page \('Google Drive - Quota exceeded'\)"),
    "page as binary": ("/page-as-binary.bin", None, r"an HTML page \('Google Drive - Quota"),
    "empty file": ("/empty.bin", None, r"an empty file"),
    "keeps dropping": ("/always-drop.bin", None, r"connection dropped 4 times"),
    "wrong checksum": ("/file.bin", "0" * 32, r"its md5 is [0-9a-f]{32}, but .*never cached"),
    "server down": ("CLOSED", None, r"no connection \(.*refused"),
}


@pytest.fixture
def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/weights.caffemodel"


@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_is_explained_and_nothing_is_cached(server, cache, closed_port, case):
    path, md5, told = FAILURES[case]
    url = closed_port if path == "CLOSED" else server + path
    spec = _spec((url, md5), (server + "/404.bin", None), name="voc-fcn8s-test")
    with pytest.raises(W.DownloadError) as info:
        D.fetch(spec, progress=False)
    msg = str(info.value)
    assert "weights 'voc-fcn8s-test'" in msg and "tried 2 url(s)" in msg
    assert url in msg and server + "/404.bin" in msg  # every url tried
    assert re.search(told, msg), msg
    for f in ("s0.bin", "s1.bin"):  # where to put a file downloaded by hand
        assert str(cache / f) in msg
    assert _listing(cache) == []


def test_no_network_at_all(server, cache, monkeypatch):
    def unreachable(address, *args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    spec = W.REFERENCE_WEIGHTS["voc-fcn8s"]  # the real entry: its real urls, never reached
    with pytest.raises(W.DownloadError) as info:
        D.fetch(spec, progress=False)
    msg = str(info.value)
    assert msg.count("Network is unreachable") == len(spec.sources) == 2
    for source in spec.sources:
        assert source.url in msg and str(cache / source.file_name) in msg
    assert _listing(cache) == []


def test_corrupt_file_in_cache_is_named(server, cache):
    spec = _spec((server + "/file.bin", MD5))
    cache.mkdir()
    (cache / "s0.bin").write_bytes(PAYLOAD[:100])
    with pytest.raises(ValueError, match=r"delete it and download again") as info:
        D.fetch(spec, progress=False)
    assert str(cache / "s0.bin") in str(info.value)


# ------------------------------------------------------------- weights="reference", end to end

WIDTH = 0.125  # the release's nets at 1/8 width: the same layer names, small files


@pytest.fixture
def release_file(tmp_path):
    """voc-fcn16s's state at 1/8 width with random values, as the release's .caffemodel (fc6,
    fc7 written as InnerProduct) and as the port's .pth."""
    state = fcnseg.build_reference("voc-fcn16s", width=WIDTH).state_dict()
    g = torch.Generator().manual_seed(0)
    want = {k: torch.randn(v.shape, generator=g) for k, v in state.items()}
    layers: dict[str, list] = {}
    for key, value in want.items():
        layers.setdefault(key.rsplit(".", 1)[0], []).append(value.numpy())
    kinds = {n: "InnerProduct" if n in ("fc6", "fc7") else "Convolution" for n in layers}
    layers["fc6"][0] = layers["fc6"][0].reshape(layers["fc6"][0].shape[0], -1)
    caffemodel = write_caffemodel(tmp_path / "fcn16s-heavy-pascal.caffemodel",
                                  [(n, kinds[n], b) for n, b in layers.items()])  # fmt: skip
    pth = tmp_path / "fcn16s_from_caffe.pth"
    torch.save(want, pth)
    Handler.files.update({"fcn16s.caffemodel": caffemodel, "fcn16s.pth": pth})
    return want, caffemodel, pth


@pytest.mark.parametrize("served", ["caffemodel", "pth"])
def test_reference_weights_reach_the_net(server, cache, monkeypatch, release_file, served):
    """The release's host is dead (404); the next source serves the file; the net loads it."""
    want, _, pth = release_file
    entry = W.REFERENCE_WEIGHTS["voc-fcn16s"]
    dead, port = entry.sources
    if served == "caffemodel":  # a mirror of the release's file
        mirror = replace(dead, url=server + "/files/fcn16s.caffemodel", file_name="m.caffemodel")
        sources = (replace(dead, url=server + "/404.bin"), mirror)
    else:  # the port's .pth, with its md5 as published
        md5 = hashlib.md5(pth.read_bytes()).hexdigest()
        sources = (replace(dead, url=server + "/404.bin"),
                   replace(port, url=server + "/files/fcn16s.pth", md5=md5))  # fmt: skip
    monkeypatch.setitem(W.REFERENCE_WEIGHTS, "voc-fcn16s", replace(entry, sources=sources))
    model = fcnseg.build_reference("voc-fcn16s", weights="reference", width=WIDTH)
    got = model.state_dict()
    for key, value in want.items():
        assert got[key].shape == value.shape and (got[key].flatten() == value.flatten()).all(), key
    assert _listing(cache) == [sources[1].file_name]


# ------------------------------------------------------------------------- the registry

# FCN.md section 8: the release's file names, and which nets have no published weights
RELEASE_FILES = {
    "voc-fcn32s": "fcn32s-heavy-pascal", "voc-fcn16s": "fcn16s-heavy-pascal",
    "voc-fcn8s": "fcn8s-heavy-pascal", "voc-fcn8s-atonce": "fcn8s-atonce-pascal",
    "voc-fcn-alexnet": "fcn-alexnet-pascal", "nyud-fcn32s-color": "nyud-fcn32s-color-heavy",
    "nyud-fcn32s-hha": "nyud-fcn32s-hha-heavy",
    "nyud-fcn32s-color-hha": "nyud-fcn32s-color-hha-heavy",
    "pascalcontext-fcn32s": "pascalcontext-fcn32s-heavy",
    "pascalcontext-fcn16s": "pascalcontext-fcn16s-heavy",
    "pascalcontext-fcn8s": "pascalcontext-fcn8s-heavy",
    "siftflow-fcn32s": "siftflow-fcn32s-heavy", "siftflow-fcn16s": "siftflow-fcn16s-heavy",
    "siftflow-fcn8s": "siftflow-fcn8s-heavy",
}  # fmt: skip
# FCN.md 3 and 8: classes per dataset, and each dataset's BGR mean
CLASSES = {"voc": 21, "nyud": 40, "pascalcontext": 60, "siftflow": {"sem": 33, "geo": 3}}
VOC_MEAN = (104.00699, 116.66877, 122.67892)
MEANS = {"voc": VOC_MEAN, "pascalcontext": VOC_MEAN, "nyud": (116.190, 97.203, 92.318),
         "siftflow": (114.578, 115.294, 108.353)}  # fmt: skip


def test_registry_has_every_published_net():
    assert set(W.REFERENCE_WEIGHTS) == set(RELEASE_FILES)
    assert set(fcnseg.reference_nets()) - set(W.REFERENCE_WEIGHTS) == {"nyud-fcn32s-color-d"}


@pytest.mark.parametrize("name", sorted(RELEASE_FILES))
def test_registry_entry(name):
    w = W.REFERENCE_WEIGHTS[name]
    dataset = name.split("-")[0]
    first = w.sources[0]
    assert first.url == f"http://dl.caffe.berkeleyvision.org/{RELEASE_FILES[name]}.caffemodel"
    assert first.format == "caffemodel" and first.file_name == f"{RELEASE_FILES[name]}.caffemodel"
    port = [s for s in w.sources if s.format == "pth"]
    if dataset == "voc" and "alexnet" not in name:  # the port converted the four VGG16 VOC nets
        assert len(port) == 1 and "drive.google.com" in port[0].url
        assert re.fullmatch(r"[0-9a-f]{32}", port[0].md5)
    else:
        assert not port
    assert w.classes == CLASSES[dataset]
    color = next(iter(w.inputs.values()))
    if name != "nyud-fcn32s-hha":
        assert color.channel_order == "BGR" and color.mean == pytest.approx(MEANS[dataset])
    assert "BSD-2-Clause" in w.license
    # the weights' classes and inputs are the net's (fcnseg.models.reference)
    net = fcnseg.models.reference.REFERENCE_NETS[name]
    assert w.classes == net.classes and w.inputs == net.inputs


def test_cache_names_are_unique():
    """One cache name, one file: a name is shared only by the same url (the release's file as
    a mirror of the port's entry in WEIGHTS)."""
    urls: dict[str, set[str]] = {}
    for w in [*W.REFERENCE_WEIGHTS.values(), *W.WEIGHTS.values()]:
        names = [s.file_name for s in w.sources]
        assert len(names) == len(set(names)), w.name
        for source in w.sources:
            urls.setdefault(source.file_name, set()).add(source.url)
    assert {name: u for name, u in urls.items() if len(u) > 1} == {}


def test_port_entry_falls_back_to_the_release_file(server, cache, monkeypatch, tmp_path):
    """WEIGHTS' fcn8s_vgg16_voc: the port's Drive file is gone, its mirror (the release's
    .caffemodel, same layer names) is served; build_model loads it with Caffe's inputs."""
    model = fcnseg.build_model("fcn8s_vgg16", num_classes=21, width=WIDTH)
    g = torch.Generator().manual_seed(0)
    want = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    layers: dict[str, list] = {}
    for key, value in want.items():
        layers.setdefault(key.rsplit(".", 1)[0], []).append(value.numpy())
    kinds = {n: "Deconvolution" if n.startswith("upscore") else "Convolution" for n in layers}
    path = write_caffemodel(tmp_path / "release.caffemodel",
                            [(n, kinds[n], b) for n, b in layers.items()])  # fmt: skip
    Handler.files["fcn8s-release.caffemodel"] = path
    entry = W.WEIGHTS["fcn8s_vgg16_voc"]
    assert [s.format for s in entry.sources] == ["pth", "caffemodel"]
    mirror = replace(entry.mirrors[0], url=server + "/files/fcn8s-release.caffemodel")
    dead = replace(entry, url=server + "/404.bin", mirrors=(mirror,))
    monkeypatch.setitem(W.WEIGHTS, entry.name, dead)
    loaded = fcnseg.build_model("fcn8s_vgg16", width=WIDTH, weights=entry.name)
    for key, value in want.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.preprocessing == W.CAFFE_BGR
    assert _listing(cache) == ["fcn8s-heavy-pascal.caffemodel"]


def test_models_command_lists_the_release(capsys):
    assert main(["models", "--weights"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]  # the nets' table, before the weights' list
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    for name in fcnseg.reference_nets():
        assert name in rows
    for name, file in RELEASE_FILES.items():
        assert f"{file}.caffemodel" in rows[name]
    assert "none published" in rows["nyud-fcn32s-color-d"]
    assert "sem 33 + geo 3" in rows["siftflow-fcn16s"] and "hha" in rows["nyud-fcn32s-color-hha"]
