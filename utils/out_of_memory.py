"""Out of memory: one line that says where it happened, which batch setting to lower and where the
last good state is, instead of a CUDA or allocator traceback."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from utils.errors import UserError

# How the allocators word a failed allocation when they raise a plain RuntimeError.
_MESSAGES = ('out of memory', "can't allocate memory", 'DefaultCPUAllocator', 'Failed to allocate')


class OutOfMemoryStop(UserError):
    """An allocation failed; the message names the setting to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _MESSAGES)


def _device_words(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError) or 'CUDA' in str(err):
        return 'the GPU ran out of memory'
    return 'the CPU memory ran out'


@contextmanager
def stop_on_out_of_memory(where: str, advice: str, last_good: Callable[[], str] | None = None):
    """Turn an allocation failure inside the block into OutOfMemoryStop:
    '<device> ran out of memory in <where>: <advice>; <last_good()>'.

    An OutOfMemoryStop from an inner block (e.g. evaluation inside training) keeps its own advice and
    gains `last_good`, which the inner block does not know.
    """
    try:
        yield
    except OutOfMemoryStop as stop:
        if last_good is None or getattr(stop, 'has_last_good', False):
            raise
        raise _with_last_good(f"{stop}; {last_good()}") from None
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        message = f"{_device_words(err)} in {where}: {advice}"
        if last_good is None:
            raise OutOfMemoryStop(message) from None
        raise _with_last_good(f"{message}; {last_good()}") from None


def _with_last_good(message: str) -> OutOfMemoryStop:
    stop = OutOfMemoryStop(message)
    stop.has_last_good = True
    return stop
