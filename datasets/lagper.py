"""LAGPeR: 21 cameras numbered 1-22 (no camera 10), seven of them aerial; protocol lists."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import SAME_CAMERA

from .bases import GROUND, SKY, ReIDDataset
from .protocols import Protocol, all_query_and_gallery, read_protocol_lists

AERIAL_CAMERAS = (3, 6, 9, 13, 16, 19, 22)
MISSING_CAMERA = 10
PROTOCOL_LISTS = {'A2G': 'exp3_A2G+.txt', 'G2A': 'exp4_G2A+.txt', 'G2AG': 'exp5_G2A+G.txt'}
_NAME = re.compile(r'(-?\d+)_c(\d+)')


def parse_lagper_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0012_c13_...jpg`: camid counts from 0 over the 21 cameras
    (numbers above 10 move down by one more, as there is no camera 10); pid -1 is junk."""
    name = os.path.basename(filename)
    match = _NAME.match(name)
    if match is None:
        raise UserError(f"LAGPeR file name '{name}' does not look like 0012_c13_0001.jpg")
    number = int(match.group(2))
    if number < 1 or number == MISSING_CAMERA:
        raise UserError(f"LAGPeR file name '{name}' has the unknown camera c{number}")
    camid = number - 2 if number > MISSING_CAMERA else number - 1
    return int(match.group(1)), camid, SKY if number in AERIAL_CAMERAS else GROUND


class LAGPeR(ReIDDataset):
    """LAGPeR with DATASETS.ROOT_DIR holding bounding_box_train/ (one subfolder per identity) and the
    lists exp3_A2G+.txt (A2G), exp4_G2A+.txt (G2A), exp5_G2A+G.txt (G2AG: ground queries against a
    gallery of both views). List lines are paths relative to the root, whatever folders they name.
    Every protocol removes same-person same-camera images: in G2AG, removing by view would also drop
    the query's own identity seen by the other ground cameras."""

    name = 'lagper'
    protocol_names = tuple(PROTOCOL_LISTS)
    parse_name = staticmethod(parse_lagper_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 2 if camid + 1 >= MISSING_CAMERA else camid + 1}'

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('bounding_box_train', nested=True)
        raw = read_protocol_lists(self.root, self.root, PROTOCOL_LISTS, 'LAGPeR', self.parse_name)
        protocols = {name: Protocol(query, gallery, SAME_CAMERA) for name, (query, gallery) in raw.items()}
        query, gallery = all_query_and_gallery(protocols)
        self._finish(train, query, gallery, protocols)
