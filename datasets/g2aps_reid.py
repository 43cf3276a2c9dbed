"""G2APS-ReID: a drone camera (c0, sky) and a ground camera (c3); protocol lists with distractors."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import SAME_CAMERA

from .bases import GROUND, SKY, ReIDDataset
from .protocols import Protocol, all_query_and_gallery, read_protocol_lists

DISTRACTOR_PID = 5555
PROTOCOL_LISTS = {'A2G': 'exp3_A2G+.txt', 'G2A': 'exp4_G2A+.txt'}
_NAME = re.compile(r'(-?\d+)_c(\d)v(\d+)_')


def parse_g2aps_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0012_c0v3_000123.jpg`. As in the published loaders, the drone
    is camera 0 and every other camera number is the ground camera, camera 1."""
    name = os.path.basename(filename)
    match = _NAME.match(name)
    if match is None:
        raise UserError(f"G2APS-ReID file name '{name}' does not look like 0012_c0v3_000123.jpg")
    drone = int(match.group(2)) == 0
    return int(match.group(1)), 0 if drone else 1, SKY if drone else GROUND


class G2APSReID(ReIDDataset):
    """G2APS-ReID with DATASETS.ROOT_DIR holding bounding_box_train/ (one subfolder per identity) and
    the lists exp3_A2G+.txt (A2G) and exp4_G2A+.txt (G2A), whose lines are paths relative to the root
    (query_c0/, query_c3/, bounding_box_test_c0/, bounding_box_test_c3/, bounding_box_gallery/).
    Distractors (id 5555) stay in the gallery; same-person same-camera images are removed."""

    name = 'g2aps_reid'
    protocol_names = tuple(PROTOCOL_LISTS)
    parse_name = staticmethod(parse_g2aps_name)

    @staticmethod
    def camera_name(camid: int) -> str:
        return 'c0' if camid == 0 else 'c3'  # every ground camera number reads as camera 1

    def __init__(self, root: str):
        super().__init__(root)
        train = self._read_split('bounding_box_train', nested=True)
        # As in the published loader, list lines are kept whatever their id: the list is the protocol.
        raw = read_protocol_lists(self.root, self.root, PROTOCOL_LISTS, 'G2APS-ReID', self.parse_name,
                                  skip_junk=False)
        protocols = {name: Protocol(query, gallery, SAME_CAMERA) for name, (query, gallery) in raw.items()}
        query, gallery = all_query_and_gallery(protocols)
        self._finish(train, query, gallery, protocols)
