"""Market-1501: six ground cameras; only the DDC protocol applies."""
from __future__ import annotations

import re

from utils.vocabulary import DDC

from .bases import GROUND, ReIDDataset, locate_dataset_folder, parse_pid_camera

_NAME = re.compile(r'(-1|\d+)_c(\d+)s\d+_')


def parse_market_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0002_c1s1_000451_03.jpg`; pid -1 marks junk."""
    pid, camid = parse_pid_camera(filename, _NAME, 'Market-1501', '0002_c1s1_000451_03.jpg')
    return pid, camid, GROUND


class Market1501(ReIDDataset):
    """Market-1501: bounding_box_train, query, bounding_box_test (all cameras ground) in
    DATASETS.ROOT_DIR itself or in ROOT_DIR/Market-1501-v15.09.15 (CLIP-ReID's layout)."""

    name = 'market1501'
    protocol_names = (DDC,)
    parse_name = staticmethod(parse_market_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return f'c{camid + 1}'

    def __init__(self, root: str):
        super().__init__(root)
        self.root, _ = locate_dataset_folder(self.root, ('', 'Market-1501-v15.09.15'), ('bounding_box_train',),
                                             'Market-1501')
        train = self._read_split('bounding_box_train')
        query = self._read_split('query')
        gallery = self._read_split('bounding_box_test')
        self._finish(train, query, gallery, {DDC: (query, gallery)})
