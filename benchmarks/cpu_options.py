"""The CPU options the benchmarks share: --threads and --busy (reproduce a shared machine)."""

from __future__ import annotations

import argparse

import torch

from fcnseg.threads import usable_cpus


def add_cpu_options(parser: argparse.ArgumentParser) -> None:
    """--threads (default: torch's count, at most the CPUs this process may use) and --busy N
    (N single-thread busy processes beside every measurement: fcnseg.threads.busy_cores)."""
    parser.add_argument("--threads", type=int, default=min(torch.get_num_threads(), usable_cpus()))
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="N single-thread busy processes beside every measurement")  # fmt: skip
