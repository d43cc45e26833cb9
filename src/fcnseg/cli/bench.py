"""`fcnseg bench`: Time inference paths side by side: eager, FastFCN (exact), bf16 (see
benchmarks/)."""

from __future__ import annotations

from .common import WIDTH, ranged


def add(sub) -> None:
    s = sub.add_parser("bench", help=run.__doc__, description=run.__doc__)
    s.add_argument("--model", default="fcn8s_vgg16",
                   help="a net of `fcnseg models` (the release's 15 included: the input is "
                   "built as the net takes it, 4 channels or colour + HHA; two heads get a "
                   "column each)")  # fmt: skip
    s.add_argument("--size", type=ranged(int, 1, 8192), default=500, help="square input side")
    s.add_argument("--width", type=WIDTH, default=1.0, help="channel multiplier")
    s.add_argument("--repeats", type=ranged(int, 1, 1000), default=5)
    s.add_argument("--threads", type=ranged(int, 1, 1024),
                   help="torch threads (default: the CPUs this process may use: its affinity "
                   "and cgroup quota, not the host's cores)")  # fmt: skip
    s.add_argument("--busy", type=ranged(int, 0, 256), default=0, metavar="N",
                   help="run N single-thread busy processes beside the measurement (a loaded "
                   "machine: a data-loading worker, a browser, a second job)")  # fmt: skip
    s.add_argument("--retune", action="store_true", help="forget FastFCN's cached kernel "
                   "measurements (~/.cache/fcnseg/kernels.json) and measure again")  # fmt: skip
    s.set_defaults(func=run)


def run(args) -> int:
    """Time inference paths side by side: eager, FastFCN (exact), bf16 (see benchmarks/)."""
    from ..bench import bench_inference

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..threads import busy_cores

    with busy_cores(args.busy):
        table = bench_inference(args.model, args.size, repeats=args.repeats, width=args.width,
                                retune=args.retune)  # fmt: skip
    busy = f" with {args.busy} busy process{'es' if args.busy > 1 else ''} beside" * bool(args.busy)
    print(table + (f"\nmeasured{busy}" if busy else ""))
    return 0
