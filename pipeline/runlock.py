"""One job per run dir: an exclusive OS file lock on ``RUN_DIR/.lock``.

Rank 0 takes ``flock(LOCK_EX | LOCK_NB)`` on the file for the job's life and writes its holder
(host, pid, start time) into it. The kernel drops the lock whenever the holder exits, however it
exits (SIGKILL and OOM kills included), so a lock is never stale: there is no pid file to clean
up. A second job finds the lock taken and stops with one line naming the run dir and the holder.
On NFS v4, Linux implements ``flock`` with byte-range locks that the server arbitrates, so the
lock holds across nodes sharing the run dir; on filesystems without locking (some FUSE mounts)
``flock`` fails and the job stops saying so rather than running unprotected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from fusionrec.errors import RunDirLockedError, UserError

LOCK_FILE = ".lock"


def describe_holder(run_dir: Path) -> str:
    """``host H, pid P, started T`` from the lock file (or that it could not be read)."""
    try:
        holder = json.loads((Path(run_dir) / LOCK_FILE).read_text())
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown (the lock file is being written or unreadable)"


def locked_error(run_dir: Path) -> RunDirLockedError:
    return RunDirLockedError(
        f"run dir {run_dir} is in use by another job ({describe_holder(run_dir)}; lock {Path(run_dir) / LOCK_FILE}); "
        "stop that job or choose another --run-dir"
    )


class RunDirLock:
    """The lock on one run dir. :meth:`acquire` raises :class:`RunDirLockedError` when a live
    process holds it; :meth:`release` (or the process's exit) gives it back."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise locked_error(self.run_dir) from None
            raise UserError(f"cannot lock run dir {self.run_dir} ({err.strerror}); it needs a filesystem with flock") from None
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock; the file stays (removing it would let a third job lock a new file while a
        second one still waits on the old one)."""
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
