"""The training input pipeline: which images each step takes, on which process, and how they
reach it (DataLoader worker processes, pinned memory, prefetch).

Data order is a pure function of (seed, step): step s of epoch e takes its images from a
permutation seeded by (seed, e). The random transforms of a step (crops, flips, scales) draw
from a generator seeded by (seed, step) too, inside whichever process builds the batch, so a
run gives the same batches with 0 or N worker processes, and a run resumed at step s (after a
SIGKILL too) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

__all__ = [
    "ChecksDone",
    "Dist",
    "StepBatches",
    "default_workers",
    "labelled_pixels",
    "step_indices",
]


class ChecksDone(BaseException):
    """A command's checks passed in the --nproc launcher's check run (`Dist.checks_done`).
    BaseException: cleanup handlers run (and re-raise), error handlers do not catch it."""


def step_indices(step: int, n: int, batch: int, seed: int) -> list[int]:
    """The dataset indices of global step `step`: a fresh permutation every epoch."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if batch > n:  # tiny datasets: wrap around
        perm = perm.repeat(math.ceil(batch / n))
    return perm[pos * batch : (pos + 1) * batch].tolist()


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    checking: bool = False  # --nproc's check run (cli.launch): no process group, no work

    @classmethod
    def from_env(cls, device: str) -> Dist:
        check = os.environ.get("FCNSEG_NPROC_CHECK")  # --nproc's check run (cli.launch)
        if check:
            return cls(0, int(check), checking=True)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def checks_done(self) -> None:
        """Where a command's checks end and its work begins: --nproc's check run stops here
        (ChecksDone); elsewhere nothing."""
        if self.checking:
            raise ChecksDone

    def shard(self, dataset):
        """This process's share of `dataset`: items rank, rank + world, ... (uneven shares are
        fine: every item is scored once, none twice)."""
        if self.world == 1:
            return dataset
        return torch.utils.data.Subset(dataset, range(self.rank, len(dataset), self.world))

    def all_reduce(self, result):
        """Sum `evaluate`'s confusion matrices (one, or one per head) over the processes."""
        if self.world > 1:
            for cm in result.values() if isinstance(result, dict) else [result]:
                cm.all_reduce()
        return result

    def gather(self, items: list) -> list:
        """Every process's list, concatenated on rank 0 in rank order (others get [])."""
        if self.world == 1:
            return items
        import torch.distributed as dist

        out: list = [None] * self.world if self.rank == 0 else None
        dist.gather_object(items, out, dst=0)
        return [x for part in out for x in part] if self.rank == 0 else []

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t)


def labelled_pixels(targets: list, dist: Dist) -> float | dict:
    """Labelled pixels of a whole step (all processes): per head for dict targets."""
    if isinstance(targets[0], dict):
        return {k: max(dist.sum(float(sum(int((t[k] != 255).sum()) for t in targets))), 1.0)
                for k in targets[0]}  # fmt: skip
    return max(dist.sum(float(sum(int((t != 255).sum()) for t in targets))), 1.0)


class StepBatches(torch.utils.data.Dataset):
    """Item i: (step, this process's micro-batches of step `start + i`, collated).

    A DataLoader over it (batch_size=None, in order) runs the decoding and transforms in its
    worker processes; each item seeds the global RNG from (seed, step) for its transforms,
    inside `fork_rng`, so the main process's RNG (dropout) is not touched.
    """

    def __init__(self, data, start: int, steps: int, batch: int, micro: int, seed: int,
                 dist: Dist):  # fmt: skip
        self.data, self.start, self.steps = data, start, steps
        self.batch, self.micro, self.seed, self.dist = batch, micro, seed, dist

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __getitem__(self, i: int):
        from .data.build import collate_items

        step = self.start + i
        idx = step_indices(step, len(self.data), self.batch, self.seed)
        r, w = self.dist.rank, self.dist.world
        mine = idx[r * self.batch // w : (r + 1) * self.batch // w]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + step) % 2**63)
            chunks = [collate_items(self.data, mine[k : k + self.micro])
                      for k in range(0, len(mine), self.micro)]  # fmt: skip
        return step, chunks

    def loader(self, workers: int, pin: bool):
        """The steps in order, built by `workers` processes (0: in this one), 2 steps ahead each.
        A file a worker cannot read raises its own error here, as with 0 workers."""
        from .data.build import CatchErrors, Relayed

        return Relayed(torch.utils.data.DataLoader(
            CatchErrors(self) if workers else self, batch_size=None, shuffle=False,
            num_workers=workers, pin_memory=pin, prefetch_factor=2 if workers else None,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed),  # not the global RNG (dropout)
        ))  # fmt: skip


def default_workers(device: torch.device, world: int) -> int:
    """--workers when not given: none on a CPU (its cores do the training), else the CPU's cores
    shared by the processes of this machine, at most 8 each (torchvision's reference uses 8-16)."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 1) // max(world, 1) - 1))
