"""fcnseg serve: a real uvicorn server on 127.0.0.1 (a thread, or a subprocess for SIGTERM)
answering with fcnseg predict's own label PNG, batching concurrent same-size requests, and
refusing every hostile request with its JSON error and HTTP status."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import randomize_
from PIL import Image
from serve_helpers import Held, free_port, photo, png, running, wait_until

from fcnseg import build_model, build_reference
from fcnseg.checkpoint import load_model, model_state, save_checkpoint
from fcnseg.cli import main
from fcnseg.cli.serve import TOKEN_ENV, _named
from fcnseg.data.io import mask_png
from fcnseg.predict import predict
from fcnseg.serve import Limits, ServedModel, Service, exposure_warning, negotiate
from fcnseg.serve.limits import ServeError

NAMES = ["background", "sky", "tree", "road", "car"]
CPU = torch.device("cpu")
TOKEN = "a-test-token-of-24-chars"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tiny = randomize_(build_model("fcn8s_vgg16", num_classes=5, width=0.0625)).eval()
    path = tmp_path_factory.mktemp("serve") / "tiny.pt"
    return save_checkpoint(path, {**model_state(tiny), "class_names": NAMES})


@pytest.fixture(scope="module")
def nets(ckpt):
    torch.manual_seed(0)
    return {
        "tiny": load_model(ckpt)[0],
        "rgbd": randomize_(build_reference("nyud-fcn32s-color-d", width=0.0625)).eval(),
        "sift": randomize_(build_reference("siftflow-fcn8s", width=0.0625)).eval(),
    }


@pytest.fixture(scope="module")
def url(nets):
    """Every kind of net; a 0.1 s batch window (two requests sent together share a pass)."""
    models = {k: ServedModel(k, m, CPU) for k, m in nets.items()}
    with running(Service(models, Limits(batch_window=0.1))) as base:
        yield base


@pytest.fixture(scope="module")
def strict(nets):
    """Small limits, a token, Host names checked, and a net whose passes can be held."""
    held = Held(nets["tiny"])
    limits = Limits(max_upload_bytes=64 * 1024, max_pixels=64 * 64, queue=3, timeout=4.0,
                    batch_window=0.0)  # fmt: skip
    service = Service({"held": ServedModel("held", held, CPU)}, limits, token=TOKEN,
                      allowed_hosts=("127.0.0.1", "localhost"))  # fmt: skip
    with running(service) as base:
        yield base, held, service


def _post(base, image: bytes, *, params=None, accept=None, files=None, headers=None):
    h = {"Accept": accept} if accept else {}
    h.update(headers or {})
    files = {"image": ("x.png", image), **(files or {})}
    return httpx.post(f"{base}/predict", params=params, files=files, headers=h, timeout=60)


def _labels(body: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(body)))


def test_png_equals_fcnseg_predict_and_json_counts_equal_it(url, ckpt, nets, tmp_path):
    image = photo(45, 61)
    Image.fromarray(image).save(tmp_path / "p.png")
    assert main(["predict", str(tmp_path / "p.png"), "--model", str(ckpt), "-o",
                 str(tmp_path / "out"), "--no-overlay"]) == 0  # fmt: skip
    written = (tmp_path / "out" / "p.png").read_bytes()
    r = _post(url, (tmp_path / "p.png").read_bytes(), params={"model": "tiny"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == written  # byte for byte
    j = _post(url, png(image), params={"model": "tiny"}, accept="application/json").json()
    assert j["model"] == "tiny" and j["size"] == {"height": 45, "width": 61}
    assert {"upload", "decode", "queue", "inference", "total"} <= set(j["timings_ms"])
    counts = np.bincount(_labels(written).ravel(), minlength=5)
    got = {c["name"]: c["pixels"] for c in j["outputs"]["labels"]["classes"]}
    assert got == {NAMES[i]: int(n) for i, n in enumerate(counts) if n}
    assert len(got) > 1  # random weights: several classes
    models = httpx.get(f"{url}/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny", "rgbd", "sift"]
    assert models[0]["outputs"] == {"labels": NAMES} and models[1]["inputs"] == ["image", "depth"]


def test_rgbd_and_two_head_nets(url, nets):
    rgb = photo(40, 56, 1)
    depth = (np.linspace(900, 4000, 40)[:, None] + np.zeros((1, 56))).astype(np.uint16)
    r = _post(url, png(rgb), params={"model": "rgbd"}, files={"depth": ("d.png", png(depth))})
    assert r.status_code == 200
    assert r.content == mask_png(predict(nets["rgbd"], rgb, depth=depth))
    r = _post(url, png(rgb), params={"model": "rgbd"})
    assert r.status_code == 400 and "'depth'" in r.json()["message"]
    r = _post(url, png(rgb), params={"model": "rgbd"}, files={"depth": ("d.png", png(rgb))})
    assert r.status_code == 400 and r.json()["error"] == "bad_depth"  # an 8-bit picture
    r = _post(url, png(rgb), params={"model": "rgbd"},
              files={"depth": ("d.png", png(depth[:30]))})  # fmt: skip
    assert r.status_code == 400 and "pixel for pixel" in r.json()["message"]
    r = _post(url, png(rgb), params={"model": "tiny"}, files={"depth": ("d.png", png(depth))})
    assert r.status_code == 400 and "RGB photo only" in r.json()["message"]
    want = predict(nets["sift"], rgb)
    for head in ("sem", "geo"):
        r = _post(url, png(rgb), params={"model": "sift", "output": head})
        assert r.status_code == 200 and r.headers["x-fcnseg-output"] == head
        assert r.content == mask_png(want[head])
    assert _post(url, png(rgb), params={"model": "sift"}).content == mask_png(want["sem"])
    j = _post(url, png(rgb), params={"model": "sift"}, accept="application/json").json()
    assert set(j["outputs"]) == {"sem", "geo"}
    assert {c["name"] for c in j["outputs"]["geo"]["classes"]} <= {"sky", "horizontal",
                                                                    "vertical"}  # fmt: skip
    r = _post(url, png(rgb), params={"model": "sift", "output": "depth"})
    assert r.status_code == 400 and "sem, geo" in r.json()["message"]


def test_concurrent_same_size_requests_share_one_pass(url, nets):
    images = [photo(36, 52, k) for k in range(2)]
    before = httpx.get(f"{url}/health").json()
    barrier = threading.Barrier(2)

    def send(a):
        barrier.wait()
        return _post(url, png(a), params={"model": "tiny"})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, images))
    after = httpx.get(f"{url}/health").json()
    assert [r.headers["x-fcnseg-batch"] for r in answers] == ["2", "2"]
    assert after["passes"] - before["passes"] == 1 and after["images"] - before["images"] == 2
    for r, a in zip(answers, images, strict=True):
        assert r.content == mask_png(predict(nets["tiny"], a))


def test_requests_queued_behind_a_pass_run_as_one_batch(strict, nets):
    base, held, _ = strict
    auth = {"Authorization": f"Bearer {TOKEN}"}
    images = [photo(32, 40, k) for k in range(3)]
    held.gate.clear()
    held.batches.clear()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(_post, base, png(images[0]), headers=auth)
        wait_until(lambda: held.batches == [1], what="the first pass")
        rest = [pool.submit(_post, base, png(a), headers=auth) for a in images[1:]]
        wait_until(lambda: httpx.get(f"{base}/health").json()["waiting"] == 2, what="a queue")
        held.gate.set()
        answers = [first.result(), *(f.result() for f in rest)]
    assert held.batches == [1, 2]
    for r, a in zip(answers, images, strict=True):
        assert r.status_code == 200
        assert r.content == mask_png(predict(nets["tiny"], a))


def test_queue_full_timeout_and_dropped_work(strict):
    base, held, service = strict
    auth = {"Authorization": f"Bearer {TOKEN}"}
    held.gate.clear()
    held.batches.clear()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_post, base, png(photo(30, 30)), headers=auth)]
        wait_until(lambda: held.batches == [1], what="a pass")  # then two queue behind it
        futures += [pool.submit(_post, base, png(photo(30, 30, k)), headers=auth)
                    for k in (1, 2)]  # fmt: skip
        wait_until(lambda: service.admitted == 3, what="three admitted")
        r = _post(base, png(photo(30, 30)), headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [504] * 3  # over the 4 s limit
    assert answers[0].json()["error"] == "timeout"
    held.gate.set()
    time.sleep(0.3)
    assert held.batches == [1]  # the two that never started were dropped, not run later
    assert service.admitted == 0


def test_client_leaving_mid_upload_or_in_the_queue_costs_nothing(strict):
    base, held, service = strict
    port = int(base.rsplit(":", 1)[1])
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
            f"{TOKEN}\r\nContent-Type: multipart/form-data; boundary=xx\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", port)) as s:  # half an upload, then gone
        s.sendall((head + "Content-Length: 60000\r\n\r\n--xx\r\n").encode() + b"\0" * 9000)
        wait_until(lambda: service.admitted == 1, what="the upload admitted")
    wait_until(lambda: service.admitted == 0, what="the upload forgotten")
    held.gate.clear()
    held.batches.clear()
    body = (b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            + png(photo(20, 20)) + b"\r\n--xx--\r\n")  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            _post, base, png(photo(24, 24)), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        wait_until(lambda: held.batches == [1], what="a pass")
        with socket.create_connection(("127.0.0.1", port)) as s:  # queued, then gone
            s.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            wait_until(lambda: httpx.get(f"{base}/health").json()["waiting"] == 1, what="queue")
        wait_until(lambda: service.admitted == 1, what="the queued request forgotten")
        held.gate.set()
        assert busy.result().status_code == 200
    time.sleep(0.2)
    assert held.batches == [1] and service.admitted == 0


def _bomb(w: int = 40000, h: int = 40000) -> bytes:
    """A PNG whose header declares w x h pixels (1.6 Gpx) over a few bytes of data: a
    decompression bomb is refused from its header, before any decoding."""
    data = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", w, h)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_every_hostile_request_gets_its_status(strict):
    base, _, _ = strict
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = png(photo(30, 30))

    def post(image=good, **kw):
        kw["headers"] = {**auth, **kw.get("headers", {})}
        return _post(base, image, **kw)

    cases = {
        "upload_too_large": (413, post(b"\x89PNG" + os.urandom(100_000))),
        "too_many_pixels": (413, post(png(photo(80, 80)))),
        "bomb": (413, post(_bomb())),
        "not_an_image": (415, post(b"#!/bin/sh\nrm -rf /\n")),
        "truncated_image": (400, post(png(photo(30, 30))[:200])),
        "missing_image": (400, httpx.post(f"{base}/predict", headers=auth,
                                          files={"depth": ("d", good)})),
        "unknown_field": (400, post(files={"../../etc/passwd": ("x", b"1")})),
        "not_multipart": (415, httpx.post(f"{base}/predict", content=good,
                                          headers={**auth, "Content-Type": "image/png"})),
        "unknown_model": (404, post(params={"model": "../../etc/passwd"})),
        "not_acceptable": (406, post(accept="text/html")),
        "no_token": (401, _post(base, good)),
        "wrong_token": (401, _post(base, good, headers={"Authorization": "Bearer " + "x" * 24})),
        "other_origin": (403, post(headers={"Origin": "http://evil.example"})),
        "bad_host": (400, post(headers={"Host": "evil.example"})),
        "not_found": (404, httpx.get(f"{base}/static/..%2F..%2Fpyproject.toml")),
        "no_route": (404, httpx.get(f"{base}/etc/passwd")),
    }  # fmt: skip
    for name, (status, r) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text[:300])
        body = r.json()
        assert body["status"] == status and body["message"], name
        assert "/tmp" not in body["message"] and "Traceback" not in r.text, name
    assert cases["bomb"][1].json()["error"] == "too_many_pixels"
    assert cases["truncated_image"][1].json()["error"] == "truncated_image"
    assert "www-authenticate" in cases["no_token"][1].headers
    assert httpx.get(f"{base}/models").status_code == 401
    assert httpx.get(f"{base}/models", headers=auth).status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200  # no token: no data
    assert post().status_code == 200  # alive after all that


def test_accept_negotiation():
    assert negotiate(None) == "png" and negotiate("*/*") == "png"
    assert negotiate("application/json") == "json"
    assert negotiate("image/png;q=0.5, application/json") == "json"
    assert negotiate("image/*, application/json;q=0.9") == "png"
    with pytest.raises(ServeError) as e:
        negotiate("text/html, image/png;q=0")
    assert e.value.status == 406


def test_cli_options_warnings_and_names(ckpt, capsys, monkeypatch):
    w = exposure_warning("0.0.0.0", 8000, token=False)
    assert "every machine" in w and "WITHOUT a token" in w and TOKEN_ENV in w
    assert exposure_warning("127.0.0.1", 8000, False) is None
    assert exposure_warning("::1", 8000, False) is None
    assert "needs the token" in exposure_warning("10.0.0.5", 80, token=True)
    assert _named([str(ckpt), "a=fcn8s_vgg16"]) == {"tiny": str(ckpt), "a": "fcn8s_vgg16"}
    with pytest.raises(ValueError, match="taken"):
        _named([str(ckpt), f"tiny={ckpt}"])
    with pytest.raises(ValueError, match="letters, digits"):
        _named([f"a/b={ckpt}"])
    assert main(["serve", "--model", str(ckpt), "--token", "short"]) == 1
    assert "16 or more" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, "short")
    assert main(["serve", "--model", str(ckpt)]) == 1
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert TOKEN_ENV in text and "127.0.0.1" in text and "413" in text


_SLOW_SERVER = """
import sys, time
import fcnseg.serve.service as s
run = s.Service.run
def slow(self, key, samples):
    time.sleep(2.0)
    return run(self, key, samples)
s.Service.run = slow
from fcnseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_and_exits_0(ckpt):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SERVER, "serve", "--model", str(ckpt),
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:

        def up():
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                return False

        wait_until(up, timeout=60, what="the server")
        with ThreadPoolExecutor(1) as pool:
            flight = pool.submit(_post, base, png(photo(30, 40)))
            wait_until(lambda: httpx.get(f"{base}/health").json()["admitted"] == 1,
                       what="a request in flight")  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            wait_until(lambda: httpx.get(f"{base}/health").status_code == 503, what="draining")
            late = _post(base, png(photo(30, 40)))
            assert late.status_code == 503 and late.json()["error"] == "shutting_down"
            assert flight.result().status_code == 200
            assert flight.result().headers["content-type"] == "image/png"
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 15
        assert "SIGTERM" in err and "127.0.0.1:" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
