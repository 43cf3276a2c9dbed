"""One writer per OUTPUT_DIR: a lock file that names the run holding it.

A training run holds OUTPUT_DIR/train.lock from start to end. The file says who holds it (host,
process id, start time, command) and carries an exclusive `flock`, which the operating system drops
when the process ends however it ends (kill -9, a node failure on a local disk). So:
- a second run on the folder finds the lock taken and stops with one line naming the holder;
- a lock file left by a dead run is no longer locked: the next run takes it over and logs whose it was.
Under torchrun only rank 0 takes the lock (the other ranks write nothing to OUTPUT_DIR).

Writers that only add their own results (test_clipreid.py, the evaluations during training) take
OUTPUT_DIR/results.lock instead, for the time they write their result files, waiting for each other
rather than stopping: two of them never interleave their results_*.json, results.md and plots.

`flock` works on local disks and on NFSv4 (Linux maps it to a byte-range lock); on a file system
without locks the lock file is still written, but a second run is not stopped.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager

from utils import distributed
from utils.errors import UserError
from utils.vocabulary import RESULTS_LOCK, TRAINING_LOCK


def _holder_description() -> dict:
    return {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime()),
            'command': ' '.join([os.path.basename(sys.argv[0] or 'python'), *sys.argv[1:]])[:500]}


def _describe(holder: dict) -> str:
    if not holder:
        return 'a run that left no details'
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _read_holder(handle) -> dict:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or '{}')
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


class DirectoryLock:
    """An exclusive lock on OUTPUT_DIR/<name>; `acquire(wait)` then `release()` (or use `with`)."""

    def __init__(self, output_dir: str, name: str):
        self.path = os.path.join(output_dir, name)
        self._handle = None
        self.previous_holder: dict | None = None  # the dead run whose lock file was taken over

    def acquire(self, wait: bool) -> 'DirectoryLock':
        while True:
            handle = self._open()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _read_holder(handle)
                handle.close()
                raise UserError(f"OUTPUT_DIR '{os.path.dirname(self.path)}' is in use by another training run "
                                f"({_describe(holder)}; lock file {self.path}): wait for it to end, or give "
                                f"this run another OUTPUT_DIR") from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    handle.close()
                    raise
                break  # a file system without locks: keep the holder's details, lock nothing
            # The holder before us may have removed the file between our open and our lock: then we
            # locked a file nobody else sees, and must lock the one that is there now.
            if self._still_the_file(handle):
                break
            handle.close()
        left_behind = _read_holder(handle)
        self.previous_holder = left_behind or None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder_description()) + '\n')
        handle.flush()
        self._handle = handle
        return self

    def _open(self):
        try:
            return open(self.path, 'a+', encoding='utf-8')
        except OSError as err:
            raise UserError(f"cannot create the lock file '{self.path}': {err.strerror or err}") from None

    def _still_the_file(self, handle) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._handle is None:
            return
        try:  # removed while still locked, so that nobody locks it in between
            os.remove(self.path)
        except OSError:
            pass
        self._handle.close()  # closing drops the flock
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def hold_training_lock(output_dir: str, logger) -> DirectoryLock:
    """Take OUTPUT_DIR/train.lock or stop with one line naming the run that holds it."""
    lock = DirectoryLock(output_dir, TRAINING_LOCK).acquire(wait=False)
    if lock.previous_holder:
        logger.info(f"took over the lock file {lock.path} left by {_describe(lock.previous_holder)}, "
                    f"which is no longer running")
    return lock


@contextmanager
def results_lock(output_dir: str):
    """Held while one run writes its result files into output_dir; other writers wait their turn.
    Only the main process writes results, so the other ranks take nothing."""
    if not distributed.is_main():
        yield None
        return
    lock = DirectoryLock(output_dir, RESULTS_LOCK).acquire(wait=True)
    try:
        yield lock
    finally:
        lock.release()
