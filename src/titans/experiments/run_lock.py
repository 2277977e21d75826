"""One training run per output directory: an OS lock on ``OUT/.lock``, held for the run's life.

Two ``titans train`` processes writing into the same directory would interleave their metrics
and overwrite each other's checkpoints. :class:`RunLock` takes an exclusive ``fcntl.flock`` on
``OUT/.lock`` (without waiting) and writes the holder's pid into it; a second run is refused
with :class:`RunLockedError`, which names that pid. The operating system drops the lock when its
holder dies (even by SIGKILL), so a lock file left behind by a dead run is simply taken over.
A run that ends normally removes the file.

The file is unlinked before the lock is released; a process that opened the old file just
before then and gets its lock afterwards finds the path no longer names the file it locked
and tries again, so two processes never both believe they hold the directory.

Platforms without ``fcntl`` (Windows) get no lock: :meth:`RunLock.acquire` warns once per run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ModuleNotFoundError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "lock_run_directory"]

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another living process holds the run directory's lock."""


class RunLock:
    """An exclusive, non-blocking lock on ``directory/.lock`` (see the module's docstring).

    Args:
        directory: the run directory; it must exist when the lock is acquired.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock and records this process's pid in the lock file.

        Raises:
            RunLockedError: another living process holds the lock; the message names its pid.
            OSError: the lock file cannot be created or locked (e.g. a read-only directory).
            RuntimeError: this object holds the lock already.
        """
        if self._fd is not None:
            raise RuntimeError(f"RunLock: {self.path} is already held by this lock object")
        if fcntl is None:
            warnings.warn(f"RunLock: no fcntl on this platform; {self.path.parent} is not locked against "
                          "a second run", RuntimeWarning, stacklevel=2)
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(
                    f"train: {self.path.parent} is in use by another run (pid {holder}, holding {self.path}); "
                    "wait for it to finish, or write to another directory"
                ) from None
            except OSError:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:  # the previous holder removed it as we locked: try afresh
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and releases the lock (nothing happens if it is not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:  # unlink before unlocking (see the module's docstring), and only our own file
            if os.path.samestat(os.stat(self.path), os.fstat(fd)):
                os.unlink(self.path)
        except FileNotFoundError:  # removed by hand while the run went on
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def lock_run_directory(out: str | os.PathLike[str], *, resume: bool) -> RunLock:
    """Creates the run directory ``out`` (a resumed run's must exist already) and locks it.

    Args:
        out: the run directory.
        resume: the run continues one in ``out``: the directory is not created.

    Returns:
        The held lock; release it when the run ends.

    Raises:
        FileNotFoundError: ``resume`` and ``out`` does not exist.
        RunLockedError: another living process holds ``out``.
    """
    out = Path(out)
    if resume and not out.is_dir():
        raise FileNotFoundError(f"train: no checkpoint in {out} (the directory does not exist)")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    lock.acquire()
    return lock
