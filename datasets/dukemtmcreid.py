"""DukeMTMC-reID and Occluded-Duke: eight cameras, Market-1501's folders and file names."""
from __future__ import annotations

import os
import re

from utils.errors import UserError
from utils.vocabulary import DDC, SAME_CAMERA

from .bases import GROUND, ReIDDataset, locate_dataset_folder
from .protocols import Protocol

NUM_CAMERAS = 8
_NAME = re.compile(r'(-1|\d+)_c(\d)')


def parse_duke_name(filename: str) -> tuple[int, int, int]:
    """(pid, camid, viewid) of a name like `0001_c2_f0046182.jpg` (one camera digit, c1-c8)."""
    name = os.path.basename(filename)
    match = _NAME.match(name)
    if match is None:
        raise UserError(f"DukeMTMC-reID file name '{name}' does not look like 0001_c2_f0046182.jpg")
    camera = int(match.group(2))
    if not 1 <= camera <= NUM_CAMERAS:
        raise UserError(f"DukeMTMC-reID file name '{name}' has the unknown camera c{camera} (known: c1-c{NUM_CAMERAS})")
    return int(match.group(1)), camera - 1, GROUND


class DukeMTMCreID(ReIDDataset):
    """DukeMTMC-reID: bounding_box_train, query, bounding_box_test in DATASETS.ROOT_DIR/dukemtmcreid/
    DukeMTMC-reID (CLIP-ReID's layout), ROOT_DIR/DukeMTMC-reID or ROOT_DIR itself. One protocol, DDC:
    the query's identity in its camera removed."""

    name = 'dukemtmcreid'
    protocol_names = (DDC,)
    num_train_views = 1
    parse_name = staticmethod(parse_duke_name)
    release_folder = 'DukeMTMC-reID'

    def __init__(self, root: str):
        super().__init__(root)
        folders = (os.path.join('dukemtmcreid', self.release_folder), self.release_folder, '')
        self.root, _ = locate_dataset_folder(self.root, folders, ('bounding_box_train',), self.release_folder)
        train = self._read_split('bounding_box_train')
        query = self._read_split('query')
        gallery = self._read_split('bounding_box_test')
        self._finish(train, query, gallery, {DDC: Protocol(query, gallery, SAME_CAMERA)})


class OccludedDuke(DukeMTMCreID):
    """Occluded-Duke: DukeMTMC-reID's identities re-split so that queries are occluded; the same
    folders inside DATASETS.ROOT_DIR/dukemtmcreid/Occluded_Duke (CLIP-ReID's layout),
    ROOT_DIR/Occluded_Duke or ROOT_DIR itself."""

    name = 'occ_duke'
    release_folder = 'Occluded_Duke'
