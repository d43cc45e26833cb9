"""Never lose a user's file: atomic writes, outputs checked before any work, run-folder locks.

The rules every command follows (docs/errors.md lists the cases and their tests):

- `atomic_write`: every file is written to a temporary name beside its final one, flushed to
  disk, given the user's umask, then renamed over the final name. Any failure (an OSError, or
  what a library raises instead, like torch's "unexpected pos" on a full disk) removes the
  temporary file and raises `WriteError` naming the final path: nothing incomplete is ever left
  under a final name, and a file that was there before is intact.
- `check_outputs`: before any work, the outputs a command will write are checked against its
  inputs (never written over, even with --overwrite), against each other (two outputs one
  path) and against files already on disk that this run did not make (refused unless the user
  passes --overwrite).
- `RunLock`: a training run folder is locked (`lockf` on RUN/.lock, holding the pid) while a
  process trains in it. The lock file is opened without following links (O_NOFOLLOW) and must
  be a plain file with one name: a link planted there is refused, never truncated through.
  The kernel drops the lock when the process ends in any way, SIGKILL
  included (its forked data workers do not inherit it), so a lock left by a dead process is
  detected as stale and taken over.
- Free space: `atomic_write(..., size=N)` checks before writing that the folder has N bytes
  (plus a little headroom) free, and refuses naming the folder, the need and what is free.
- Links: nothing is ever written through a link. Temporary files are created with O_EXCL
  (never an existing name), and the rename replaces a link at the final name, not its target.
- `check_range`: numbers are checked against their allowed range before work, with the value and
  the range in the message.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar

__all__ = [
    "OutputError",
    "RunLock",
    "RunLockedError",
    "WriteError",
    "atomic_write",
    "check_outputs",
    "check_range",
    "check_space",
    "open_append",
    "save_figure",
    "umask",
    "unreadable",
    "write_bytes",
]


class WriteError(OSError):
    """A write that failed; the temporary file is gone and the final path was not touched."""


class OutputError(FileExistsError):
    """An output that would overwrite an input, another output or a file this run did not make."""


class RunLockedError(RuntimeError):
    """Another live process trains in the same run folder."""


def unreadable(path: str | os.PathLike, what: str) -> str:
    """The message for a file that is there but that this user may not read."""
    return (
        f"cannot read {what} '{path}': permission denied (the file is there, but this user "
        f"may not read it): check its permissions (ls -l; chmod u+r) or its owner"
    )


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


HEADROOM = 64 << 10  # bytes kept free beyond a write's own size (the file system's metadata)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def check_space(folder: str | os.PathLike, need: int, *, what: str = "file",
                path: str | os.PathLike | None = None) -> None:  # fmt: skip
    """Refuse (WriteError, ENOSPC) when `folder` has less than `need` bytes (+ headroom) free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # a folder we cannot measure: the write itself will tell
    if free < need + HEADROOM:
        target = path if path is not None else folder
        raise WriteError(errno.ENOSPC, f"not enough free space to write {what} {target}: it "
                                       f"needs about {_size(need)}, the folder {folder} has "
                                       f"{_size(free)} free. Nothing was written: free disk "
                                       f"space or choose another output folder, then run "
                                       f"again", str(target))  # fmt: skip


