"""Market-1501: six ground cameras; only the DDC protocol applies."""
from __future__ import annotations

import os
import re

from utils.errors import UserError

from .bases import GROUND, ReIDDataset

_NAME = re.compile(r'(-1|\d+)_c(\d+)s\d+_')


def parse_market_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0002_c1s1_000451_03.jpg`; pid -1 marks junk."""
    name = os.path.basename(filename)
    match = _NAME.match(name)
    if match is None:
        raise UserError(f"Market-1501 file name '{name}' does not look like 0002_c1s1_000451_03.jpg")
    camera = int(match.group(2))
    if camera < 1:
        raise UserError(f"Market-1501 file name '{name}' has the camera c{camera}; cameras count from c1")
    return int(match.group(1)), camera - 1, GROUND


class Market1501(ReIDDataset):
    """Market-1501 under `root`: bounding_box_train, query, bounding_box_test (all cameras ground)."""

    name = 'market1501'
    protocol_names = ('DDC',)
    parse_name = staticmethod(parse_market_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1}'

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('bounding_box_train')
        query = self._read_split('query')
        gallery = self._read_split('bounding_box_test')
        self._finish(train, query, gallery, {'DDC': (query, gallery)})
