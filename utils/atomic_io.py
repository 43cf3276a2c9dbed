"""Writes that never leave a half-written file: a temporary file in the same folder, fsync, rename."""
import os
import tempfile
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import torch

from utils.errors import UserError


@contextmanager
def _atomic_path(path: str):
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    except OSError as err:
        raise UserError(f"cannot write '{path}': {err.strerror or err}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to collaborators
    try:
        yield tmp
        with open(tmp, 'rb') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:  # e.g. a full disk: the previous file is still intact
        raise UserError(f"cannot write '{path}': {err.strerror or err}; the previous version, if any, is "
                        f"intact") from None
    except RuntimeError as err:
        if 'PytorchStreamWriter' not in str(err):  # torch.save's way of reporting a failed write
            raise
        raise UserError(f"cannot write '{path}': {str(err).splitlines()[0]}; the previous version, if any, "
                        f"is intact") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with _atomic_path(path) as tmp, open(tmp, 'w') as handle:
        handle.write(text)


def on_cpu(obj):
    """`obj` with every tensor in its dicts, lists and tuples moved to the CPU (CPU tensors as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return (OrderedDict if isinstance(obj, OrderedDict) else dict)((k, on_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj) if type(obj) in (list, tuple) else obj
    return obj


def torch_save(obj, path: str) -> None:
    """Write `obj` with its tensors on the CPU: a file saved from a GPU records each tensor's device, and a
    plain `torch.load` (the published code's, a tracker's) then fails on a machine without that device."""
    obj = on_cpu(obj)
    with _atomic_path(path) as tmp:
        torch.save(obj, tmp)


def savez(path: str, **arrays) -> None:
    # A file object, because np.savez appends '.npz' to a path that does not end with it.
    with _atomic_path(path) as tmp, open(tmp, 'wb') as handle:
        np.savez(handle, **arrays)


def write_bytes(path: str, data: bytes) -> None:
    with _atomic_path(path) as tmp, open(tmp, 'wb') as handle:
        handle.write(data)
