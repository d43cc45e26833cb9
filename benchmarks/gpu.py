"""FCN-8s VGG16 on a CUDA GPU in one command: inference and training images/s, peak memory,
and the CUDA paths' tests.

    python benchmarks/gpu.py                 # the whole table, then pytest -k cuda
    python benchmarks/gpu.py --no-compile    # skip the torch.compile rows (compiling is slow)

Reference layout, 500x500 input, random weights with non-zero score layers (the argmax
agreement column compares each row with the fp32 NCHW row on the same input). Rows: fp32 NCHW,
fp32 channels_last, AMP (bf16 where the GPU supports it, else fp16 with a GradScaler in
training) + channels_last, and the same compiled with torch.compile (if it helps, it shows
here; its compile time is printed under the table). Each row: median of --repeats timed
steps after --warmup ones (CUDA-synchronised), images/s, and torch.cuda.max_memory_allocated
during that row. Training: SGD with momentum, pixel cross-entropy, batch --train-batch.
Then the tests that exercise CUDA paths (pytest -k cuda) run, and their summary is printed.

Without CUDA it stops at once with exit status 2 and says why (--allow-cpu runs the same code
on the CPU, at a small size, only to check the script itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark script
import inference

ROOT = Path(__file__).resolve().parent.parent


def make_model() -> torch.nn.Module:
    """inference.py's FCN-8s (same weights), in training mode."""
    return inference.make_model().train()


class Runner:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        from fcnseg.timing import peak_rss_gb

        return peak_rss_gb()

    def time(self, fn, warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)


def variants(
    amp_dtype: torch.dtype, compile_: bool
) -> list[tuple[str, bool, torch.dtype | None, bool]]:
    """(label, channels_last, autocast dtype or None, compiled)."""
    amp = "bf16" if amp_dtype == torch.bfloat16 else "fp16"
    rows = [
        ("fp32 NCHW", False, None, False),
        ("fp32 channels_last", True, None, False),
        (f"AMP {amp} + channels_last", True, amp_dtype, False),
    ]
    if compile_:
        rows.append((f"AMP {amp} + channels_last + torch.compile", True, amp_dtype, True))
    return rows


def bench(args, run: Runner) -> list[str]:
    dev = run.device
    amp_dtype = torch.bfloat16
    if run.cuda and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    size, lines, notes = args.size, [], []
    x = torch.randn(args.batch, 3, size, size, device=dev) * 50
    xt = torch.randn(args.train_batch, 3, size, size, device=dev) * 50
    target = torch.randint(0, 21, (args.train_batch, size, size), device=dev)
    ref_arg = None
    for label, cl, dtype, compiled in variants(amp_dtype, args.compile):
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = make_model().to(dev).to(memory_format=fmt)
        xi, xtr = x.contiguous(memory_format=fmt), xt.contiguous(memory_format=fmt)
        fwd = model
        if compiled:
            t = time.perf_counter()
            fwd = torch.compile(model)
        autocast = torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

        # inference
        model.eval()
        run.reset_peak()

        @torch.no_grad()  # not inference_mode: its tensors cached by layers break training
        def infer(fwd=fwd, xi=xi, autocast=autocast):
            with autocast:
                return fwd(xi)

        if compiled:
            infer()
            run.sync()
            notes.append(f"{label}: compile + first inference call {time.perf_counter() - t:.1f} s")
        secs = run.time(infer, args.warmup, args.repeats)
        out = infer().float().argmax(1)
        ref_arg = out if ref_arg is None else ref_arg
        agree = (out == ref_arg).float().mean().item() * 100
        infer_peak = run.peak_gb()

        # training
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-10, momentum=0.99)
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

        def step(fwd=fwd, xtr=xtr, autocast=autocast, opt=opt, scaler=scaler):
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(fwd(xtr).float(), target, ignore_index=255)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        run.reset_peak()
        if compiled:
            t = time.perf_counter()
            step()
            run.sync()
            notes.append(f"{label}: compile + first training step {time.perf_counter() - t:.1f} s")
        train_secs = run.time(step, args.warmup, args.repeats)
        lines.append(
            f"| {label} | {args.batch / secs:.1f} | {infer_peak:.2f} | {agree:.2f}% | "
            f"{args.train_batch / train_secs:.1f} | {run.peak_gb():.2f} |"
        )
        print(lines[-1], flush=True)
        del model, fwd, opt
    return [*lines, "", *notes]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-tests", dest="tests", action="store_false")
    parser.add_argument("--allow-cpu", action="store_true", help="check the script on the CPU")
    args = parser.parse_args()
    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    elif args.allow_cpu:
        device, name = torch.device("cpu"), "CPU (script check only, not a GPU figure)"
    else:
        print(
            f"benchmarks/gpu.py needs a CUDA GPU: torch {torch.__version__} sees none "
            "(torch.cuda.is_available() is False; a '+cpu' torch build has no CUDA). Run it on "
            "a machine with an NVIDIA GPU and a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/).",
            file=sys.stderr,
        )
        return 2
    cuda_ver = torch.version.cuda or "-"
    print(f"# FCN-8s VGG16 on {name}\n\ntorch {torch.__version__}, CUDA {cuda_ver}, "
          f"reference layout, {args.size}x{args.size}, inference batch {args.batch}, training "
          f"batch {args.train_batch} (SGD momentum), median of {args.repeats} after "
          f"{args.warmup} warm-up, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          "\n")  # fmt: skip
    print("| path | inference images/s | inference peak GB | same argmax as fp32 NCHW "
          "| training images/s | training peak GB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    notes = bench(args, Runner(device))
    print("\n".join(line for line in notes if not line.startswith("|")))
    if not args.tests:
        return 0
    print("\nCUDA paths' tests (pytest -k cuda):", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda", str(ROOT / "tests")]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
