"""Worker processes that cannot outlive their job, errors that cross the process boundary intact, and a lock that
keeps two runs out of one output folder.

A worker left behind by a `kill -9` of its parent keeps writing into the output folder and races the re-run, so
every worker asks the kernel to kill it when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`, see
https://man7.org/linux/man-pages/man2/pr_set_pdeathsig.2const.html) and, where that is unavailable or the thread
that started it ends first, a watcher thread exits it as soon as it has been re-parented.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Initializer of a worker process: be killed when the process `parent_pid` dies, however it dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's prctl among them
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="vital-parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def torch_worker_init(parent_pid: int) -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` that makes its workers die with `parent_pid`."""
    return _TorchWorkerInit(parent_pid)


class _TorchWorkerInit:
    """Picklable (DataLoader may spawn its workers), unlike a closure."""

    def __init__(self, parent_pid: int):
        self.parent_pid = parent_pid

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)


class WorkerInputError(ValueError):
    """A bad-input error raised in a worker whose own class cannot be rebuilt in the parent; its message is kept."""


class WorkerOSError(OSError):
    """A file or network error raised in a worker whose own class cannot be rebuilt in the parent."""


class WorkerCrash(RuntimeError):
    """Any other failure of a worker, with the worker's traceback in its message."""


def call_portably(function: Callable[..., T], *args: Any) -> T:
    """Run `function(*args)` in a worker so that whatever it raises reaches the parent as an exception of the same
    kind and message. The pool pickles a worker's exception, and a class whose constructor takes several
    arguments fails to unpickle, turning a one-line input error into `BrokenProcessPool` and a traceback."""
    try:
        return function(*args)
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            raise portable(err) from err
        raise


def portable(err: BaseException) -> Exception:
    """An exception of a picklable class, in the same category (input, OS, other), with the same message."""
    if isinstance(err, ValueError):
        return WorkerInputError(str(err))
    if isinstance(err, OSError):
        return WorkerOSError(str(err))
    return WorkerCrash(f"{type(err).__name__}: {err}")


class FolderInUse(OSError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` for the block; a second run on the same folder fails at once.

    The lock is `flock` on `<folder>/.vital.lock`, released by the kernel when its holder dies however it dies,
    so a crashed run never blocks its re-run. The file is removed on release; a run that opened it just before
    checks after locking that it still is the file at that path, so removal never lets two runs in.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".vital.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise FolderInUse(
                f"{folder} is in use by another `{command}` (pid {holder or 'unknown'}): wait for it to finish "
                "or stop it, then run this again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
