"""Progress bars for long loops: shown on an interactive terminal of the main process only.

A bar is drawn on stderr when it is a terminal and this process is rank 0; otherwise it is a
silent pass-through, so logs and CI output stay free of carriage-return noise. While a bar is
open, the console lines of the logger given to it go through tqdm, so they do not tear the bar.
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utils import distributed


def bars_enabled() -> bool:
    try:
        interactive = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        interactive = False
    return interactive and distributed.is_main()


class _Bar(tqdm):
    """A tqdm bar that, given a logger, routes its console lines above the bars until it closes."""

    def __init__(self, *args, logger: logging.Logger | None = None, **kwargs):
        self._redirect = None
        super().__init__(*args, **kwargs)
        if logger is not None and not self.disable:
            self._redirect = logging_redirect_tqdm(loggers=[logger])
            self._redirect.__enter__()

    def close(self):
        try:
            super().close()
        finally:
            redirect, self._redirect = getattr(self, '_redirect', None), None
            if redirect is not None:
                redirect.__exit__(None, None, None)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = '',
             initial: int = 0, leave: bool = True, unit: str = 'it',
             logger: logging.Logger | None = None) -> tqdm:
    """A tqdm bar, disabled (iterating silently) unless `bars_enabled()`. With `logger`, its console
    lines are written above the bar while the bar is open (its file lines are unaffected)."""
    return _Bar(iterable, total=total, initial=initial, desc=desc, leave=leave, unit=unit, dynamic_ncols=True,
                disable=not bars_enabled(), logger=logger)
