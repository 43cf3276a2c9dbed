"""Writes that never leave a half-written file: a temporary file in the same folder, fsync, rename."""
import os
import tempfile
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def _atomic_path(path: str):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to collaborators
    try:
        yield tmp
        with open(tmp, 'rb') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with _atomic_path(path) as tmp, open(tmp, 'w') as handle:
        handle.write(text)


def torch_save(obj, path: str) -> None:
    with _atomic_path(path) as tmp:
        torch.save(obj, tmp)


def savez(path: str, **arrays) -> None:
    # A file object, because np.savez appends '.npz' to a path that does not end with it.
    with _atomic_path(path) as tmp, open(tmp, 'wb') as handle:
        np.savez(handle, **arrays)
