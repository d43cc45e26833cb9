"""fcnseg serve under concurrent load on 127.0.0.1, against one `fcnseg.predict` loop.

Starts `fcnseg serve` in a subprocess on a random-weight checkpoint, then:

1. the baseline: `fcnseg.predict` called in a loop in this process (one image at a time), in
   the main thread and in a worker thread (as the server runs its passes: on a loaded 2-core
   machine torch was 10x slower in the main thread, its OpenMP threads fighting the load);
   the faster loop is the ratios' reference;
2. throughput and p50/p95/p99 latency with 1, 8 and 32 concurrent clients (threads with
   keep-alive connections), all good same-size images (dynamic batching can work);
3. the load test: 32 clients x 20 requests, mixed good and hostile inputs (not an image,
   truncated, too many pixels, a header bomb, over the upload cap, unknown model, missing
   field, unacceptable Accept); every good answer is checked byte for byte against
   `fcnseg.predict`'s label PNG, every hostile one for its HTTP status;
4. the server's RSS: warmed up (after step 2's first level), its peak (VmHWM), and after the
   load test and 3 s idle (should be within 10 % of warmed up).

Prints tables; asserts nothing but counts what went wrong.

    .venv/bin/python benchmarks/serve.py [--width 0.25] [--size 256x320] [--requests 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import free_port, photo, png, wait_until

from fcnseg import build_model
from fcnseg.checkpoint import load_model, model_state, save_checkpoint
from fcnseg.data.io import mask_png
from fcnseg.predict import predict


def rss(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def pct(values, q) -> float:
    return float(np.percentile(values, q)) * 1000


def hostile(max_pixels: int, cap: int) -> list[tuple[str, dict, int]]:
    """(name, request kwargs, expected status)."""
    good = png(photo(16, 16))
    side = int(max_pixels**0.5) + 8
    big = png(np.zeros((side, side, 3), np.uint8))
    bomb = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    bomb[16:24] = struct.pack(">II", 50000, 50000)
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    return [
        ("not an image", {"files": {"image": ("x", b"<?php system($_GET[1]); ?>")}}, 415),
        ("truncated", {"files": {"image": ("x", good[: len(good) // 2])}}, 400),
        ("too many pixels", {"files": {"image": ("x", big)}}, 413),
        ("header bomb", {"files": {"image": ("x", bytes(bomb))}}, 413),
        ("over the upload cap", {"files": {"image": ("x", os.urandom(cap + 1000))}}, 413),
        ("unknown model", {"files": {"image": ("x", good)}, "params": {"model": "../x"}}, 404),
        ("no image field", {"files": {"depth": ("x", good)}}, 400),
        ("Accept text/html", {"files": {"image": ("x", good)},
                              "headers": {"Accept": "text/html"}}, 406),
    ]  # fmt: skip


def run_clients(base: str, clients: int, jobs: list, check) -> tuple[list[float], Counter, float]:
    """jobs split over `clients` threads, each with its own keep-alive connection."""
    shares = [jobs[i::clients] for i in range(clients)]
    latencies, outcomes, lock = [], Counter(), threading.Lock()

    def client(share):
        with httpx.Client(base_url=base, timeout=120) as c:
            for kwargs, expect in share:
                t0 = time.perf_counter()
                try:
                    r = c.post("/predict", **kwargs)
                    ok = check(r, expect)
                except httpx.TransportError as e:
                    ok = f"transport error {type(e).__name__}"
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    outcomes[ok] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return latencies, outcomes, time.perf_counter() - t0


def loop(model, images, n: int) -> list[float]:
    """Seconds of each of n `fcnseg.predict` calls, one after another (the baseline)."""
    lat = []
    for k in range(n):
        t1 = time.perf_counter()
        predict(model, images[k % len(images)])
        lat.append(time.perf_counter() - t1)
    return lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fcn8s_vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", default="256x320", help="HxW of the good images")
    p.add_argument("--requests", type=int, default=64, help="good requests per client level")
    p.add_argument("--fast", action="store_true", help="serve with --fast (FastFCN)")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
               platform.processor())  # fmt: skip
    print(f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()}"
          f" threads), load average before: {os.getloadavg()}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="fcnseg-serve-bench-"))
    torch.manual_seed(0)
    net = build_model(args.model, num_classes=21, width=args.width)
    ckpt = save_checkpoint(tmp / "net.pt", model_state(net))
    model = load_model(ckpt)[0]
    images = [photo(h, w, k) for k in range(8)]
    bodies = [png(a) for a in images]
    want = [mask_png(predict(model, a)) for a in images]  # also warms this process up

    lat = loop(model, images, args.requests)
    with ThreadPoolExecutor(1) as pool:  # as the server runs its passes: off the main thread
        lat_t = pool.submit(loop, model, images, args.requests).result()
    base_tp = max(args.requests / sum(lat), args.requests / sum(lat_t))  # the faster
    print(
        f"\nmodel {args.model} width {args.width}, images {h}x{w}{' --fast' if args.fast else ''}"
    )
    print("| run | clients | requests | img/s | vs loop | p50 ms | p95 ms | p99 ms | failures |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, la in (("main thread", lat), ("a worker thread", lat_t)):
        tp = args.requests / sum(la)
        print(f"| fcnseg.predict loop, {name} | 1 | {args.requests} | {tp:.1f} | "
              f"{tp / base_tp:.2f} | {pct(la, 50):.0f} | {pct(la, 95):.0f} | "
              f"{pct(la, 99):.0f} | 0 |")  # fmt: skip

    port, cap_mb, max_px = free_port(), 1, 512 * 512
    cmd = [sys.executable, "-m", "fcnseg", "serve", "--model", f"net={ckpt}", "--port",
           str(port), "--max-upload-mb", str(cap_mb), "--max-pixels", str(max_px), "--queue",
           "64", "--timeout", "120", "--log-level", "warning"]  # fmt: skip
    cmd += ["--fast"] if args.fast else []
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def up():
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=120, what="the server")

        def check(r, expect):
            if isinstance(expect, int):
                return "ok" if r.status_code == expect else f"{expect} -> {r.status_code}"
            return "ok" if r.status_code == 200 and r.content == expect else f"bad {r.status_code}"

        for clients in (1, 8, 32):
            jobs = [({"files": {"image": ("x", bodies[k % 8])}}, want[k % 8])
                    for k in range(max(args.requests, clients))]  # fmt: skip
            run_clients(base, clients, jobs[: clients * 2], check)  # warm up this level
            before = httpx.get(f"{base}/health").json()
            lat, outcomes, secs = run_clients(base, clients, jobs, check)
            after = httpx.get(f"{base}/health").json()
            batch = (after["images"] - before["images"]) / max(
                1, after["passes"] - before["passes"]
            )
            bad = sum(n for k, n in outcomes.items() if k != "ok")
            tp = len(jobs) / secs
            print(f"| serve (mean batch {batch:.2f}) | {clients} | {len(jobs)} | {tp:.1f} | "
                  f"{tp / base_tp:.2f} | {pct(lat, 50):.0f} | {pct(lat, 95):.0f} | "
                  f"{pct(lat, 99):.0f} | {bad} |")  # fmt: skip
        time.sleep(3)
        warm = rss(server.pid)["VmRSS"]  # warmed up: every batch size seen

        # the load test: 32 clients x 20 requests, half good, half hostile
        bad_ones = hostile(max_px, cap_mb * 1024 * 1024)
        rng = random.Random(0)
        jobs = []
        for k in range(32 * 20):
            if k % 2:
                _, kwargs, status = bad_ones[rng.randrange(len(bad_ones))]
                jobs.append((kwargs, status))
            else:
                jobs.append(({"files": {"image": ("x", bodies[k % 8])}}, want[k % 8]))
        rng.shuffle(jobs)
        lat, outcomes, secs = run_clients(base, 32, jobs, check)
        alive = httpx.get(f"{base}/health").status_code == 200
        time.sleep(3)
        mem = rss(server.pid)
        print(f"\nload test: 32 clients x 20 requests (good and hostile mixed) in {secs:.1f} s: "
              f"{dict(outcomes)}; server alive after: {alive}")  # fmt: skip
        print(
            f"server RSS: warmed up {warm:.0f} MiB, peak {mem['VmHWM']:.0f} MiB, after the "
            f"load test + 3 s {mem['VmRSS']:.0f} MiB ({100 * (mem['VmRSS'] / warm - 1):+.1f} %)"
        )
        lat = loop(model, images, args.requests)
        print(
            f"predict loop again after (main thread): {args.requests / sum(lat):.1f} img/s, p50 "
            f"{pct(lat, 50):.0f} ms (the ratios use the faster loop before)"
        )
        print(f"load average after: {os.getloadavg()}")
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
        print(f"server exit code after SIGTERM: {server.returncode}")


if __name__ == "__main__":
    main()
