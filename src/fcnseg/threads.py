"""How many cores this process may really use, and load beside a measurement.

`usable_cpus()`: the CPUs the process may run on (its affinity mask, as `taskset` or a
container's cpuset set it), capped by a cgroup CPU quota (a container given "1 CPU" on a
16-core host: cgroup v2 `cpu.max` "100000 100000", v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
never below 1. `os.cpu_count()` and torch's default thread count see the host's cores instead:
16 threads on 1 CPU of quota take turns on it, each waiting for the others at every parallel
region.

`limit_threads()`: lowers torch's intra-op threads to `usable_cpus()` when torch would use
more, unless the user chose a count (OMP_NUM_THREADS / MKL_NUM_THREADS / FCNSEG_THREADS in the
environment). It only ever lowers; `torch.set_num_threads` and `--threads` called later win.

`fit_to_free_cores()`: for the length of a block, no more threads than the usable CPUs that
other programs leave free right now (counted from the kernel's run queue, /proc/loadavg, minus
this process's own running threads: ~20 us). On a shared machine a parallel region waits for
its slowest thread, and a thread that shares its core with another program is the slowest by
far: with one core of two busy, one thread finishes sooner than two. Quiet: nothing changes.

`StepThreads()`: for a block run again and again (a training step, an evaluation batch), the
faster of torch's thread count and the free cores' count, measured on the blocks themselves,
whenever other programs hold some of the usable cores (quiet: torch's count, nothing
measured). Which one wins depends on the work: beside one busy spin loop on 2 cores, the
demo's small FCN step (width 1/8, 128x128, batch 16) ran 2.1x faster on 1 thread than on 2,
FastTrainFCN's FCN-8s 500x500 step 1.5x faster, but the plain FCN-8s 500x500 step 2-7% slower
(benchmarks/RESULTS.md).

`busy_cores(n)`: n single-thread busy processes beside a measurement (a data-loading worker, a
browser tab, a second job), so that anyone can reproduce a "one core busy" figure.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "StepThreads",
    "busy_cores",
    "cgroup_cpu_limit",
    "fit_to_free_cores",
    "limit_threads",
    "others_running",
    "step_threads",
    "threads_pinned",
    "usable_cpus",
]

_USER_CHOICE = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FCNSEG_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (1.5 for "150000 100000"), or None for
    no quota. Reads cgroup v2's cpu.max, else v1's cpu.cfs_quota_us / cpu.cfs_period_us."""
    root = Path(root)
    v2 = _read(root / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota == "max":
            return None
        try:
            q, p = int(quota), int(period or 100000)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            q, p = int(quota), int(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    return None


def usable_cpus(root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def limit_threads(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """torch's threads lowered to `usable_cpus()` (see the module doc); returns the new count,
    or None when nothing changed."""
    if threads_pinned():
        wanted = os.environ.get("FCNSEG_THREADS")
        if wanted and wanted.isdigit() and int(wanted) > 0:
            import torch

            torch.set_num_threads(int(wanted))
            return int(wanted)
        return None
    import torch

    usable = usable_cpus(root)
    if torch.get_num_threads() > usable:
        torch.set_num_threads(usable)
        return usable
    return None


_LOAD_BESIDE: set[str] = set()  # busy_cores' processes: children, but load beside by design


def others_running() -> int | None:
    """Threads of other programs that are running or ready to run now: the run queue less the
    running threads of this process and of its own child processes (its DataLoader workers
    are this job's work, not load beside it: a run with workers computes what a run without
    them does); None where /proc cannot tell (not Linux)."""
    try:
        # this process's threads counted before and after the run queue: an OpenMP worker
        # that goes to sleep in between would otherwise look like another program
        before, _ = _running_threads("self")
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        mine, children = _running_threads("self")
    except (OSError, ValueError, IndexError):
        return None
    mine = max(mine, before)
    for pid in children:
        if pid not in _LOAD_BESIDE:
            mine += _running_threads(pid)[0]
    return max(0, running - mine)


def _running_threads(pid: str) -> tuple[int, list[str]]:
    """(threads of process `pid` running or ready now, its child processes' pids); a process
    that ended meanwhile has none. Raises OSError for "self" where /proc has no tasks."""
    count, children = 0, []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        if pid == "self":
            raise
        return 0, []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
            if pid == "self":  # kernels without CONFIG_PROC_CHILDREN: no children seen
                with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
                    children += f.read().split()
        except OSError:  # the thread ended meanwhile
            continue
        count += stat[stat.rindex(")") + 2] == "R"
    return count, children


@contextlib.contextmanager
def fit_to_free_cores() -> Iterator[int]:
    """torch's threads lowered, for the block, to the usable CPUs other programs leave free
    (at least 1; never raised); yields the count used. See the module doc."""
    import torch

    before = torch.get_num_threads()
    use = _free_fit(before)
    if use == before:
        yield before
        return
    torch.set_num_threads(use)
    try:
        yield use
    finally:
        torch.set_num_threads(before)


def threads_pinned() -> bool:
    """Whether the user fixed the thread count (FCNSEG_THREADS, OMP_NUM_THREADS or
    MKL_NUM_THREADS in the environment): then it is used as given, whatever the load, and a
    run's numbers do not depend on what else runs."""
    return any(os.environ.get(k) for k in _USER_CHOICE)


def _free_fit(before: int) -> int:
    """torch's count `before` lowered to the usable cores other programs leave free now (not
    lowered when the user pinned the count)."""
    if threads_pinned():
        return before
    others = others_running()
    if others:  # read twice (~40 us each): a blip must show in both readings to count
        again = others_running()
        others = others if again is None else min(others, again)
    return before if others is None else max(1, min(before, usable_cpus() - others))


class StepThreads:
    """``with step_threads(): step()`` on every repetition of a block (see the module doc).

    When fewer cores are free than torch's thread count T before this block and the one
    before it (a kernel thread running for a moment is not load), the block runs on T threads
    or on the free count F: each is tried `tries` times first (F first), then the one whose
    last `tries` runs include the fastest is used (the fastest run: a first call's warm-up or
    a burst of load beside only ever slow a run); every `every` busy blocks the measurements
    for that F are dropped and both tried again, since the load beside changes. Quiet, or
    with the count pinned by the user (`threads_pinned`): T, as if this were not there. The
    thread count is restored after each block; `torch.set_num_threads` sets T. ``chosen``
    maps each F met to the count in use for it. Under steady load the choice is made after
    ``SETTLE`` blocks (one to see the load twice, then the trials): benchmarks run that many
    untimed first.
    """

    TRIES = 3
    SETTLE = 1 + 2 * TRIES

    def __init__(self, tries: int = TRIES, every: int = 200):
        self.tries, self.every = tries, every
        self._seconds: dict[tuple[int, int, int], list[float]] = {}  # (T, F, used) -> recent
        self._busy = 0
        self._last_fit: int | None = None
        self.chosen: dict[int, int] = {}

    def _pick(self, before: int, fit: int) -> int:
        self._busy += 1
        if self._busy % self.every == 0:  # the load may have changed: measure again
            for used in (before, fit):
                self._seconds.pop((before, fit, used), None)
        runs = {u: self._seconds.get((before, fit, u), []) for u in (fit, before)}
        untried = [u for u, secs in runs.items() if len(secs) < self.tries]
        if untried:
            return untried[0]
        best = min(runs, key=lambda u: min(runs[u]))
        self.chosen[fit] = best
        return best

    @contextlib.contextmanager
    def __call__(self) -> Iterator[int]:
        import torch

        before = torch.get_num_threads()
        fit = _free_fit(before)
        seen, self._last_fit = self._last_fit, fit
        if fit == before or seen != fit:  # quiet, or not busy alike on the block before:
            yield before  # a kernel thread's blip changes nothing
            return
        use = self._pick(before, fit)
        torch.set_num_threads(use)
        start = time.perf_counter()
        try:
            yield use
        finally:
            torch.set_num_threads(before)
            runs = self._seconds.setdefault((before, fit, use), [])
            runs.append(time.perf_counter() - start)
            del runs[: -self.tries]


def step_threads(device, model=None):
    """The context for each repetition of a block on `device`: a new StepThreads on a CPU,
    nothing elsewhere or for a model that chooses its threads per call itself (FastFCN's
    ``adapt_threads``): one chooser, not two nested."""
    import torch

    if torch.device(device).type != "cpu" or getattr(model, "adapt_threads", False):
        return contextlib.nullcontext
    return StepThreads()


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[list[subprocess.Popen]]:
    """n processes, each spinning one core, for the duration of the block; killed after."""
    if not isinstance(n, int) or not 0 <= n <= 256:
        raise ValueError(f"busy processes: give 0..256, got {n!r}")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(n)]  # fmt: skip
    _LOAD_BESIDE.update(str(p.pid) for p in procs)
    try:
        yield procs
    finally:
        _LOAD_BESIDE.difference_update(str(p.pid) for p in procs)
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
