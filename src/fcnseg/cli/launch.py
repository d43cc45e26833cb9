"""`--nproc N` (train, eval, predict): one process per rank under torchrun, errors said once.

1. Before any worker starts, the same command line runs once in check mode ($FCNSEG_NPROC_CHECK
   = N: `Dist.from_env` gives rank 0 of N without a process group): the data root opens, the
   model name exists, the checkpoint loads, the batch splits over N processes, the outputs may
   be written, exactly as a worker checks them, until the command calls `Dist.checks_done()`
   where its work would begin (cli.main then tells this process, `checks_passed`). A mistake
   stops there, said in one line by that one process, and no worker starts. (A process of its
   own: a GPU it touched is released before the workers start.) train stops before it builds
   the net: --init-from and --resume's checkpoint are read by the workers (step 3).
2. Then torchrun runs the command line again without --nproc, as a subprocess of this one, in
   a quiet wrapper (this file run as a script: `_torchrun`): its log lines, its failure
   summary and its traceback are not shown, its exit status is the first failed worker's.
3. A worker that fails does not print its error: `keep_worker_message` (cli.main) leaves it in
   a private folder ($FCNSEG_NPROC_MESSAGES), and this process shows it once when torchrun is
   done: rank 0's message, then any other rank's that differs, one line each. The exit status
   stays non-zero (the failed worker's: 1 for an error, 130 for an interrupt).

Run directly under torchrun (several machines, README), workers print their own errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_ENV = "FCNSEG_NPROC_MESSAGES"
CHECK_ENV = "FCNSEG_NPROC_CHECK"  # the check run: the process count (fcnseg.feed.Dist)


def relaunch(args) -> int:
    """The command's checks in one process, then its command line under torchrun."""
    folder = tempfile.mkdtemp(prefix="fcnseg-nproc-")  # 0700: this user's only
    try:
        # 1. the same command, in check mode: an error is printed there, once
        env = {**os.environ, _ENV: folder, CHECK_ENV: str(args.nproc)}
        check = subprocess.Popen([sys.executable, "-m", "fcnseg", *args.argv], env=env,
                                 stdout=subprocess.PIPE)  # fmt: skip
        try:
            out, _ = check.communicate()
        except KeyboardInterrupt:  # Ctrl-C reached the check too: it says so itself
            check.wait()
            return 130
        if check.returncode != 0 or not (Path(folder) / "checked").exists():
            # an error (said), or the command ended before its work (nothing to do): its
            # output is the answer, no worker is needed
            sys.stdout.write(out.decode(errors="replace"))
            return check.returncode
        # 2. the workers
        return _run_torchrun(args.nproc, _without_nproc(args.argv), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def checks_passed() -> None:
    """In the check run (cli.main, on ChecksDone): tell the launcher the workers may start."""
    folder = os.environ.get(_ENV)
    if folder and os.environ.get(CHECK_ENV):
        (Path(folder) / "checked").touch()


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:  # this command line without --nproc
        if not skip and a != "--nproc" and not a.startswith("--nproc="):
            out.append(a)
        skip = a == "--nproc"
    return out


def _run_torchrun(nproc: int, argv: list[str], folder: str) -> int:
    env = {**os.environ, _ENV: folder}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its banner
    cmd = [sys.executable, str(Path(__file__).resolve()), "--standalone",
           f"--nproc_per_node={nproc}", "-m", "fcnseg", *argv]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: they stop and say so
        code = proc.wait()
    if code != 0:
        for line in _messages(Path(folder), nproc, code):
            print(line, file=sys.stderr)
    return code


def _messages(folder: Path, nproc: int, code: int) -> list[str]:
    """The workers' messages, each once: rank 0's first; interrupts only without an error."""
    kept: dict[int, tuple[int, str]] = {}
    for rank in range(nproc):
        try:
            status, _, text = (folder / f"rank{rank}").read_text().partition("\n")
            kept[rank] = (int(status), text.strip())
        except (OSError, ValueError):
            continue
    errors = {r: m for r, m in kept.items() if m[0] != 130}
    shown, lines = set(), []
    for rank, (status, text) in sorted((errors or kept).items()):
        if text in shown:
            continue  # the same error from another rank: said once
        shown.add(text)
        if status == 130:
            lines.append(text)
        else:
            where = "" if rank == 0 else f"(process {rank} of {nproc}) "
            lines.append(f"error: {where}{text}  (--debug shows the traceback)")
    if not lines:  # killed (memory, a signal) before it could say anything
        try:
            failed = json.loads((folder / "torchrun.json").read_text())
        except (OSError, ValueError):
            failed = {}
        what = ", ".join(f"process {r}: {_status(c)}" for r, c in sorted(failed.items())) or (
            f"exit status {code}"
        )
        lines.append(f"error: {what}, without a message (killed?); rerun with --nproc 1 to see "
                     f"the error of one process")  # fmt: skip
    return lines


def _status(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def keep_worker_message(message: str, status: int) -> bool:
    """In a worker started by `relaunch`: keep this rank's error for the launcher to show once
    (True), instead of printing it here. Elsewhere (one process, or plain torchrun): False."""
    folder, rank = os.environ.get(_ENV), os.environ.get("RANK")
    if not folder or rank is None or not rank.isdigit():
        return False
    try:
        part = Path(folder) / f".rank{rank}.part"
        part.write_text(f"{status}\n{' '.join(message.split())}")
        part.replace(Path(folder) / f"rank{rank}")
    except OSError:
        return False
    return True


def _torchrun(argv: list[str]) -> int:
    """torchrun (torch.distributed.run), quiet: no log lines, no failure summary, no traceback;
    the first failed worker's exit status, every failed rank's in torchrun.json."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in [*logging.Logger.manager.loggerDict, "torch.distributed"]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        folder = os.environ.get(_ENV)
        if folder:
            with open(os.path.join(folder, "torchrun.json"), "w") as f:
                json.dump(codes, f)
        first = e.get_first_failure()[1].exitcode
        if first < 0:  # killed by a signal: the shell's 128 + N
            return 128 + min(-first, 127)
        return first if 0 < first < 256 else 1
    except Exception as e:  # torchrun itself could not start the processes
        print(f"error: torchrun could not start the processes: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # run by path (not -m: no need to import fcnseg here)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # this folder's modules (eval, models, ...) must not shadow others
    sys.exit(_torchrun(sys.argv[1:]))
