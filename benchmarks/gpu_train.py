"""Training step on CUDA: the model's forward vs FastTrainFCN (issue 13), fp32 and AMP.

FCN-8s / FCN-32s VGG16, reference layout, batch 1 (and --batch), heavy recipe (SGD momentum
0.99, summed loss, upsamplers frozen), random weights, inputs and labels. Per row: seconds per
step (median of --repeats after --warmup steps, torch.cuda.synchronize around each), images/s,
peak allocated GPU memory (torch.cuda.max_memory_allocated, reset per row), and fast/plain.
AMP: autocast bf16 and fp16 (fp16 with a GradScaler, as the engine). Also a gradient check
(fp32, TF32 off): FastTrainFCN's loss and worst per-layer gradient vs the model's.

Run (one command): python benchmarks/gpu_train.py [--sizes 500x500 375x500] [--repeats 10]
Without CUDA it stops at once with exit status 2 and says so.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import fcnseg
from fcnseg.fast.train import FastTrainFCN


def build(name: str, h: int, w: int, batch: int, device, channels_last: bool):
    torch.manual_seed(0)
    model = fcnseg.build_model(name, num_classes=21).to(device).train()
    for k, p in model.named_parameters():
        if k.startswith("upscore"):
            p.requires_grad_(False)
        elif k.startswith("score"):
            torch.nn.init.normal_(p, std=1e-3)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(batch, 3, h, w, generator=g) * 50).to(device)
    y = torch.randint(0, 21, (batch, h, w), generator=g)
    y[torch.rand(batch, h, w, generator=g) < 0.1] = 255
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x, y.to(device)


def time_step(model, net, x, y, amp, repeats: int, warmup: int) -> tuple[float, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-10, momentum=0.99, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", amp, enabled=amp is not None):
            loss = F.cross_entropy(net(x).float(), y, ignore_index=255, reduction="sum")
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 1024**3


def check(name: str, h: int, w: int, device) -> str:
    """fp32 (TF32 off): loss and worst per-layer gradient, fast vs the model."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model, x, y = build(name, h, w, 1, device, False)
    out = []
    for net in (model, FastTrainFCN(model)):
        torch.manual_seed(5)
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y, ignore_index=255, reduction="sum")
        loss.backward()
        grads = {k: p.grad.double() for k, p in model.named_parameters() if p.grad is not None}
        out.append((loss.item(), grads))
    (l0, g0), (l1, g1) = out
    worst = max((((g1[k] - g0[k]).abs().max() / g0[k].abs().max()).item(), k) for k in g0)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    return f"loss rel {abs(l1 - l0) / abs(l0):.1e}, worst gradient {worst[0]:.1e} ({worst[1]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["fcn8s_vgg16", "fcn32s_vgg16"])
    parser.add_argument("--sizes", nargs="*", default=["500x500", "375x500"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_train.py needs a CUDA GPU: torch.cuda.is_available() is False here "
              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Run it on a "
              "GPU machine; benchmarks/train_step.py measures the same on a CPU.",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}, batch {args.batch}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print("| model | input | precision | forward | s/step | images/s | peak GB | fast/plain |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name in args.models:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            for label, amp in (("fp32", None), ("bf16 AMP", torch.bfloat16),
                               ("fp16 AMP", torch.float16)):  # fmt: skip
                plain = None
                for fast in (False, True):
                    model, x, y = build(name, h, w, args.batch, device, args.channels_last)
                    net = FastTrainFCN(model) if fast else model
                    secs, peak = time_step(model, net, x, y, amp, args.repeats, args.warmup)
                    ratio = f"{plain / secs:.2f}x" if plain else ""
                    plain = plain or secs
                    print(f"| {name} | {h}x{w} | {label} | "
                          f"{'FastTrainFCN' if fast else 'model'} | {secs:.4f} | "
                          f"{args.batch / secs:.1f} | {peak:.2f} | {ratio} |",
                          flush=True)  # fmt: skip
                    del model, net, x, y
                    torch.cuda.empty_cache()
            print(f"\ncheck {name} {h}x{w} fp32: {check(name, h, w, device)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