def open_append(path: str | os.PathLike) -> int:
    """A descriptor appending to `path` (created 0666 & ~umask if missing), never through a
    link: a symbolic link there raises OSError(ELOOP) naming the path."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o666)  # fmt: skip
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link: fcnseg never writes "
                                       f"through a link; remove it, then run again",
                          str(path)) from None  # fmt: skip
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                 what: str = "file", size: int | None = None) -> Path:  # fmt: skip
    """`write(f)` into a temporary file beside `path`, then rename it into place (see module).

    size: the bytes the write will need (an estimate); the free space is checked first. A link
    at `path` is replaced by the new file: its target is never written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            check_space(path.parent, size, what=what, path=path)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part",
                                   dir=path.parent)  # fmt: skip
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {what} {path}: {e.strerror or e}; choose "
                                  f"another output folder", str(path)) from None  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())  # mkstemp: 0600; outputs follow the umask
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        code = e.errno if isinstance(e, OSError) and e.errno else None
        if code == errno.ENOSPC or (code is None and _disk_full(path.parent)):
            code = errno.ENOSPC
            cause = "the disk is full"
            fix = "free disk space or choose another output folder, then run again"
        else:
            cause = (e.strerror if isinstance(e, OSError) and e.strerror else None) or (
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
            fix = "check the folder's permissions and free space"
        raise WriteError(code or errno.EIO, f"could not write {what} {path} ({cause}); nothing "
                                            f"was left under that name and any earlier file is "
                                            f"intact: {fix}", str(path)) from e  # fmt: skip
    return path


def save_figure(fig, path: str | os.PathLike, *, what: str = "figure", **savefig) -> Path:
    """A matplotlib figure written as PNG with `atomic_write`; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", **savefig), what=what)
    finally:
        plt.close(fig)


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (their pid is gone)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        pid = stale.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**22
    return True


def write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """`atomic_write` of a bytes object."""
    return atomic_write(path, lambda f: f.write(data), what=what, size=len(data))


def _identity(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(
    outputs: Sequence[tuple[str | os.PathLike, str]],
    inputs: Iterable[str | os.PathLike] = (),
    *,
    overwrite: bool = False,
    flag: str = "-o",
) -> None:
    """Refuse, before any work, outputs that would destroy something (see the module doc).

    outputs: [(path, what it is)]; inputs: the files the command reads. Links count: an output
    that is a link to an input, or another name of it, is that input.
    """
    by_path = {os.path.abspath(p): Path(p) for p in inputs}
    by_id = {i: p for p in by_path.values() if (i := _identity(p)) is not None}
    seen: dict[str, str] = {}
    existing = []
    for p, what in outputs:
        p = Path(p)
        key = os.path.abspath(p)
        if key in seen:
            raise OutputError(f"{what} and {seen[key]} would both be written to {p}: choose "
                              f"different output names")  # fmt: skip
        seen[key] = what
        src = by_path.get(key) or by_id.get(_identity(p))  # type: ignore[arg-type]
        if src is not None:
            raise OutputError(f"{what} {p} would overwrite the input {src}: choose another "
                              f"{flag} (inputs are never overwritten)")  # fmt: skip
        if p.is_dir():
            raise OutputError(f"{what} {p} is a folder: give a file name with {flag}")
        if (p.exists() or p.is_symlink()) and not overwrite:
            existing.append((p, what))
    if existing:
        p, what = existing[0]
        more = f" (and {len(existing) - 1} more outputs)" if len(existing) > 1 else ""
        raise OutputError(f"{what} {p} already exists{more} and was not written by this run: "
                          f"pass --overwrite to replace it, or choose another {flag}")  # fmt: skip


def check_range(name: str, value, lo=None, hi=None, *, integer: bool = False):
    """`value` if lo <= value <= hi (and an int when `integer`), else ValueError saying so."""
    span = f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {kind} in {span}, got {value!r} "
                         f"({type(value).__name__})")  # fmt: skip
    if integer and not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in {span}, got {value!r}")
    if (
        not math.isfinite(value)
        or (lo is not None and value < lo)
        or (hi is not None and value > hi)
    ):
        raise ValueError(f"{name} must be in {span}, got {value!r}")
    return value


class RunLock:
    """`with RunLock(folder):` holds RUN/.lock exclusively (see the module doc).

    A POSIX record lock (`lockf`): it belongs to this process alone, so the DataLoader workers
    it forks do not keep holding it after it dies; the kernel drops it when the process ends.
    Locks this process holds are also kept in a set, since POSIX locks do not exclude their
    own process.
    """

    _held: ClassVar[set[tuple[int, int]]] = set()

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: a planted RUN/.lock -> victim must not truncate the victim
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o666)  # fmt: skip
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise
            fd = None
        st = os.fstat(fd) if fd is not None else None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            if fd is not None:
                os.close(fd)
            kind = ("a symbolic link" if self.path.is_symlink() else
                    "a file with other names (a hard link)" if st is not None
                    and stat.S_ISREG(st.st_mode) else "not a plain file")  # fmt: skip
            raise RunLockedError(
                f"the run folder's lock {self.path} is {kind}: fcnseg writes its lock only into "
                f"a file of its own and never through a link. Remove {self.path} (the file it "
                f"points to is untouched), then run again"
            )
        key = (st.st_dev, st.st_ino)
        try:
            if key in RunLock._held:
                raise BlockingIOError
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if key not in RunLock._held:
                os.close(fd)  # (closing would drop this process's own lock on the file)
            raise RunLockedError(
                f"run folder {self.path.parent} is in use: process {holder} is training in it "
                f"(lock {self.path}). Wait for it to finish, stop it, or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._key = fd, key
        RunLock._held.add(key)
        return self

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            RunLock._held.discard(self._key)
            self._fd = None
        return False
